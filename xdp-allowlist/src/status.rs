//! `status`: what the kernel enforces and what it counted, read from the
//! pinned maps, so it works from any process, with or without the daemon.

use std::{collections::BTreeMap, path::Path};

use aya::maps::{Array, MapData, PerCpuArray};
use serde::Serialize;
use xdp_allowlist_common::{
    counter_index, Control, EventLimiter, Reason, ServiceCounters, ServiceName, CONTROL_MAP,
    COUNTERS_MAP, EVENT_LIMITER_MAP, MAX_SERVICES, PORT_PROTOCOLS, REASONS_MAP, SERVICES_MAP,
    SERVICE_MONITOR, SERVICE_NAMES_MAP,
};

use crate::bpf::{self, Attachment};

/// Totals of one service over all CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ServiceStatus {
    pub id: u32,
    pub mode: &'static str,
    pub passed: u64,
    pub passed_bytes: u64,
    pub dropped: u64,
    pub dropped_bytes: u64,
    pub would_drop: u64,
    /// The same counts split by protocol (`tcp`, `udp`, `sctp`).
    pub protocols: BTreeMap<&'static str, ProtocolStatus>,
}

/// Counts of one service for one protocol, over all CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProtocolStatus {
    pub passed: u64,
    pub passed_bytes: u64,
    pub dropped: u64,
    pub dropped_bytes: u64,
    pub would_drop: u64,
}

/// Names of the protocols in counter order (`proto_index`).
pub const PROTOCOL_NAMES: [&str; PORT_PROTOCOLS as usize] = ["tcp", "udp", "sctp"];

/// Events sent and lost.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EventStatus {
    pub sent: u64,
    pub rate_limited: u64,
    pub ring_full: u64,
    /// Drops from sources that were not tracked per source because the
    /// kernel's budget of new sources per second was spent (a flood).
    pub untracked: u64,
}

/// Everything `status` shows.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub pin_dir: String,
    pub generation: u64,
    pub active_slot: u32,
    pub attachments: Vec<Attachment>,
    pub services: BTreeMap<String, ServiceStatus>,
    pub reasons: BTreeMap<&'static str, u64>,
    pub events: EventStatus,
}

/// Reads the status from the maps pinned in `pin_dir`.
///
/// # Errors
///
/// When nothing is pinned there or a map cannot be read.
pub fn read(pin_dir: &Path) -> anyhow::Result<Status> {
    bpf::check_pinned_layout(pin_dir)?;
    let control: Array<MapData, Control> = bpf::open_map(pin_dir, CONTROL_MAP)?;
    let control = control.get(&0, 0)?;
    let names: Array<MapData, ServiceName> = bpf::open_map(pin_dir, SERVICE_NAMES_MAP)?;
    let names = bpf::read_service_names(&names)?;
    let policies: Array<MapData, xdp_allowlist_common::ServicePolicy> =
        bpf::open_map(pin_dir, SERVICES_MAP)?;
    let counters: PerCpuArray<MapData, ServiceCounters> = bpf::open_map(pin_dir, COUNTERS_MAP)?;
    let reasons: PerCpuArray<MapData, u64> = bpf::open_map(pin_dir, REASONS_MAP)?;
    let limiter: PerCpuArray<MapData, EventLimiter> = bpf::open_map(pin_dir, EVENT_LIMITER_MAP)?;

    let slot = control.active_slot & 1;
    let mut services = BTreeMap::new();
    for (id, name) in names {
        let mut total = ServiceStatus {
            id,
            ..Default::default()
        };
        for (proto_idx, proto_name) in PROTOCOL_NAMES.iter().enumerate() {
            let mut by_proto = ProtocolStatus::default();
            for c in counters
                .get(&counter_index(id, proto_idx as u32), 0)?
                .iter()
            {
                by_proto.passed += c.passed;
                by_proto.passed_bytes += c.passed_bytes;
                by_proto.dropped += c.dropped;
                by_proto.dropped_bytes += c.dropped_bytes;
                by_proto.would_drop += c.would_drop;
            }
            total.passed += by_proto.passed;
            total.passed_bytes += by_proto.passed_bytes;
            total.dropped += by_proto.dropped;
            total.dropped_bytes += by_proto.dropped_bytes;
            total.would_drop += by_proto.would_drop;
            total.protocols.insert(proto_name, by_proto);
        }
        let flags = policies.get(&(slot * MAX_SERVICES + id), 0)?.flags;
        total.mode = if flags & SERVICE_MONITOR != 0 {
            "monitor"
        } else {
            "enforce"
        };
        services.insert(name, total);
    }

    let mut reason_totals = BTreeMap::new();
    for reason in Reason::ALL {
        let total: u64 = reasons.get(&(reason as u32), 0)?.iter().sum();
        reason_totals.insert(reason.name(), total);
    }
    let mut events = EventStatus::default();
    for cpu in limiter.get(&0, 0)?.iter() {
        events.sent += cpu.sent;
        events.rate_limited += cpu.rate_limited;
        events.ring_full += cpu.ring_full;
        events.untracked += cpu.untracked;
    }

    Ok(Status {
        pin_dir: pin_dir.display().to_string(),
        generation: control.generation,
        active_slot: control.active_slot,
        attachments: bpf::attachments(pin_dir),
        services,
        reasons: reason_totals,
        events,
    })
}

/// The human form of `status`.
pub fn render(status: &Status) -> String {
    use std::fmt::Write as _;

    let mut out = String::new();
    let _ = writeln!(
        out,
        "generation {} (pin dir {})",
        status.generation, status.pin_dir
    );
    if status.attachments.is_empty() {
        let _ = writeln!(
            out,
            "attached: nowhere (the filter is loaded but enforces on no interface)"
        );
    } else {
        for a in &status.attachments {
            let _ = writeln!(out, "attached: {} ({} XDP)", a.interface, a.mode);
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<20} {:<8} {:>14} {:>14} {:>14}",
        "SERVICE", "MODE", "PASSED", "DROPPED", "WOULD DROP"
    );
    for (name, s) in &status.services {
        let _ = writeln!(
            out,
            "{:<20} {:<8} {:>14} {:>14} {:>14}",
            name, s.mode, s.passed, s.dropped, s.would_drop
        );
    }
    let _ = writeln!(out);
    let nonzero: Vec<String> = status
        .reasons
        .iter()
        .filter(|(_, &n)| n > 0)
        .map(|(name, n)| format!("{name}={n}"))
        .collect();
    let _ = writeln!(
        out,
        "parser: {}",
        if nonzero.is_empty() {
            "no packets counted yet".to_owned()
        } else {
            nonzero.join(" ")
        }
    );
    let _ = writeln!(
        out,
        "source events: {} sent, {} not sent (rate limit), {} lost (ring buffer full); {} packets from untracked sources (new-source budget spent)",
        status.events.sent, status.events.rate_limited, status.events.ring_full, status.events.untracked
    );
    out
}
