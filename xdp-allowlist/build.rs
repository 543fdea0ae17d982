//! Compiles the kernel program (`xdp-allowlist-ebpf`) for the BPF target with
//! aya-build; the object is embedded into the binary with `include_bytes_aligned!`.

use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata failed")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "xdp-allowlist-ebpf")
        .ok_or_else(|| anyhow!("package `xdp-allowlist-ebpf` not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("kernel crate manifest has no parent directory"))?;
    let package = Package {
        name: ebpf.name.as_str(),
        root_dir: root_dir.as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::default())
}
