//! Confirm-or-rollback (`apply --confirm`), in the spirit of `iptables-apply`
//! and Junos's `commit confirmed`.
//!
//! `apply CANDIDATE --confirm 60s` keeps the configuration it replaces in a
//! pending record beside the configuration file, then puts the candidate in
//! place. Unless `confirm` removes the record in time, the daemon writes the
//! kept configuration back and applies it. The record is a file, so a daemon
//! restarted in the meantime still rolls back on time.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// A change waiting for `confirm`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// Seconds since the Unix epoch after which the daemon rolls back.
    pub deadline_unix: u64,
    /// The configuration to restore.
    pub rollback_text: String,
    /// The generation that was in force before the change, for messages.
    pub generation_before: u64,
}

impl Pending {
    pub fn new(rollback_text: String, generation_before: u64, within: Duration) -> Self {
        let deadline = SystemTime::now() + within;
        Pending {
            deadline_unix: deadline
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            rollback_text,
            generation_before,
        }
    }

    pub fn deadline(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.deadline_unix)
    }

    pub fn is_due(&self, now: SystemTime) -> bool {
        now >= self.deadline()
    }
}

/// Where the pending record of the configuration at `config` lives.
pub fn pending_path(config: &Path) -> PathBuf {
    let name = config
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config.toml".to_owned());
    config.with_file_name(format!(".{name}.pending.json"))
}

/// The pending change, if there is one.
///
/// # Errors
///
/// When the record exists but cannot be read or parsed.
pub fn read(config: &Path) -> anyhow::Result<Option<Pending>> {
    let path = pending_path(config);
    match fs::read_to_string(&path) {
        Ok(text) => {
            Ok(Some(serde_json::from_str(&text).with_context(|| {
                format!("{} is damaged", path.display())
            })?))
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(anyhow::Error::new(err).context(format!("cannot read {}", path.display()))),
    }
}

/// Records a pending change.
///
/// # Errors
///
/// When the record cannot be written.
pub fn write(config: &Path, pending: &Pending) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(pending)?;
    crate::edit::write_atomically(&pending_path(config), &text)
}

/// Removes the pending record; true if there was one.
///
/// # Errors
///
/// When it exists and cannot be removed.
pub fn clear(config: &Path) -> anyhow::Result<bool> {
    match fs::remove_file(pending_path(config)) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(anyhow::Error::new(err).context("cannot remove the pending record")),
    }
}

/// Rolls back when the pending change is due: writes the kept configuration
/// back and removes the record. Returns the pending record it acted on.
///
/// # Errors
///
/// When the configuration cannot be written back.
pub fn roll_back_if_due(config: &Path, now: SystemTime) -> anyhow::Result<Option<Pending>> {
    let Some(pending) = read(config)? else {
        return Ok(None);
    };
    if !pending.is_due(now) {
        return Ok(None);
    }
    crate::edit::write_atomically(config, &pending.rollback_text)?;
    clear(config)?;
    Ok(Some(pending))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_due_change_is_rolled_back_once() {
        let dir = tempfile::tempdir().expect("dir");
        let config = dir.path().join("config.toml");
        fs::write(&config, "candidate").expect("write");
        let pending = Pending::new("previous".to_owned(), 7, Duration::from_secs(60));
        write(&config, &pending).expect("record");
        assert_eq!(read(&config).expect("read"), Some(pending.clone()));

        assert!(roll_back_if_due(&config, SystemTime::now())
            .expect("early")
            .is_none());
        assert_eq!(fs::read_to_string(&config).expect("read"), "candidate");

        let later = pending.deadline() + Duration::from_secs(1);
        let done = roll_back_if_due(&config, later).expect("due");
        assert_eq!(done.map(|p| p.generation_before), Some(7));
        assert_eq!(fs::read_to_string(&config).expect("read"), "previous");
        assert!(read(&config).expect("read").is_none());
        assert!(roll_back_if_due(&config, later).expect("again").is_none());
    }

    #[test]
    fn confirming_removes_the_record() {
        let dir = tempfile::tempdir().expect("dir");
        let config = dir.path().join("config.toml");
        write(
            &config,
            &Pending::new(String::new(), 1, Duration::from_secs(1)),
        )
        .expect("record");
        assert!(clear(&config).expect("clear"));
        assert!(!clear(&config).expect("clear again"));
    }
}
