//! `events`: prints the alerts and access records the daemon appended to
//! the `[alerts] file`, once or following the file as it grows.

use std::{
    fs,
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use serde_json::Value;

use crate::{config, UsageError};

/// How often `--follow` looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(500);

/// Prints the records in the file named by the configuration at
/// `config_path`.
///
/// # Errors
///
/// A [`UsageError`] when the configuration names no `[alerts] file`, a
/// configuration error, or a failure to read the file.
pub fn show(config_path: &Path, follow: bool, json: bool) -> anyhow::Result<()> {
    let loaded = config::load(config_path)?;
    let Some(path) = loaded.config.alerts.file else {
        return Err(UsageError(format!(
            "{} sets no `file` in [alerts], so the daemon writes alerts and access records only to its log; add for example\n  [alerts]\n  file = \"/var/log/xdp-allowlist/events.jsonl\"",
            config_path.display()
        ))
        .into());
    };
    let mut reader = Reader::new(path);
    let mut out = std::io::stdout().lock();
    if !follow && !reader.path.exists() {
        eprintln!(
            "no alerts or access records yet: {} does not exist",
            reader.path.display()
        );
        return Ok(());
    }
    loop {
        for line in reader.read_new()? {
            let text = if json { line } else { render(&line) };
            if writeln!(out, "{text}").is_err() {
                // The reader went away (a closed pipe): nothing left to do.
                return Ok(());
            }
        }
        if !follow {
            return Ok(());
        }
        let _ = out.flush();
        std::thread::sleep(FOLLOW_POLL);
    }
}

/// Reads whole lines appended to a file since the last call, starting over
/// when the file shrinks (truncated) or is replaced (rotated).
struct Reader {
    path: PathBuf,
    offset: u64,
    inode: Option<u64>,
    /// A last line not yet ended by a newline: the daemon may be writing it.
    partial: Vec<u8>,
}

impl Reader {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            offset: 0,
            inode: None,
            partial: Vec::new(),
        }
    }

    fn read_new(&mut self) -> anyhow::Result<Vec<String>> {
        let mut file = match fs::File::open(&self.path) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => {
                return Err(err).with_context(|| format!("cannot read {}", self.path.display()))
            }
        };
        let meta = file
            .metadata()
            .with_context(|| format!("cannot read {}", self.path.display()))?;
        if self.inode.is_some_and(|inode| inode != meta.ino()) || meta.len() < self.offset {
            self.offset = 0;
            self.partial.clear();
        }
        self.inode = Some(meta.ino());
        file.seek(SeekFrom::Start(self.offset))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .with_context(|| format!("cannot read {}", self.path.display()))?;
        self.offset += bytes.len() as u64;
        self.partial.extend_from_slice(&bytes);

        let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return Ok(Vec::new());
        };
        let complete: Vec<u8> = self.partial.drain(..=end).collect();
        Ok(String::from_utf8_lossy(&complete)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect())
    }
}

/// One record in one line for people; a line that is not a record is
/// shown as it is.
pub fn render(line: &str) -> String {
    let Ok(value) = serde_json::from_str::<Value>(line) else {
        return line.to_owned();
    };
    let text = |key: &str| value.get(key).and_then(Value::as_str).unwrap_or("?");
    let number = |key: &str| value.get(key).and_then(Value::as_u64).unwrap_or(0);
    let list = |key: &str| {
        value
            .get(key)
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    };
    match text("type") {
        "alert" => {
            let mut out = format!(
                "{}  ALERT {} {:<7} {}  services={} ports={} drops={} in {}s",
                text("time"),
                text("alert"),
                text("state"),
                text("source"),
                list("services"),
                list("ports"),
                number("drops"),
                number("window_seconds"),
            );
            if let Some(total) = value.get("episode_drops").and_then(Value::as_u64) {
                out.push_str(&format!(" episode_drops={total}"));
            }
            out
        }
        "access" => {
            let count = match value.get("connections").and_then(Value::as_u64) {
                Some(connections) => format!("connections={connections}"),
                None => format!("packets={}", number("packets")),
            };
            format!(
                "{}  ACCESS {} {} -> {}/{}  {count}",
                text("time"),
                text("service"),
                text("source"),
                text("protocol"),
                number("port"),
            )
        }
        _ => line.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_render_on_one_line() {
        let alert = r#"{"type":"alert","alert":"scan","state":"firing","source":"198.51.100.2","services":["admin"],"ports":["tcp/22","tcp/8443","tcp/9000"],"drops":3,"window_seconds":60,"first_seen":"t0","last_seen":"t1","time":"2026-12-03T19:00:00.000Z"}"#;
        assert_eq!(
            render(alert),
            "2026-12-03T19:00:00.000Z  ALERT scan firing  198.51.100.2  services=admin ports=tcp/22,tcp/8443,tcp/9000 drops=3 in 60s"
        );
        let access = r#"{"type":"access","service":"admin","source":"198.51.100.3","protocol":"tcp","port":22,"packets":1,"connections":1,"first_seen":"t0","time":"T"}"#;
        assert_eq!(
            render(access),
            "T  ACCESS admin 198.51.100.3 -> tcp/22  connections=1"
        );
        assert_eq!(render("not json"), "not json");
    }

    #[test]
    fn the_reader_returns_whole_new_lines_and_starts_over_after_truncation() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("events.jsonl");
        let mut reader = Reader::new(path.clone());
        assert!(reader.read_new().expect("missing is empty").is_empty());

        fs::write(&path, "one\ntw").expect("write");
        assert_eq!(reader.read_new().expect("read"), ["one"]);
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        file.write_all(b"o\nthree\n").expect("append");
        assert_eq!(reader.read_new().expect("read"), ["two", "three"]);
        assert!(reader.read_new().expect("read").is_empty());

        fs::write(&path, "new\n").expect("truncate");
        assert_eq!(reader.read_new().expect("read"), ["new"]);
    }

    #[test]
    fn no_file_in_the_configuration_is_a_usage_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("config.toml");
        fs::write(
            &config,
            "[services.admin]\nports = [\"tcp/22\"]\nallow = [\"198.51.100.0/24\"]\n",
        )
        .expect("write");
        let err = show(&config, false, false).expect_err("no file configured");
        assert_eq!(crate::exit_code(&err), 2);
        assert!(err.to_string().contains("[alerts]"), "{err}");
    }
}
