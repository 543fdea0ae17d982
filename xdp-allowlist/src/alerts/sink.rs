//! Where alerts and access records go: the log (always), the `[alerts]
//! file` (JSON lines, appended) and the `[alerts] command` (alerts only).
//!
//! Commands run on the tokio runtime as child processes with the record on
//! standard input; at most [`MAX_COMMANDS`] at once. When that many are
//! still running, the alert is not handed to another one: the skip is
//! logged and counted, and the alert is still in the log and the file.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use tokio::{io::AsyncWriteExt as _, sync::Semaphore, task::JoinHandle};

use super::{AccessRecord, AlertGauges, AlertRecord, AlertState, Record};
use crate::config::AlertSettings;

/// Alert commands running at most at once.
pub const MAX_COMMANDS: usize = 4;

/// Sends records to the log, the file and the command.
#[derive(Debug)]
pub struct Sink {
    file: Option<PathBuf>,
    command: Vec<String>,
    timeout: Duration,
    running: Arc<Semaphore>,
    gauges: Arc<AlertGauges>,
    /// The last write to the file failed: the next failure is not logged
    /// again, the next success is.
    file_failing: bool,
}

impl Sink {
    pub fn new(settings: &AlertSettings, gauges: Arc<AlertGauges>) -> Self {
        Self {
            file: settings.file.clone(),
            command: settings.command.clone(),
            timeout: settings.command_timeout,
            running: Arc::new(Semaphore::new(MAX_COMMANDS)),
            gauges,
            file_failing: false,
        }
    }

    /// Takes a reloaded configuration's outputs.
    pub fn set_settings(&mut self, settings: &AlertSettings) {
        self.file = settings.file.clone();
        self.command = settings.command.clone();
        self.timeout = settings.command_timeout;
    }

    /// Logs `records`, appends them to the file and runs the command for
    /// each alert. Must be called on a tokio runtime when a command is set.
    pub fn emit(&mut self, records: &[Record]) {
        if records.is_empty() {
            return;
        }
        // The file first: a command that reads it finds its alert there.
        if let Some(path) = self.file.clone() {
            self.append(&path, records);
        }
        for record in records {
            match record {
                Record::Alert(alert) => {
                    log_alert(alert);
                    self.run_command(alert);
                }
                Record::Access(access) => log_access(access),
            }
        }
    }

    fn append(&mut self, path: &Path, records: &[Record]) {
        let mut text = String::new();
        for record in records {
            match serde_json::to_string(record) {
                Ok(line) => {
                    text.push_str(&line);
                    text.push('\n');
                }
                Err(err) => tracing::error!(error = %err, "cannot encode a record as JSON"),
            }
        }
        // Opened for every batch, so a rotated file is followed at once.
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?
                .write_all(text.as_bytes())
        };
        // A slow disk must not hold up the other tasks of the daemon's
        // runtime (it has several workers; tests may run on one).
        let result = match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(write)
            }
            _ => write(),
        };
        match result {
            Ok(()) if self.file_failing => {
                self.file_failing = false;
                tracing::info!(file = %path.display(), "writing alerts and access records again");
            }
            Ok(()) => {}
            Err(err) if !self.file_failing => {
                self.file_failing = true;
                tracing::error!(file = %path.display(), error = %err, "cannot write alerts and access records to the file; they are still logged");
            }
            Err(_) => {}
        }
    }

    /// Runs the alert command for `alert`, unless none is set or too many
    /// still run. Returns the task that waits for it.
    pub fn run_command(&self, alert: &AlertRecord) -> Option<JoinHandle<()>> {
        let (program, args) = self.command.split_first()?;
        let Ok(permit) = Arc::clone(&self.running).try_acquire_owned() else {
            self.gauges.commands_skipped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                alert = alert.alert.name(),
                source = %alert.source,
                running = MAX_COMMANDS,
                "alert command not run: too many still running"
            );
            return None;
        };
        let mut input = serde_json::to_vec(&Record::Alert(alert.clone())).unwrap_or_default();
        input.push(b'\n');
        let program = program.clone();
        let args = args.to_vec();
        let timeout = self.timeout;
        Some(tokio::spawn(async move {
            let _permit = permit;
            let spawned = tokio::process::Command::new(&program)
                .args(&args)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                // Its own process group, so that a timeout ends what it
                // started too (a script's `curl`), not only the script.
                .process_group(0)
                .kill_on_drop(true)
                .spawn();
            let mut child = match spawned {
                Ok(child) => child,
                Err(err) => {
                    tracing::warn!(command = %program, error = %err, "cannot start the alert command");
                    return;
                }
            };
            let finished = tokio::time::timeout(timeout, async {
                if let Some(mut stdin) = child.stdin.take() {
                    // A command that does not read its input is not an error.
                    let _ = stdin.write_all(&input).await;
                }
                child.wait().await
            })
            .await;
            match finished {
                Ok(Ok(status)) if status.success() => {
                    tracing::debug!(command = %program, "alert command done");
                }
                Ok(Ok(status)) => {
                    tracing::warn!(command = %program, %status, "alert command failed");
                }
                Ok(Err(err)) => {
                    tracing::warn!(command = %program, error = %err, "cannot wait for the alert command");
                }
                Err(_) => {
                    if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
                        // SAFETY: kill(2) with a negative pid signals the
                        // process group the child leads (made above); it
                        // touches no memory of ours.
                        unsafe { libc::kill(-pid, libc::SIGKILL) };
                    }
                    let _ = child.kill().await;
                    tracing::warn!(
                        command = %program,
                        timeout_ms = timeout.as_millis() as u64,
                        "alert command killed: it ran longer than command_timeout"
                    );
                }
            }
        }))
    }
}

fn log_alert(alert: &AlertRecord) {
    let AlertRecord {
        alert: kind,
        state,
        source,
        services,
        ports,
        drops,
        episode_drops,
        window_seconds,
        first_seen,
        last_seen,
        time: _,
    } = alert;
    let services = services.join(",");
    let ports = ports.join(",");
    match state {
        AlertState::Firing => tracing::warn!(
            alert = kind.name(),
            src = %source,
            services,
            ports,
            drops,
            window_s = window_seconds,
            first_seen = %first_seen,
            "probing alert firing"
        ),
        AlertState::Ended => tracing::info!(
            alert = kind.name(),
            src = %source,
            services,
            ports,
            episode_drops = episode_drops.unwrap_or(0),
            last_seen = %last_seen,
            "probing alert ended"
        ),
    }
}

fn log_access(access: &AccessRecord) {
    let AccessRecord {
        service,
        source,
        protocol,
        port,
        packets,
        connections: _,
        first_seen: _,
        time: _,
    } = access;
    tracing::info!(
        src = %source,
        service = %service,
        port = %format!("{protocol}/{port}"),
        packets,
        "access"
    );
}

#[cfg(test)]
mod tests {
    use std::time::{Instant, SystemTime};

    use super::*;
    use crate::alerts::{AlertKind, Engine, Observation, ObservationKind};

    fn alert() -> AlertRecord {
        let mut engine = Engine::new(AlertSettings {
            source_drops: 1,
            ..AlertSettings::default()
        });
        let records = engine.observe(&Observation {
            time: SystemTime::now(),
            kind: ObservationKind::Drop,
            service: "admin".to_owned(),
            source: "198.51.100.2".parse().expect("address"),
            protocol: crate::config::Protocol::Tcp,
            port: 22,
            ports: vec![22],
            packets: 1,
            first_seen: SystemTime::now(),
        });
        match records.into_iter().next() {
            Some(Record::Alert(alert)) => alert,
            other => panic!("expected an alert, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn records_are_appended_as_json_lines_and_commands_get_the_alert() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("sub/events.jsonl");
        let out = dir.path().join("stdin.json");
        let command = vec![
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            format!("cat > {}", out.display()),
        ];
        // The file first, with no command: commands started by `emit` would
        // race the one awaited below for the same output file.
        let settings = AlertSettings {
            file: Some(file.clone()),
            ..AlertSettings::default()
        };
        let mut sink = Sink::new(&settings, Arc::default());
        let alert = alert();
        sink.emit(&[Record::Alert(alert.clone())]);
        sink.emit(&[Record::Alert(alert.clone())]);

        let text = std::fs::read_to_string(&file).expect("file written");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["alert"], AlertKind::Source.name());

        let sink = Sink::new(
            &AlertSettings {
                command,
                ..AlertSettings::default()
            },
            Arc::default(),
        );
        let task = sink.run_command(&alert).expect("command started");
        task.await.expect("command task");
        let given: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&out).expect("command ran"))
                .expect("stdin is JSON");
        assert_eq!(given["type"], "alert");
        assert_eq!(given["source"], "198.51.100.2");
    }

    #[tokio::test]
    async fn a_slow_command_is_killed_and_a_busy_sink_skips() {
        let settings = AlertSettings {
            command: vec!["/bin/sleep".to_owned(), "30".to_owned()],
            command_timeout: Duration::from_millis(200),
            ..AlertSettings::default()
        };
        let gauges = Arc::new(AlertGauges::default());
        let sink = Sink::new(&settings, Arc::clone(&gauges));
        let alert = alert();

        let started = Instant::now();
        let tasks: Vec<_> = (0..MAX_COMMANDS)
            .map(|_| sink.run_command(&alert).expect("a free slot"))
            .collect();
        assert!(sink.run_command(&alert).is_none(), "all slots are busy");
        assert_eq!(gauges.commands_skipped.load(Ordering::Relaxed), 1);
        for task in tasks {
            task.await.expect("command task");
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "commands were not killed at the timeout: {:?}",
            started.elapsed()
        );
        assert!(sink.run_command(&alert).is_some(), "slots are free again");
    }

    /// Whether process `pid` still runs (a zombie waiting for its parent
    /// does not).
    fn running(pid: &str) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
        })
    }

    #[tokio::test]
    async fn a_timeout_also_ends_what_the_command_started() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pid_file = dir.path().join("grandchild.pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pid_file.display());
        let settings = AlertSettings {
            command: vec!["/bin/sh".to_owned(), "-c".to_owned(), script],
            command_timeout: Duration::from_millis(300),
            ..AlertSettings::default()
        };
        let sink = Sink::new(&settings, Arc::new(AlertGauges::default()));
        sink.run_command(&alert())
            .expect("a free slot")
            .await
            .expect("command task");

        let pid = std::fs::read_to_string(&pid_file).expect("the script wrote its child's pid");
        let pid = pid.trim();
        let deadline = Instant::now() + Duration::from_secs(3);
        while running(pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            !running(pid),
            "the command's own child {pid} outlived the timeout"
        );
    }
}
