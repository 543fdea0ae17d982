//! The audit log: one JSON object per line for every change applied,
//! refused, rolled back or expired, and every edit made through the CLI.
//!
//! The daemon records what it applied (generation, per-service diff, outcome);
//! the CLI records who asked (uid, SSH client address). Lines are appended
//! with `O_APPEND` so that both can write to the same file.

use std::{collections::BTreeMap, fs, io::Write as _, path::Path};

use serde::Serialize;

use crate::{guard::SshSession, policy::ServiceChange};

/// Who made a change.
#[derive(Clone, Debug, Serialize)]
pub struct Actor {
    /// `daemon` or `cli`.
    pub process: &'static str,
    pub uid: u32,
    pub ssh_client: Option<String>,
}

impl Actor {
    pub fn current(process: &'static str) -> Self {
        Actor {
            process,
            uid: nix::unistd::getuid().as_raw(),
            ssh_client: SshSession::from_env().map(|s| s.client.to_string()),
        }
    }
}

/// One line of the audit log.
#[derive(Clone, Debug, Serialize)]
pub struct Record<'a> {
    pub time: String,
    pub actor: Actor,
    /// `apply`, `edit`, `expire`.
    pub action: &'a str,
    /// `applied`, `unchanged`, `rejected`, `failed`, `written`, `refused`.
    pub outcome: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger: Option<&'a str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub changes: BTreeMap<String, ServiceChange>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl<'a> Record<'a> {
    pub fn new(actor: Actor, action: &'a str, outcome: &'a str) -> Self {
        Record {
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            actor,
            action,
            outcome,
            generation: None,
            trigger: None,
            changes: BTreeMap::new(),
            reason: None,
        }
    }
}

/// Appends `record` to the log at `path`, creating its directory.
///
/// # Errors
///
/// When the directory or file cannot be created or written.
pub fn append(path: &Path, record: &Record<'_>) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut line = serde_json::to_string(record).map_err(std::io::Error::other)?;
    line.push('\n');
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(line.as_bytes())
}

/// Appends, logging instead of failing: an unwritable audit log must not
/// stop the filter from being updated.
pub fn record(path: Option<&Path>, record: &Record<'_>) {
    if let Some(path) = path {
        if let Err(err) = append(path, record) {
            tracing::error!(path = %path.display(), error = %err, "cannot write the audit log");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_json_lines() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("sub/audit.jsonl");
        let mut first = Record::new(Actor::current("cli"), "edit", "written");
        first.changes.insert(
            "admin".to_owned(),
            ServiceChange {
                added: vec!["198.51.100.7/32".to_owned()],
                removed: vec![],
            },
        );
        append(&path, &first).expect("append");
        let mut second = Record::new(Actor::current("daemon"), "apply", "rejected");
        second.reason = Some("host bits set".to_owned());
        append(&path, &second).expect("append");

        let text = fs::read_to_string(&path).expect("read");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["changes"]["admin"]["added"][0], "198.51.100.7/32");
        assert_eq!(lines[0]["actor"]["process"], "cli");
        assert_eq!(lines[1]["outcome"], "rejected");
        assert_eq!(lines[1]["reason"], "host bits set");
        assert!(lines[1].get("changes").is_none());
    }
}
