//! `cargo xtask setup`: installs what building and testing need and is
//! missing, and nothing else. Safe to run any number of times; every other
//! task runs it first.

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context as _};

use crate::{run, workspace_root};

/// Debian packages bpf-linker is built against (rustc's LLVM is 22).
const LLVM_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
];

/// Debian packages the tests and demo drive: `ip` for namespaces, Python's
/// scapy to craft frames independently of our own encoder, `venv` for the
/// manifest validator, `systemd-analyze` to check the systemd unit, nmap as a
/// real port scanner against the probing alerts, and tmux to drive `top` in
/// a real terminal.
const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "python3-scapy",
    "python3-venv",
    "systemd",
    "nmap",
    "tmux",
];

/// PyPI's validator for Kubernetes manifests; it carries the schemas of every
/// Kubernetes version with it, so checking needs no cluster and no network.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate";
const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";

const BPF_LINKER_VERSION: &str = "0.13.0";

/// Installs whatever is missing.
///
/// # Errors
///
/// When an installer fails; its output says why.
pub fn setup() -> anyhow::Result<()> {
    let mut missing: Vec<&str> = LLVM_PACKAGES
        .iter()
        .chain(TEST_PACKAGES)
        .copied()
        .filter(|p| !deb_installed(p))
        .collect();
    missing.dedup();
    if !missing.is_empty() {
        println!("setup: installing Debian packages: {}", missing.join(" "));
        run(Command::new("apt-get").args(["update", "-q"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }

    let nightly = kernel_toolchain()?;
    if !nightly_has_components(&nightly) {
        println!("setup: installing the {nightly} toolchain with rust-src and clippy (the kernel crate needs build-std; pinned in xdp-allowlist-ebpf/rust-toolchain.toml)");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            &nightly,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
            "--component",
            "clippy",
        ]))?;
        if !nightly_has_components(&nightly) {
            run(Command::new("rustup").args([
                "component",
                "add",
                "rust-src",
                "clippy",
                "--toolchain",
                &nightly,
            ]))?;
        }
    }

    if !bpf_linker_ok() {
        println!(
            "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about two minutes)"
        );
        let path = format!(
            "/usr/lib/llvm-22/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        run(Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("PATH", path))?;
        if !bpf_linker_ok() {
            bail!("bpf-linker was installed but `bpf-linker --version` still fails; is ~/.cargo/bin on PATH?");
        }
    }

    if !kubernetes_validate_ok() {
        let venv = tools_venv();
        println!(
            "setup: installing {KUBERNETES_VALIDATE} {KUBERNETES_VALIDATE_VERSION} from PyPI into {} (checks packaging/kubernetes)",
            venv.display()
        );
        // Debian's own Python, whose python3-venv was installed above; a
        // virtual environment keeps the system's packages untouched.
        run(Command::new("/usr/bin/python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv))?;
        run(Command::new(venv.join("bin/pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            &format!("{KUBERNETES_VALIDATE}=={KUBERNETES_VALIDATE_VERSION}"),
        ]))?;
        if !kubernetes_validate_ok() {
            bail!(
                "{KUBERNETES_VALIDATE} was installed but `{} --version` still fails",
                venv.join("bin").join(KUBERNETES_VALIDATE).display()
            );
        }
    }
    Ok(())
}

/// The virtual environment for Python tools, under the workspace's `target/`
/// (whatever CARGO_TARGET_DIR says, so tests find it): `cargo clean` removes
/// it and the next setup makes it again.
fn tools_venv() -> PathBuf {
    workspace_root().join("target").join("tools").join("venv")
}

fn kubernetes_validate_ok() -> bool {
    Command::new(tools_venv().join("bin").join(KUBERNETES_VALIDATE))
        .arg("--version")
        .output()
        .map(|out| {
            out.status.success()
                && String::from_utf8_lossy(&out.stdout).contains(KUBERNETES_VALIDATE_VERSION)
        })
        .unwrap_or(false)
}

fn deb_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// The nightly the kernel crate is built with, from its `rust-toolchain.toml`
/// (the same file `xdp-allowlist/build.rs` reads).
pub fn kernel_toolchain() -> anyhow::Result<String> {
    let path = workspace_root()
        .join("xdp-allowlist-ebpf")
        .join("rust-toolchain.toml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let doc: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("{} is not valid TOML", path.display()))?;
    doc.get("toolchain")
        .and_then(|t| t.get("channel"))
        .and_then(|c| c.as_str())
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("{} has no `toolchain.channel`", path.display()))
}

/// rust-src for build-std, clippy for the kernel crate's lint.
fn nightly_has_components(toolchain: &str) -> bool {
    Command::new("rustup")
        .args(["component", "list", "--toolchain", toolchain, "--installed"])
        .output()
        .map(|out| {
            let listed = String::from_utf8_lossy(&out.stdout);
            out.status.success() && listed.contains("rust-src") && listed.contains("clippy")
        })
        .unwrap_or(false)
}

fn bpf_linker_ok() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|out| {
            out.status.success()
                && String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION)
        })
        .unwrap_or(false)
}

/// Fails early, with a useful message, when not root.
///
/// # Errors
///
/// When the effective user is not root.
pub fn require_root(task: &str) -> anyhow::Result<()> {
    let out = Command::new("id")
        .arg("-u")
        .output()
        .context("cannot run `id -u`")?;
    if String::from_utf8_lossy(&out.stdout).trim() != "0" {
        bail!("`cargo xtask {task}` loads XDP programs and creates network namespaces: run it as root");
    }
    Ok(())
}
