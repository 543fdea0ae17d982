//! Helpers for the root-only tests: kernel tests through BPF_PROG_TEST_RUN
//! and end-to-end tests in network namespaces.

pub mod bench;
pub mod daemon;
pub mod kernel;
pub mod netns;
pub mod packets;
