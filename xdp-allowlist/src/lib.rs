//! xdp-allowlist: the daemon, the CLI and the pieces they share.
//!
//! The binary is a thin layer over these modules: `config` reads and checks
//! the file, `policy` and `apply` turn it into map writes, `bpf` owns the
//! pinned kernel objects, `daemon` runs, `edit` changes the file for the CLI,
//! `status` reads the counters and `features` says what the kernel offers.
//! `sources` reads the per-source accounting that `stats` and `top` show;
//! `stream` reads the kernel's source events and, through `sweep`, what
//! they left out of the source map, `alerts` turns them into probing alerts
//! and access records, and `events` shows them to the user.

pub mod alerts;
pub mod apply;
pub mod audit;
pub mod bpf;
pub mod cli;
pub mod config;
pub mod confirm;
pub mod daemon;
pub mod edit;
pub mod events;
pub mod explain;
pub mod features;
pub mod guard;
pub mod import;
pub mod metrics;
pub mod policy;
pub mod reference;
pub mod sources;
pub mod stats;
pub mod status;
pub mod stream;
pub mod sweep;
pub mod top;

/// The compiled kernel program, built by `build.rs`.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-allowlist"));

/// A program that drops every packet: the floor benchmarks compare against.
pub static DROP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-drop"));

/// The filter behind a naive parser (fixed header sizes, no tags, options or
/// extension headers): only the benchmark loads it, to measure what the
/// hardened parser costs. It lets every crafted shape through; never attach it.
pub static NAIVE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-naive"));

/// A mistake in what the user asked for or wrote: exit code 2, nothing changed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Exit code for an error: 2 for usage and configuration errors, 1 otherwise.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    let usage = err.chain().any(|cause| {
        cause.is::<UsageError>()
            || cause.is::<config::ConfigError>()
            || matches!(
                cause.downcast_ref::<config::LoadError>(),
                Some(config::LoadError::Invalid(_)) | Some(config::LoadError::Read { .. })
            )
    });
    if usage {
        2
    } else {
        1
    }
}
