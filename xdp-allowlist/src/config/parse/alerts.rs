//! The `[alerts]` section.

use std::{path::PathBuf, time::Duration};

use toml_edit::Item;

use super::Walker;
use crate::config::AlertSettings;

const ALERT_KEYS: &[&str] = &[
    "window",
    "source_drops",
    "prefix_drops",
    "scan_ports",
    "summary_interval",
    "new_sources_per_second",
    "file",
    "command",
    "command_timeout",
    "access_records",
    "track_sources",
];

impl Walker {
    pub(super) fn alerts(&mut self, item: Option<&Item>) -> AlertSettings {
        let mut settings = AlertSettings::default();
        let Some(item) = item else {
            return settings;
        };
        let Some(table) = item.as_table() else {
            self.problem(
                item.span(),
                "`alerts` must be a table ([alerts] with keys like window = \"60s\")",
            );
            return settings;
        };
        self.unknown_keys(table, ALERT_KEYS, "in [alerts]");

        let hour = Duration::from_secs(3600);
        if let Some(window) = self.duration(
            table.get("window"),
            "window",
            Duration::from_secs(1),
            24 * hour,
        ) {
            settings.window = window;
        }
        let threshold =
            |walker: &mut Self, key: &str, max: i64| walker.integer(table.get(key), key, 1, max);
        if let Some(n) = threshold(self, "source_drops", 1_000_000_000) {
            settings.source_drops = u64::from(n);
        }
        if let Some(n) = threshold(self, "prefix_drops", 1_000_000_000) {
            settings.prefix_drops = u64::from(n);
        }
        if let Some(n) = threshold(self, "scan_ports", crate::alerts::MAX_PORTS as i64) {
            settings.scan_ports = n;
        }
        if let Some(n) = threshold(self, "new_sources_per_second", 10_000_000) {
            settings.new_sources_per_second = n;
        }
        if let Some(interval) = self.duration(
            table.get("summary_interval"),
            "summary_interval",
            Duration::from_millis(100),
            hour,
        ) {
            settings.summary_interval = interval;
        }
        if let Some(timeout) = self.duration(
            table.get("command_timeout"),
            "command_timeout",
            Duration::from_millis(100),
            hour,
        ) {
            settings.command_timeout = timeout;
        }
        if let Some(item) = table.get("file") {
            match item.as_str() {
                Some(path) if !path.trim().is_empty() => settings.file = Some(PathBuf::from(path)),
                _ => self.problem(
                    item.span(),
                    "`file` in [alerts] must be a file path, like \"/var/log/xdp-allowlist/events.jsonl\"; leave it out to write no file",
                ),
            }
        }
        if let Some(item) = table.get("command") {
            settings.command = self.command(item);
        }
        if let Some(item) = table.get("track_sources") {
            match item.as_bool() {
                Some(on) => settings.track_sources = on,
                None => self.problem(item.span(), "`track_sources` must be true or false"),
            }
        }
        if let Some(item) = table.get("access_records") {
            match item.as_bool() {
                Some(on) => settings.access_records = on,
                None => self.problem(item.span(), "`access_records` must be true or false"),
            }
        }
        settings
    }

    /// `command = ["/usr/local/bin/page", "--team", "net"]`: a program and
    /// its arguments, run without a shell.
    fn command(&mut self, item: &Item) -> Vec<String> {
        const HOW: &str = "`command` in [alerts] must be a list of strings, the program then its arguments, like [\"/usr/local/bin/notify\", \"--team\", \"net\"] (no shell)";
        let Some(array) = item.as_array() else {
            self.problem(item.span(), HOW);
            return Vec::new();
        };
        let mut words = Vec::new();
        for value in array.iter() {
            match value.as_str() {
                Some(word) => words.push(word.to_owned()),
                None => {
                    self.problem(value.span(), HOW);
                    return Vec::new();
                }
            }
        }
        match words.first() {
            None => {
                self.problem(item.span(), format!("{HOW}; it is empty"));
                Vec::new()
            }
            Some(program) if program.trim().is_empty() => {
                self.problem(item.span(), "the program (first element) of `command` in [alerts] is empty; name the program to run");
                Vec::new()
            }
            Some(_) => words,
        }
    }

    /// A duration written like "60s", "5m" or "500ms", from `min` to `max`.
    fn duration(
        &mut self,
        item: Option<&Item>,
        key: &str,
        min: Duration,
        max: Duration,
    ) -> Option<Duration> {
        let item = item?;
        let range = format!(
            "from {} to {}",
            humantime::format_duration(min),
            humantime::format_duration(max)
        );
        let Some(text) = item.as_str() else {
            self.problem(
                item.span(),
                format!("`{key}` must be a duration string like \"60s\" or \"5m\", {range}"),
            );
            return None;
        };
        match humantime::parse_duration(text) {
            Ok(value) if (min..=max).contains(&value) => Some(value),
            Ok(_) => {
                self.problem(
                    item.span(),
                    format!("`{key}` is `{text}`; it must be {range}"),
                );
                None
            }
            Err(err) => {
                self.problem(
                    item.span(),
                    format!("`{key}` is `{text}`, not a duration ({err}); write it like \"60s\", \"5m\" or \"500ms\""),
                );
                None
            }
        }
    }
}
