//! `stats`: per-service totals and the sources refused most, read from the
//! pinned maps (so it works with or without the daemon).
//!
//! The JSON form is a stable interface; its fields are listed on
//! [`Report`] and in the README.

use std::{collections::BTreeMap, fmt::Write as _, path::Path, time::Duration, time::SystemTime};

use serde::{Serialize, Serializer};

use crate::{
    sources::{self, Clock, SourceRow, SourcesReader},
    status::{self, EventStatus, ServiceStatus, Status, PROTOCOL_NAMES},
};

/// Everything `stats` shows; `stats --json` prints it as is.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub pin_dir: String,
    /// Generation of the configuration the kernel enforces.
    pub generation: u64,
    /// When the maps were read (RFC 3339, UTC).
    #[serde(serialize_with = "rfc3339")]
    pub now: SystemTime,
    /// `--since` in seconds, or null for all.
    pub since_seconds: Option<u64>,
    /// `--limit`; 0 means no limit.
    pub limit: usize,
    /// Totals by service name, as in `status --json`.
    pub services: BTreeMap<String, ServiceStatus>,
    /// Events sent and not sent, as in `status --json`.
    pub events: EventStatus,
    /// Refusal rows (kind `drop` or `would_drop`) that matched `--since`,
    /// before `--limit`.
    pub sources_matched: usize,
    /// The refusal rows, most packets first.
    pub sources: Vec<SourceRow>,
    /// Access rows (kind `access`) that matched `--since`, before `--limit`.
    pub access_matched: usize,
    /// The access rows, most packets first.
    pub access: Vec<SourceRow>,
}

fn rfc3339<S: Serializer>(at: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_rfc3339_seconds(*at))
}

/// Builds the report from what was read; `limit` 0 keeps every row.
pub fn build(
    status: Status,
    rows: Vec<SourceRow>,
    since: Option<Duration>,
    limit: usize,
    now: SystemTime,
) -> Report {
    let Status {
        pin_dir,
        generation,
        services,
        events,
        ..
    } = status;
    let (mut refusals, mut access) = sources::split_and_rank(rows, since, now);
    let sources_matched = refusals.len();
    let access_matched = access.len();
    if limit > 0 {
        refusals.truncate(limit);
        access.truncate(limit);
    }
    Report {
        pin_dir,
        generation,
        now,
        since_seconds: since.map(|s| s.as_secs()),
        limit,
        services,
        events,
        sources_matched,
        sources: refusals,
        access_matched,
        access,
    }
}

/// Reads the maps pinned in `pin_dir` and builds the report.
///
/// # Errors
///
/// When nothing is pinned there or a map cannot be read.
pub fn read(pin_dir: &Path, since: Option<Duration>, limit: usize) -> anyhow::Result<Report> {
    let status = status::read(pin_dir)?;
    let reader = SourcesReader::open(pin_dir)?;
    let clock = Clock::now();
    let rows = reader.read(&clock)?;
    Ok(build(status, rows, since, limit, clock.realtime))
}

/// The human form of `stats`.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let window = match report.since_seconds {
        Some(s) => format!(
            "sources seen in the last {}",
            humantime::format_duration(Duration::from_secs(s))
        ),
        None => "all tracked sources".to_owned(),
    };
    let _ = writeln!(
        out,
        "generation {} (pin dir {}), {window}, read {}",
        report.generation,
        report.pin_dir,
        humantime::format_rfc3339_seconds(report.now)
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<20} {:<8} {:<5} {:>14} {:>14} {:>14}",
        "SERVICE", "MODE", "PROTO", "PASSED", "DROPPED", "WOULD DROP"
    );
    for (name, service) in &report.services {
        let mut lines = 0;
        for proto in PROTOCOL_NAMES {
            let Some(p) = service.protocols.get(proto) else {
                continue;
            };
            if p.passed + p.dropped + p.would_drop == 0 {
                continue;
            }
            let _ = writeln!(
                out,
                "{:<20} {:<8} {:<5} {:>14} {:>14} {:>14}",
                name, service.mode, proto, p.passed, p.dropped, p.would_drop
            );
            lines += 1;
        }
        if lines == 1 {
            continue;
        }
        // Several protocols, or no traffic yet: the service's total.
        let _ = writeln!(
            out,
            "{:<20} {:<8} {:<5} {:>14} {:>14} {:>14}",
            name, service.mode, "all", service.passed, service.dropped, service.would_drop
        );
    }
    let e = &report.events;
    let _ = writeln!(
        out,
        "events: {} sent, {} rate-limited, {} lost (ring full); {} packets from untracked sources",
        e.sent, e.rate_limited, e.ring_full, e.untracked
    );

    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "REFUSED SOURCES ({} of {}, most packets first)",
        report.sources.len(),
        report.sources_matched
    );
    render_rows(&mut out, &report.sources, report.now);
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "ACCESS (allowed connections and datagrams; {} of {})",
        report.access.len(),
        report.access_matched
    );
    render_rows(&mut out, &report.access, report.now);
    out
}

fn render_rows(out: &mut String, rows: &[SourceRow], now: SystemTime) {
    if rows.is_empty() {
        let _ = writeln!(out, "  (none)");
        return;
    }
    let _ = writeln!(
        out,
        "{:<39} {:<16} {:<10} {:>10} {:>12} {:>9} {:>9}  PORTS",
        "SOURCE", "SERVICE", "KIND", "PACKETS", "BYTES", "FIRST", "LAST"
    );
    for row in rows {
        let _ = writeln!(
            out,
            "{:<39} {:<16} {:<10} {:>10} {:>12} {:>9} {:>9}  {}",
            row.source,
            row.service,
            row.kind.as_str(),
            row.packets,
            row.bytes,
            ago(now, row.first_seen),
            ago(now, row.last_seen),
            ports_text(row)
        );
    }
}

/// The ports of a row, with the packets to ports past the remembered ones.
pub fn ports_text(row: &SourceRow) -> String {
    let mut text = row.ports.join(",");
    if row.other_port_packets > 0 {
        let _ = write!(text, " +{} to other ports", row.other_port_packets);
    }
    text
}

/// How long before `now` `at` was, in its two largest units (`42s ago`,
/// `3m12s ago`, `2h5m ago`, `4d3h ago`).
pub fn ago(now: SystemTime, at: SystemTime) -> String {
    let secs = now.duration_since(at).unwrap_or_default().as_secs();
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h}h ago")
    } else if h > 0 {
        format!("{h}h{m}m ago")
    } else if m > 0 {
        format!("{m}m{s}s ago")
    } else {
        format!("{s}s ago")
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::{sources::Kind, status::ProtocolStatus};

    fn row(source: [u8; 4], kind: Kind, packets: u64, last_seen_s: u64) -> SourceRow {
        SourceRow {
            bytes: packets * 40,
            first_seen: SystemTime::UNIX_EPOCH + Duration::from_secs(1),
            ports: vec!["udp/5353".to_owned()],
            ..SourceRow::for_test(IpAddr::from(source), "dns", kind, packets, last_seen_s)
        }
    }

    fn status() -> Status {
        let mut dns = ServiceStatus {
            id: 1,
            mode: "enforce",
            dropped: 60,
            ..ServiceStatus::default()
        };
        dns.protocols.insert(
            "udp",
            ProtocolStatus {
                dropped: 60,
                ..ProtocolStatus::default()
            },
        );
        Status {
            pin_dir: "/sys/fs/bpf/x".to_owned(),
            generation: 4,
            active_slot: 0,
            attachments: vec![],
            services: BTreeMap::from([("dns".to_owned(), dns)]),
            reasons: BTreeMap::new(),
            events: EventStatus {
                sent: 3,
                untracked: 2,
                ..EventStatus::default()
            },
        }
    }

    fn sample() -> Vec<SourceRow> {
        vec![
            row([10, 0, 0, 1], Kind::Drop, 10, 500),
            row([10, 0, 0, 2], Kind::Drop, 40, 990),
            row([10, 0, 0, 3], Kind::WouldDrop, 20, 995),
            row([10, 0, 0, 4], Kind::Access, 5, 999),
        ]
    }

    #[test]
    fn the_report_limits_rows_but_counts_what_matched() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);

        let report = build(status(), sample(), None, 2, now);

        assert_eq!(report.sources_matched, 3);
        let order: Vec<String> = report
            .sources
            .iter()
            .map(|r| r.source.to_string())
            .collect();
        assert_eq!(order, ["10.0.0.2", "10.0.0.3"]);
        assert_eq!(report.access_matched, 1);
        assert_eq!(report.services["dns"].dropped, 60);
    }

    #[test]
    fn since_leaves_out_sources_not_seen_lately() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);

        let report = build(status(), sample(), Some(Duration::from_secs(30)), 0, now);

        assert_eq!(report.sources_matched, 2);
        assert!(report
            .sources
            .iter()
            .all(|r| r.source.to_string() != "10.0.0.1"));
        assert_eq!(report.since_seconds, Some(30));
    }

    #[test]
    fn the_json_form_has_the_documented_fields() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let report = build(status(), sample(), None, 0, now);

        let json = serde_json::to_value(&report).unwrap_or_default();

        for field in [
            "pin_dir",
            "generation",
            "now",
            "since_seconds",
            "limit",
            "services",
            "events",
            "sources_matched",
            "sources",
            "access_matched",
            "access",
        ] {
            assert!(json.get(field).is_some(), "missing {field}: {json}");
        }
        assert_eq!(json["now"], "1970-01-01T00:16:40Z");
        assert_eq!(json["events"]["untracked"], 2);
        assert_eq!(json["services"]["dns"]["protocols"]["udp"]["dropped"], 60);
        let first = &json["sources"][0];
        for field in [
            "source",
            "service",
            "service_id",
            "kind",
            "packets",
            "bytes",
            "first_seen",
            "last_seen",
            "ports",
            "other_port_packets",
        ] {
            assert!(first.get(field).is_some(), "missing sources[].{field}");
        }
        assert_eq!(first["kind"], "drop");
    }

    #[test]
    fn the_table_lists_refusals_and_access_apart() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let report = build(status(), sample(), None, 0, now);

        let text = render(&report);

        let refused = text.find("REFUSED SOURCES (3 of 3").unwrap_or(usize::MAX);
        let access = text.find("ACCESS").unwrap_or(usize::MAX);
        assert!(refused < access, "{text}");
        assert!(text[refused..access].contains("10.0.0.2"));
        assert!(!text[refused..access].contains("10.0.0.4"));
        assert!(text[access..].contains("10.0.0.4"));
        assert!(text.contains("udp/5353"));
        assert!(text.contains("2 packets from untracked sources"));
        let service_lines: Vec<&str> = text.lines().filter(|l| l.starts_with("dns ")).collect();
        assert_eq!(
            service_lines.len(),
            1,
            "one protocol, no total line: {text}"
        );
        assert!(service_lines[0].contains("udp"));
    }

    #[test]
    fn ages_use_two_units() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(200_000);
        let at = |ago: u64| now - Duration::from_secs(ago);

        assert_eq!(ago(now, at(0)), "0s ago");
        assert_eq!(ago(now, at(42)), "42s ago");
        assert_eq!(ago(now, at(192)), "3m12s ago");
        assert_eq!(ago(now, at(7_500)), "2h5m ago");
        assert_eq!(ago(now, at(97_200)), "1d3h ago");
        assert_eq!(ago(now, now + Duration::from_secs(5)), "0s ago");
    }
}
