//! Project tasks: `cargo xtask setup | test | lint | demo | bench | install`.
//!
//! Every task but `setup` runs `setup` first, so a fresh machine needs no
//! manual step. This crate must build before bpf-linker exists, so it does
//! not depend on the xdp-allowlist crates; it drives them through cargo.

mod demo;
mod install;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "xdp-allowlist project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing: LLVM 22 packages, nightly with rust-src,
    /// bpf-linker, and the tools the tests drive. Idempotent.
    Setup,
    /// Run every test: unit tests, kernel tests (BPF_PROG_TEST_RUN) and the
    /// end-to-end tests in network namespaces (root).
    Test {
        /// Extra arguments for `cargo test` (after `--`), e.g. a test name.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Check formatting and run clippy with -D warnings on the user crates
    /// and, separately, on the kernel crate.
    Lint,
    /// Build everything and run a live demonstration in throwaway network
    /// namespaces (root).
    Demo,
    /// Build the release binary and install it with its man page, shell
    /// completions (bash, zsh, fish), the systemd unit and an example
    /// configuration. Enables and starts nothing.
    Install {
        /// Where the binary, man page and completions go (PREFIX/bin,
        /// PREFIX/share/man/man8, PREFIX/share/...); the unit names
        /// PREFIX/bin/xdp-allowlist.
        #[arg(long, default_value = "/usr/local")]
        prefix: PathBuf,
        /// Put every file under this directory instead of /, for packages
        /// and images (e.g. /tmp/stage/usr/local/bin/xdp-allowlist).
        #[arg(long)]
        destdir: Option<PathBuf>,
    },
    /// Measure the filter against a bare XDP_DROP program and the peers.
    Bench {
        /// Arguments for the benchmark driver (`--quick`, `--help`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    #[command(hide = true)]
    DemoListen { ports: Vec<u16> },
    #[command(hide = true)]
    DemoConnect { target: String, source: String },
}

fn main() -> std::process::ExitCode {
    match dispatch(Cli::parse().task) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn dispatch(task: Task) -> anyhow::Result<std::process::ExitCode> {
    use std::process::ExitCode;
    match task {
        Task::Setup => setup::setup()?,
        Task::Test { args } => {
            setup::require_root("test")?;
            setup::setup()?;
            test(&args)?;
        }
        Task::Lint => {
            setup::setup()?;
            lint()?;
        }
        Task::Demo => {
            setup::require_root("demo")?;
            setup::setup()?;
            let binary = build_binary(Profile::Debug)?;
            demo::demo(&binary)?;
        }
        Task::Bench { args } => {
            setup::require_root("bench")?;
            setup::setup()?;
            // Stage 3 runs the real daemon under a flood: the release build.
            let binary = match std::env::var_os("XDP_ALLOWLIST_BIN") {
                Some(path) => PathBuf::from(path),
                None => build_binary(Profile::Release)?,
            };
            run(cargo()
                .args([
                    "run",
                    "--release",
                    "-p",
                    "xdp-allowlist-tests",
                    "--bin",
                    "xdp-allowlist-bench",
                    "--",
                ])
                .args(&args)
                .env("XDP_ALLOWLIST_BIN", &binary))?;
        }
        Task::Install { prefix, destdir } => {
            setup::setup()?;
            install::install(&prefix, destdir.as_deref())?;
        }
        Task::DemoListen { ports } => demo::listen(&ports)?,
        Task::DemoConnect { target, source } => {
            if !demo::connect_from(&target, &source)? {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    command.current_dir(workspace_root());
    command
}

/// A cargo build profile.
#[derive(Clone, Copy)]
enum Profile {
    Debug,
    Release,
}

/// Builds the `xdp-allowlist` binary and returns its path.
fn build_binary(profile: Profile) -> anyhow::Result<PathBuf> {
    let (flags, dir): (&[&str], &str) = match profile {
        Profile::Debug => (&[], "debug"),
        Profile::Release => (&["--release"], "release"),
    };
    run(cargo().args(["build", "-p", "xdp-allowlist"]).args(flags))?;
    let target_dir = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("target"));
    let binary = target_dir.join(dir).join("xdp-allowlist");
    if !binary.exists() {
        bail!("built, but {} is missing", binary.display());
    }
    Ok(binary)
}

fn test(args: &[String]) -> anyhow::Result<()> {
    let binary = build_binary(Profile::Debug)?;
    // Tests that touch the kernel share bpffs and namespaces; they use
    // unique names, but two cores are better spent on one at a time.
    run(cargo()
        // The default members: every crate but the kernel one, which only
        // builds for the BPF target (through xdp-allowlist's build.rs).
        .args(["test", "--no-fail-fast", "--"])
        .args(["--test-threads", "2"])
        .args(args)
        .env("XDP_ALLOWLIST_BIN", &binary))
}

fn lint() -> anyhow::Result<()> {
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    // The kernel crate only builds for the BPF target, with the pinned nightly.
    let nightly = setup::kernel_toolchain()?;
    run(Command::new("rustup")
        .args([
            "run",
            &nightly,
            "cargo",
            "clippy",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ])
        .current_dir(workspace_root().join("xdp-allowlist-ebpf"))
        .env(
            "CARGO_TARGET_DIR",
            workspace_root().join("target").join("ebpf-clippy"),
        ))
}

/// Runs a command, failing with its name when it fails.
fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("cannot start {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}
