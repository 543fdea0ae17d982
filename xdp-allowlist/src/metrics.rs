//! The Prometheus endpoint (`metrics_listen`): the kernel's counters, read
//! from the pinned maps on every scrape. Labels are service, verdict and
//! reason; never a source address, so the series count stays bounded.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{
    alerts::{AlertGauges, AlertKind},
    status::{self, Status},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
    protocol: &'static str,
    verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertLabels {
    alert: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    outcome: &'static str,
}

/// Renders `status`, and the daemon's alert counts when given, in the
/// Prometheus text format.
///
/// # Errors
///
/// Only if formatting fails.
pub fn render(status: &Status, alerts: Option<&AlertGauges>) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("xdp_allowlist");
    if let Some(alerts) = alerts {
        register_alerts(&mut registry, alerts);
    }

    let packets = Family::<ServiceLabels, Counter<u64, AtomicU64>>::default();
    let bytes = Family::<ServiceLabels, Counter<u64, AtomicU64>>::default();
    for (name, service) in &status.services {
        for (&protocol, s) in &service.protocols {
            let label = |verdict| ServiceLabels {
                service: name.clone(),
                protocol,
                verdict,
            };
            packets.get_or_create(&label("passed")).inc_by(s.passed);
            packets.get_or_create(&label("dropped")).inc_by(s.dropped);
            packets
                .get_or_create(&label("would_drop"))
                .inc_by(s.would_drop);
            bytes.get_or_create(&label("passed")).inc_by(s.passed_bytes);
            bytes
                .get_or_create(&label("dropped"))
                .inc_by(s.dropped_bytes);
        }
    }
    registry.register(
        "packets",
        "Packets to protected ports, by service, protocol and verdict",
        packets,
    );
    registry.register(
        "bytes",
        "Transport bytes to protected ports, by service, protocol and verdict",
        bytes,
    );

    let reasons = Family::<ReasonLabels, Counter<u64, AtomicU64>>::default();
    for (&reason, &count) in &status.reasons {
        reasons
            .get_or_create(&ReasonLabels { reason })
            .inc_by(count);
    }
    registry.register(
        "parser",
        "Packets by the parser's decision (malformed, fragment, unprotected, ...)",
        reasons,
    );

    let events = Family::<EventLabels, Counter<u64, AtomicU64>>::default();
    events
        .get_or_create(&EventLabels { outcome: "sent" })
        .inc_by(status.events.sent);
    events
        .get_or_create(&EventLabels {
            outcome: "rate_limited",
        })
        .inc_by(status.events.rate_limited);
    events
        .get_or_create(&EventLabels {
            outcome: "ring_full",
        })
        .inc_by(status.events.ring_full);
    registry.register(
        "events",
        "Source events sent to the daemon, and those lost",
        events,
    );

    let untracked = Counter::<u64, AtomicU64>::default();
    untracked.inc_by(status.events.untracked);
    registry.register(
        "untracked_packets",
        "Packets to protected ports (drops, would-drops, access) from sources not tracked per source: the new-source budget was spent",
        untracked,
    );

    let generation = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
    generation.set(i64::try_from(status.generation).unwrap_or(i64::MAX));
    registry.register(
        "generation",
        "Generation of the configuration in force",
        generation,
    );

    let attached = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
    attached.set(status.attachments.len() as i64);
    registry.register(
        "attached_interfaces",
        "Interfaces the filter is attached to",
        attached,
    );

    let mut text = String::new();
    encode(&mut text, &registry)?;
    Ok(text)
}

/// The alert engine's state: by kind of alert, never by source.
fn register_alerts(registry: &mut Registry, alerts: &AlertGauges) {
    let active = Family::<AlertLabels, Gauge<i64, std::sync::atomic::AtomicI64>>::default();
    for kind in AlertKind::ALL {
        active
            .get_or_create(&AlertLabels { alert: kind.name() })
            .set(i64::try_from(alerts.active(kind)).unwrap_or(i64::MAX));
    }
    registry.register(
        "alerts_active",
        "Probing alerts firing now, by kind (source, prefix, scan)",
        active,
    );

    let evicted = Counter::<u64, AtomicU64>::default();
    evicted.inc_by(alerts.evicted.load(Ordering::Relaxed));
    registry.register(
        "alert_evictions",
        "Sources and prefixes the alert engine forgot because its tables were full",
        evicted,
    );

    let skipped = Counter::<u64, AtomicU64>::default();
    skipped.inc_by(alerts.commands_skipped.load(Ordering::Relaxed));
    registry.register(
        "alert_commands_skipped",
        "Alerts not handed to the alert command because too many were still running",
        skipped,
    );
}

/// Serves `/metrics` on `listen` from a thread of its own, for as long as
/// the process runs. `alerts` is read on every scrape.
///
/// # Errors
///
/// When the address cannot be bound.
pub fn serve(listen: SocketAddr, pin_dir: &Path, alerts: Arc<AlertGauges>) -> anyhow::Result<()> {
    let server = tiny_http::Server::http(listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen} for metrics: {e}"))?;
    let pin_dir: PathBuf = pin_dir.to_owned();
    std::thread::Builder::new()
        .name("metrics".to_owned())
        .spawn(move || {
            for request in server.incoming_requests() {
                let (code, body) = match request.url() {
                    "/metrics" => match status::read(&pin_dir) {
                        Ok(status) => match render(&status, Some(&alerts)) {
                            Ok(text) => (200, text),
                            Err(err) => (500, err.to_string()),
                        },
                        Err(err) => (503, format!("{err:#}\n")),
                    },
                    _ => (404, "see /metrics\n".to_owned()),
                };
                let mut response = tiny_http::Response::from_string(body).with_status_code(code);
                if let Ok(header) = tiny_http::Header::from_bytes(
                    &b"Content-Type"[..],
                    &b"application/openmetrics-text; version=1.0.0; charset=utf-8"[..],
                ) {
                    response = response.with_header(header);
                }
                let _ = request.respond(response);
            }
        })?;
    tracing::info!(%listen, "serving Prometheus metrics on /metrics");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_gauges_are_labelled_by_kind_only() {
        let status = Status {
            pin_dir: String::new(),
            generation: 1,
            active_slot: 0,
            attachments: Vec::new(),
            services: Default::default(),
            reasons: Default::default(),
            events: Default::default(),
        };
        let mut engine = crate::alerts::Engine::new(crate::config::AlertSettings {
            scan_ports: 2,
            ..Default::default()
        });
        for port in [22, 8443] {
            engine.observe(&crate::alerts::Observation {
                time: std::time::SystemTime::now(),
                kind: crate::alerts::ObservationKind::Drop,
                service: "admin".to_owned(),
                source: "198.51.100.2".parse().expect("address"),
                protocol: crate::config::Protocol::Tcp,
                port,
                ports: vec![port],
                packets: 1,
                first_seen: std::time::SystemTime::now(),
            });
        }
        let gauges = AlertGauges::default();
        gauges.update(&engine);

        let text = render(&status, Some(&gauges)).expect("render");
        assert!(
            text.contains("xdp_allowlist_alerts_active{alert=\"scan\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("xdp_allowlist_alerts_active{alert=\"source\"} 0"),
            "{text}"
        );
        assert!(
            !text.contains("198.51.100.2"),
            "no per-source label: {text}"
        );
        assert!(!render(&status, None)
            .expect("render")
            .contains("alerts_active"));
    }
}
