//! `cargo xtask install`: builds the release binary and lays out everything
//! a host needs, like a package would: the binary, its man page and shell
//! completions under PREFIX, the systemd unit and an example configuration
//! under /etc. Every path is prefixed with DESTDIR when one is given, for
//! building packages and images; nothing is started or enabled.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

use crate::{build_binary, workspace_root, Profile};

/// Where `packaging/xdp-allowlist.service` expects the binary; replaced by
/// PREFIX/bin/xdp-allowlist on the way in.
const UNIT_BINARY: &str = "/usr/local/bin/xdp-allowlist";

/// Shells whose completions are installed, and where each looks for them
/// (relative to PREFIX/share).
const COMPLETIONS: &[(&str, &str)] = &[
    ("bash", "bash-completion/completions/xdp-allowlist"),
    ("zsh", "zsh/site-functions/_xdp-allowlist"),
    ("fish", "fish/vendor_completions.d/xdp-allowlist.fish"),
];

/// Builds and installs.
///
/// # Errors
///
/// When PREFIX is relative, the build fails, or a file cannot be written.
pub fn install(prefix: &Path, destdir: Option<&Path>) -> anyhow::Result<()> {
    if !prefix.is_absolute() {
        bail!(
            "--prefix must be an absolute path (it is written into the systemd unit), not `{}`",
            prefix.display()
        );
    }
    let binary = build_binary(Profile::Release)?;
    let staged = |path: &Path| -> PathBuf {
        match destdir {
            Some(root) => root.join(path.strip_prefix("/").unwrap_or(path)),
            None => path.to_path_buf(),
        }
    };

    let bin = prefix.join("bin").join("xdp-allowlist");
    put(&staged(&bin), &fs::read(&binary)?, 0o755)?;

    let man = output_of(Command::new(&binary).arg("man"))?;
    let man_page = prefix.join("share/man/man8/xdp-allowlist.8");
    put(&staged(&man_page), &man, 0o644)?;

    for (shell, path) in COMPLETIONS {
        let script = output_of(Command::new(&binary).args(["completions", shell]))?;
        put(&staged(&prefix.join("share").join(path)), &script, 0o644)?;
    }

    let packaging = workspace_root().join("packaging");
    let unit = fs::read_to_string(packaging.join("xdp-allowlist.service"))
        .context("cannot read packaging/xdp-allowlist.service")?;
    if !unit.contains(UNIT_BINARY) {
        bail!("packaging/xdp-allowlist.service no longer names {UNIT_BINARY}; update `cargo xtask install`");
    }
    let unit = unit.replace(UNIT_BINARY, &bin.to_string_lossy());
    let unit_path = Path::new("/etc/systemd/system/xdp-allowlist.service");
    put(&staged(unit_path), unit.as_bytes(), 0o644)?;

    let example = fs::read(packaging.join("config.example.toml"))
        .context("cannot read packaging/config.example.toml")?;
    let example_path = Path::new("/etc/xdp-allowlist/config.toml.example");
    put(&staged(example_path), &example, 0o644)?;

    if destdir.is_none() {
        println!(
            "next: cp {} /etc/xdp-allowlist/config.toml, edit it, `xdp-allowlist check`, then \
             `systemctl daemon-reload && systemctl enable --now xdp-allowlist`",
            example_path.display()
        );
    }
    Ok(())
}

/// Writes one file, creating its directory, and says so. The file is written
/// beside its place and renamed into it: a running daemon keeps its old
/// binary (writing over a running executable fails) until it is restarted.
fn put(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no directory", path.display()))?;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".xtask-new");
    let temporary = PathBuf::from(temporary);
    fs::write(&temporary, contents)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    fs::set_permissions(&temporary, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", temporary.display()))?;
    fs::rename(&temporary, path)
        .with_context(|| format!("cannot move {} into place", temporary.display()))?;
    println!("installed {}", path.display());
    Ok(())
}

/// Runs a command and returns what it printed, failing when it fails.
fn output_of(command: &mut Command) -> anyhow::Result<Vec<u8>> {
    let out = command
        .output()
        .with_context(|| format!("cannot start {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}
