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
    let toolchain_file = root_dir.join("rust-toolchain.toml");
    println!("cargo:rerun-if-changed={toolchain_file}");
    let channel = kernel_toolchain(toolchain_file.as_std_path())?;
    aya_build::build_ebpf([package], Toolchain::Custom(&channel))
}

/// The pinned nightly from the kernel crate's `rust-toolchain.toml`.
fn kernel_toolchain(path: &std::path::Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let doc: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("{} is not valid TOML", path.display()))?;
    doc.get("toolchain")
        .and_then(|t| t.get("channel"))
        .and_then(|c| c.as_str())
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("{} has no `toolchain.channel`", path.display()))
}
