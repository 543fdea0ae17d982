//! The deployment files in `packaging/`, checked by the tools that read them:
//! the Kubernetes manifests against the Kubernetes schemas (PyPI's
//! kubernetes-validate, which `cargo xtask setup` installs into
//! `target/tools/venv`), the systemd unit with `systemd-analyze`, and the
//! configurations they carry with `xdp-allowlist check`. No root needed.
//!
//! The binary is `XDP_ALLOWLIST_BIN` (set by `cargo xtask test`), else the
//! workspace's debug build.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

/// Highest `systemd-analyze security` exposure the unit may reach, in tenths
/// (the unit scores 2.1 with systemd 252; what is left is what an XDP loader
/// cannot give up: root, CAP_BPF, CAP_NET_ADMIN, the host's network).
const MOST_EXPOSURE: &str = "25";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

fn venv_bin(name: &str) -> PathBuf {
    let path = workspace().join("target/tools/venv/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask setup`, which installs kubernetes-validate",
        path.display()
    );
    path
}

fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("XDP_ALLOWLIST_BIN") {
        return PathBuf::from(path);
    }
    let path = workspace().join("target/debug/xdp-allowlist");
    assert!(
        path.exists(),
        "{} is missing: build it first (`cargo build -p xdp-allowlist`) or run `cargo xtask test`",
        path.display()
    );
    path
}

/// Every manifest in packaging/kubernetes.
fn manifests() -> Vec<PathBuf> {
    let dir = workspace().join("packaging/kubernetes");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifest in {}", dir.display());
    files
}

fn output(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"))
}

fn describe(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn validate(files: &[PathBuf]) -> Output {
    output(
        Command::new(venv_bin("kubernetes-validate"))
            .args(["--strict", "--no-warn"])
            .args(files),
    )
}

#[test]
fn kubernetes_manifests_match_the_schemas() {
    let files = manifests();

    let out = validate(&files);

    assert!(
        out.status.success(),
        "the manifests do not validate: {}",
        describe(&out)
    );
    let report = String::from_utf8_lossy(&out.stdout);
    for file in &files {
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
        assert!(
            name.as_ref().is_some_and(|n| report.contains(n.as_str())),
            "the validator said nothing about {}: {report}",
            file.display()
        );
    }
}

/// The check above means something only if the validator refuses a wrong
/// manifest: a misspelled field, which a cluster would silently ignore.
#[test]
fn the_validator_refuses_a_misspelled_field() {
    let daemonset = workspace().join("packaging/kubernetes/daemonset.yaml");
    let text = fs::read_to_string(&daemonset)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", daemonset.display()));
    assert!(text.contains("mountPropagation:"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let broken = dir.path().join("daemonset.yaml");
    fs::write(
        &broken,
        text.replace("mountPropagation:", "mountPropogation:"),
    )
    .unwrap_or_else(|e| panic!("cannot write {}: {e}", broken.display()));

    let out = validate(&[broken]);

    assert!(
        !out.status.success(),
        "a misspelled field passed: {}",
        describe(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("mountPropogation"),
        "the refusal does not name the field: {}",
        describe(&out)
    );
}

#[test]
fn the_configmap_holds_a_valid_configuration() {
    let configmap = workspace().join("packaging/kubernetes/configmap.yaml");
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let config = dir.path().join("config.toml");
    // PyYAML comes with kubernetes-validate.
    let out = output(Command::new(venv_bin("python")).args([
        "-c",
        "import sys, yaml; sys.stdout.write(yaml.safe_load(open(sys.argv[1]))['data']['config.toml'])",
        &configmap.to_string_lossy(),
    ]));
    assert!(
        out.status.success(),
        "cannot read {}: {}",
        configmap.display(),
        describe(&out)
    );
    fs::write(&config, &out.stdout)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", config.display()));

    let out = output(
        Command::new(binary())
            .arg("--config")
            .arg(&config)
            .arg("check"),
    );

    assert!(
        out.status.success(),
        "the ConfigMap's config.toml is refused: {}",
        describe(&out)
    );
}

#[test]
fn the_example_configuration_is_valid() {
    let example = workspace().join("packaging/config.example.toml");

    let out = output(
        Command::new(binary())
            .arg("--config")
            .arg(&example)
            .arg("check"),
    );

    assert!(
        out.status.success(),
        "{} is refused: {}",
        example.display(),
        describe(&out)
    );
}

/// A copy of the unit naming the binary under test, so that
/// `systemd-analyze verify` finds what ExecStart runs.
fn unit_copy(dir: &Path) -> PathBuf {
    let unit = workspace().join("packaging/xdp-allowlist.service");
    let text =
        fs::read_to_string(&unit).unwrap_or_else(|e| panic!("cannot read {}: {e}", unit.display()));
    assert!(text.contains("ExecStart=/usr/local/bin/xdp-allowlist run"));
    let copy = dir.join("xdp-allowlist.service");
    let text = text.replace("/usr/local/bin/xdp-allowlist", &binary().to_string_lossy());
    fs::write(&copy, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", copy.display()));
    copy
}

#[test]
fn the_systemd_unit_verifies() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let unit = unit_copy(dir.path());

    // --man=no: the man page is installed by `cargo xtask install`, not here.
    let out = output(
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&unit),
    );

    // verify exits 0 on a line it ignores (a misspelled value); it still
    // says so on stderr.
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify complains: {}",
        describe(&out)
    );
}

#[test]
fn the_systemd_unit_stays_hardened() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let unit = unit_copy(dir.path());

    let out = output(
        Command::new("systemd-analyze")
            .args(["security", "--offline=true"])
            .arg(format!("--threshold={MOST_EXPOSURE}"))
            .arg(&unit),
    );

    assert!(
        out.status.success(),
        "the unit's exposure rose above {MOST_EXPOSURE} tenths: {}",
        describe(&out)
    );
}
