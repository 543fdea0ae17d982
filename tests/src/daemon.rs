//! The real `xdp-allowlist` binary, run as a daemon in a test's server
//! namespace with its own configuration file and pin directory.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use crate::netns::Pair;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Path of the binary under test: `XDP_ALLOWLIST_BIN` (set by
/// `cargo xtask test`), else the workspace's debug build.
pub fn binary() -> PathBuf {
    let path = binary_path();
    assert!(
        path.exists(),
        "{} is missing: build it first (`cargo build -p xdp-allowlist`) or run `cargo xtask test`",
        path.display()
    );
    path
}

/// As [`binary`], without checking that the file exists.
pub fn binary_path() -> PathBuf {
    match std::env::var("XDP_ALLOWLIST_BIN") {
        Ok(path) => std::path::absolute(&path).unwrap_or_else(|_| PathBuf::from(path)),
        Err(_) => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/xdp-allowlist"),
    }
}

/// Fails the test with the command's output unless it exited 0.
pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A configuration file and pin directory of a test's own.
pub struct Instance {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub pin_dir: PathBuf,
}

impl Instance {
    pub fn new(config_text: &str) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let config = dir.path().join("config.toml");
        fs::write(&config, config_text).unwrap_or_else(|e| panic!("write config: {e}"));
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/xa-e2e-{}-{n}", std::process::id()));
        Instance {
            dir,
            config,
            pin_dir,
        }
    }

    /// Runs a CLI command against this instance's file and pin directory.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(binary())
            .arg("--config")
            .arg(&self.config)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run xdp-allowlist: {e}"))
    }

    /// Runs `run` in the pair's server namespace for a daemon that is
    /// expected to exit by itself (a refusal); bounded at 20 seconds, so a
    /// daemon that wrongly starts ends the wait instead of hanging it.
    pub fn run_expecting_exit(&self, pair: &Pair) -> Output {
        Command::new("timeout")
            .arg("20")
            .arg("nsenter")
            .arg(format!("--net=/var/run/netns/{}", pair.server))
            .arg(binary())
            .arg("--config")
            .arg(&self.config)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("run")
            .output()
            .unwrap_or_else(|e| panic!("cannot run xdp-allowlist: {e}"))
    }

    /// `status --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        let out = self.cli(&["status", "--json"]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("status --json is not JSON: {e}"))
    }
}

/// A running daemon; stopped and its filter detached on drop.
pub struct Daemon {
    pub instance: Instance,
    child: Child,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `xdp-allowlist run` in the pair's server namespace, attached to
    /// the server's veth end, and waits until it attached.
    pub fn start(pair: &Pair, config_text: &str) -> Self {
        let text = format!("interfaces = [\"{}\"]\n{config_text}", pair.server_if);
        let instance = Instance::new(&text);
        Self::start_instance(pair, instance)
    }

    pub fn start_instance(pair: &Pair, instance: Instance) -> Self {
        Self::start_in(&pair.server, instance)
    }

    /// Starts `xdp-allowlist run` in the network namespace `ns` with
    /// `instance`'s file (which names the interfaces), and waits until it
    /// attached. `nsenter` execs the daemon, so [`Daemon::pid`] is the
    /// daemon's own process id.
    pub fn start_in(ns: &str, instance: Instance) -> Self {
        Self::start_with_env(ns, instance, &[])
    }

    /// As [`Daemon::start_in`], with more environment variables.
    pub fn start_with_env(ns: &str, instance: Instance, env: &[(&str, &str)]) -> Self {
        let log = instance.dir.path().join("daemon.log");
        let log_file = fs::File::create(&log).unwrap_or_else(|e| panic!("log file: {e}"));
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{ns}"))
            .arg(binary())
            .arg("--config")
            .arg(&instance.config)
            .arg("--pin-dir")
            .arg(&instance.pin_dir)
            .arg("run")
            .env("NO_COLOR", "1")
            .env("XDP_ALLOWLIST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the daemon: {e}"));
        let daemon = Daemon {
            instance,
            child,
            log,
        };
        daemon.wait_for_log("filter attached", Duration::from_secs(30));
        daemon
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the daemon's log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.log_text().contains(needle) {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "the daemon did not log `{needle}` within {limit:?}; log:\n{}",
            self.log_text()
        );
    }

    /// Counts log lines containing `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log_text()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: the daemon gets no chance to clean up.
    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the daemon to exit; returns its status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        // Never panic here: a panic while unwinding aborts the test run and
        // skips every other cleanup.
        let _ = Command::new(binary_path())
            .arg("--pin-dir")
            .arg(&self.instance.pin_dir)
            .arg("detach")
            .output();
    }
}
