//! Per-source accounting: what each source sent to each service, read from
//! the pinned `SOURCES` map, for `stats` and `top`.
//!
//! Each CPU keeps its own table of (service, kind, source address) entries
//! in a per-CPU array, and counts only the packets it handled. The values of
//! one key are gathered from every CPU's table and merged here: packets and
//! bytes summed, the earliest first seen and latest last seen kept, the
//! ports united. A CPU that holds no entry for the key never saw the source
//! (or forgot it).
//!
//! The merge, the port labels and the ranking are plain functions of the
//! values, so they are tested without a kernel; [`SourcesReader`] only feeds
//! them from the pinned maps.
//!
//! Limits: each CPU tracks at most `SOURCES_CAPACITY` sources, in sets of
//! `SOURCE_WAYS`; a new source replaces the least recently seen one of its
//! set once the set is full, and a flood of new sources beyond the
//! kernel's per-CPU budget is only counted (`untracked` in `status`). A
//! source's ports are remembered per CPU, eight at most, in the order first
//! touched; packets to further ports are counted in `other_port_packets`,
//! which can therefore include a port another CPU remembered.

use std::{
    cmp::Ordering,
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    time::{Duration, SystemTime},
};

use aya::maps::{Array, MapData, MapError, PerCpuArray, PerCpuValues};
use serde::{Serialize, Serializer};
use xdp_allowlist_common::{
    port_index, proto_index, Control, EventLimiter, ServiceName, SourceKey, SourceSlot,
    SourceStats, CONTROL_MAP, EVENT_ACCESS, EVENT_DROP, EVENT_LIMITER_MAP, EVENT_WOULD_DROP,
    FAMILY_V4, FAMILY_V6, PORTS_MAP, PORT_SERVICE_MASK, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
    SERVICE_NAMES_MAP, SOURCES_CAPACITY, SOURCES_MAP,
};

use crate::bpf;

/// What a source's entry counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Refused and dropped by an enforcing service.
    Drop,
    /// Refused by a service in monitor mode: counted, then passed.
    WouldDrop,
    /// Allowed: TCP connection attempts (SYNs) and datagrams.
    Access,
}

impl Kind {
    /// The kind of a map key's `kind` byte, if it is one.
    pub fn from_raw(kind: u8) -> Option<Self> {
        match kind {
            EVENT_DROP => Some(Kind::Drop),
            EVENT_WOULD_DROP => Some(Kind::WouldDrop),
            EVENT_ACCESS => Some(Kind::Access),
            _ => None,
        }
    }

    /// The name used in JSON, tables and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Drop => "drop",
            Kind::WouldDrop => "would_drop",
            Kind::Access => "access",
        }
    }

    /// True for the refusals (dropped or would have been).
    pub const fn is_refusal(self) -> bool {
        matches!(self, Kind::Drop | Kind::WouldDrop)
    }
}

/// One entry's per-CPU values merged, times still on the kernel's clock.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Merged {
    pub packets: u64,
    pub bytes: u64,
    /// Earliest first packet over the CPUs (CLOCK_MONOTONIC nanoseconds).
    pub first_seen_ns: u64,
    /// Latest packet over the CPUs (CLOCK_MONOTONIC nanoseconds).
    pub last_seen_ns: u64,
    /// Destination ports, each once, in the order the CPUs list them.
    pub ports: Vec<u16>,
    pub other_port_packets: u64,
    /// Protocol of each CPU's last packet, each once, the most recent first.
    pub protocols: Vec<u8>,
}

/// Merges the per-CPU values of one entry; `None` when no CPU counted a
/// packet (an entry the kernel made but never filled).
pub fn merge(per_cpu: &[SourceStats]) -> Option<Merged> {
    let mut seen: Vec<&SourceStats> = per_cpu.iter().filter(|s| s.packets > 0).collect();
    if seen.is_empty() {
        return None;
    }
    // Most recent first, so that `protocols` starts with the last packet's.
    seen.sort_by_key(|s| std::cmp::Reverse(s.last_seen_ns));

    let mut merged = Merged {
        first_seen_ns: u64::MAX,
        ..Merged::default()
    };
    for cpu in seen {
        merged.packets = merged.packets.saturating_add(cpu.packets);
        merged.bytes = merged.bytes.saturating_add(cpu.bytes);
        if cpu.first_seen_ns != 0 {
            merged.first_seen_ns = merged.first_seen_ns.min(cpu.first_seen_ns);
        }
        merged.last_seen_ns = merged.last_seen_ns.max(cpu.last_seen_ns);
        let count = usize::from(cpu.port_count).min(cpu.ports.len());
        for &port in &cpu.ports[..count] {
            if !merged.ports.contains(&port) {
                merged.ports.push(port);
            }
        }
        merged.other_port_packets += u64::from(cpu.other_port_packets);
        if cpu.proto != 0 && !merged.protocols.contains(&cpu.proto) {
            merged.protocols.push(cpu.proto);
        }
    }
    if merged.first_seen_ns == u64::MAX {
        merged.first_seen_ns = merged.last_seen_ns;
    }
    Some(merged)
}

/// The source address of a key, or `None` for an unknown family.
pub fn source_addr(key: &SourceKey) -> Option<IpAddr> {
    match key.family {
        FAMILY_V4 => {
            let [a, b, c, d, ..] = key.addr;
            Some(IpAddr::V4(Ipv4Addr::new(a, b, c, d)))
        }
        FAMILY_V6 => Some(IpAddr::V6(Ipv6Addr::from(key.addr))),
        _ => None,
    }
}

/// Name of a port-carrying protocol.
pub fn protocol_name(proto: u8) -> Option<&'static str> {
    match proto {
        PROTO_TCP => Some("tcp"),
        PROTO_UDP => Some("udp"),
        PROTO_SCTP => Some("sctp"),
        _ => None,
    }
}

/// Labels a port the source touched as `proto/port` when the protocol can be
/// told, else as the bare number.
///
/// The key carries no protocol. `protected(proto_idx, port)` says which
/// service protects a (protocol, port) now; when exactly one protocol of
/// `service` protects this port number, that is it. When several do
/// (`tcp/53` and `udp/53`), or none does any more (the configuration
/// changed), the protocols the source's last packets used (`used`) decide
/// if they name exactly one candidate.
pub fn port_label(
    port: u16,
    service: u32,
    used: &[u8],
    mut protected: impl FnMut(u32, u16) -> u32,
) -> String {
    let candidates: Vec<u8> = [PROTO_TCP, PROTO_UDP, PROTO_SCTP]
        .into_iter()
        .filter(|&p| proto_index(p).is_some_and(|idx| protected(idx, port) == service))
        .collect();
    let chosen = match candidates.as_slice() {
        [only] => Some(*only),
        [] => match used {
            [only] => Some(*only),
            _ => None,
        },
        several => {
            let mut both = several.iter().filter(|p| used.contains(p));
            match (both.next(), both.next()) {
                (Some(&only), None) => Some(only),
                _ => None,
            }
        }
    };
    match chosen.and_then(protocol_name) {
        Some(name) => format!("{name}/{port}"),
        None => port.to_string(),
    }
}

/// The kernel's clock and the wall clock read at one moment, to turn the
/// kernel's timestamps (CLOCK_MONOTONIC_COARSE, nanoseconds since boot) into
/// wall-clock times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    pub monotonic_ns: u64,
    pub realtime: SystemTime,
}

impl Clock {
    /// Reads both clocks now.
    pub fn now() -> Self {
        // SAFETY: all-zero is a valid `timespec`.
        let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
        // SAFETY: `ts` is a valid, writable timespec for the whole call;
        // CLOCK_MONOTONIC exists on every Linux.
        let result = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let monotonic_ns = if result == 0 {
            (ts.tv_sec as u64)
                .saturating_mul(1_000_000_000)
                .saturating_add(ts.tv_nsec as u64)
        } else {
            0
        };
        Clock {
            monotonic_ns,
            realtime: SystemTime::now(),
        }
    }

    /// The wall-clock time of a kernel timestamp. A timestamp after the
    /// reading (the coarse clock is never ahead, but be safe) is "now".
    pub fn wall(&self, kernel_ns: u64) -> SystemTime {
        let ago = Duration::from_nanos(self.monotonic_ns.saturating_sub(kernel_ns));
        self.realtime
            .checked_sub(ago)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

/// Identifies a row across refreshes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowKey {
    pub service_id: u32,
    pub kind: Kind,
    pub source: IpAddr,
}

/// One source's totals for one service and kind, over all CPUs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SourceRow {
    pub source: IpAddr,
    pub service: String,
    pub service_id: u32,
    pub kind: Kind,
    pub packets: u64,
    pub bytes: u64,
    #[serde(serialize_with = "rfc3339")]
    pub first_seen: SystemTime,
    #[serde(serialize_with = "rfc3339")]
    pub last_seen: SystemTime,
    /// `proto/port` where the protocol can be told, else the number.
    pub ports: Vec<String>,
    pub other_port_packets: u64,
}

impl SourceRow {
    pub fn key(&self) -> RowKey {
        RowKey {
            service_id: self.service_id,
            kind: self.kind,
            source: self.source,
        }
    }

    /// A row of service 1, `service`, with no bytes or ports, first seen
    /// at the epoch and last seen `last_seen_s` seconds after it.
    #[cfg(test)]
    pub(crate) fn for_test(
        source: IpAddr,
        service: &str,
        kind: Kind,
        packets: u64,
        last_seen_s: u64,
    ) -> Self {
        Self {
            source,
            service: service.to_owned(),
            service_id: 1,
            kind,
            packets,
            bytes: 0,
            first_seen: SystemTime::UNIX_EPOCH,
            last_seen: SystemTime::UNIX_EPOCH + Duration::from_secs(last_seen_s),
            ports: vec![],
            other_port_packets: 0,
        }
    }
}

fn rfc3339<S: Serializer>(at: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_rfc3339_millis(*at))
}

/// The name of a service id, or `#ID` for one no longer named.
pub fn service_label(names: &BTreeMap<u32, String>, id: u32) -> String {
    names.get(&id).cloned().unwrap_or_else(|| format!("#{id}"))
}

/// Turns map entries into rows. Entries with an unknown kind or family, or
/// that counted nothing, are left out.
pub fn build_rows<'a>(
    entries: impl IntoIterator<Item = (SourceKey, &'a [SourceStats])>,
    names: &BTreeMap<u32, String>,
    clock: &Clock,
    mut protected: impl FnMut(u32, u16) -> u32,
) -> Vec<SourceRow> {
    let mut rows = Vec::new();
    for (key, per_cpu) in entries {
        let (Some(kind), Some(source), Some(merged)) =
            (Kind::from_raw(key.kind), source_addr(&key), merge(per_cpu))
        else {
            continue;
        };
        let service_id = u32::from(key.service);
        let Merged {
            packets,
            bytes,
            first_seen_ns,
            last_seen_ns,
            ports,
            other_port_packets,
            protocols,
        } = merged;
        rows.push(SourceRow {
            source,
            service: service_label(names, service_id),
            service_id,
            kind,
            packets,
            bytes,
            first_seen: clock.wall(first_seen_ns),
            last_seen: clock.wall(last_seen_ns),
            ports: ports
                .iter()
                .map(|&port| port_label(port, service_id, &protocols, &mut protected))
                .collect(),
            other_port_packets,
        });
    }
    rows
}

/// Orders rows by packets, most first; ties by the latest last seen, then
/// by service, kind and address, so the order is stable between runs.
pub fn by_packets(a: &SourceRow, b: &SourceRow) -> Ordering {
    b.packets.cmp(&a.packets).then_with(|| by_last_seen(a, b))
}

/// Orders rows by last seen, latest first; ties as in [`by_packets`].
pub fn by_last_seen(a: &SourceRow, b: &SourceRow) -> Ordering {
    b.last_seen
        .cmp(&a.last_seen)
        .then_with(|| a.key().cmp(&b.key()))
}

/// The refusals and the access records seen since `since` before `now`
/// (all when `since` is `None`), each ranked by packets.
pub fn split_and_rank(
    rows: Vec<SourceRow>,
    since: Option<Duration>,
    now: SystemTime,
) -> (Vec<SourceRow>, Vec<SourceRow>) {
    let cutoff = since.and_then(|since| now.checked_sub(since));
    let (mut refusals, mut access): (Vec<_>, Vec<_>) = rows
        .into_iter()
        .filter(|row| cutoff.is_none_or(|cutoff| row.last_seen >= cutoff))
        .partition(|row| row.kind.is_refusal());
    refusals.sort_by(by_packets);
    access.sort_by(by_packets);
    (refusals, access)
}

/// The pinned `SOURCES` map, opened for reading.
pub type SourcesMap = PerCpuArray<MapData, SourceSlot>;

/// Opens the pinned `SOURCES` map.
///
/// # Errors
///
/// When nothing is pinned in `pin_dir` under that name.
pub fn open_sources(pin_dir: &Path) -> anyhow::Result<SourcesMap> {
    bpf::open_map(pin_dir, SOURCES_MAP)
}

/// The pinned maps a sweep reads: `SOURCES`, and `EVENT_LIMITER` for the
/// kernel's count of updates to it.
pub struct SourceTable {
    slots: SourcesMap,
    limiter: PerCpuArray<MapData, EventLimiter>,
}

impl SourceTable {
    /// # Errors
    ///
    /// When either map is not pinned in `pin_dir`.
    pub fn open(pin_dir: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            slots: open_sources(pin_dir)?,
            limiter: bpf::open_map(pin_dir, EVENT_LIMITER_MAP)?,
        })
    }

    /// Packets the kernel accounted in the table so far, over all CPUs:
    /// when it has not moved, neither has the table. One map read, where
    /// reading the table is one per slot.
    ///
    /// # Errors
    ///
    /// When the map cannot be read.
    pub fn updates(&self) -> Result<u64, MapError> {
        let per_cpu = self.limiter.get(&0, 0)?;
        Ok(per_cpu
            .iter()
            .fold(0u64, |sum, cpu| sum.wrapping_add(cpu.table_updates)))
    }

    /// See [`read_per_cpu`].
    ///
    /// # Errors
    ///
    /// When the map cannot be read.
    pub fn read(&self) -> anyhow::Result<HashMap<SourceKey, Vec<SourceStats>>> {
        read_per_cpu(&self.slots)
    }

    /// Clears the entries of `services` on every CPU and returns how many
    /// there were. A table the kernel never wrote is not walked. The kernel
    /// may update a slot between its read and its write here: that slot's
    /// other entries can then lose those few packets.
    ///
    /// # Errors
    ///
    /// When the map cannot be read or written.
    pub fn forget_services(&mut self, services: &BTreeSet<u32>) -> Result<usize, MapError> {
        if self.updates()? == 0 {
            return Ok(0);
        }
        let mut cleared = 0;
        for index in 0..SOURCES_CAPACITY {
            let mut values: Vec<SourceSlot> = self.slots.get(&index, 0)?.iter().copied().collect();
            let mut changed = false;
            for slot in &mut values {
                if slot.key.kind != 0 && services.contains(&u32::from(slot.key.service)) {
                    *slot = SourceSlot::default();
                    changed = true;
                    cleared += 1;
                }
            }
            if changed {
                self.slots.set(index, PerCpuValues::try_from(values)?, 0)?;
            }
        }
        Ok(cleared)
    }
}

/// Every source in `SOURCES` with its per-CPU values (indexed by CPU; a
/// CPU that holds no entry for it has an empty value), not merged: `stats`,
/// `top` and the daemon's sweep all read it through here.
///
/// The kernel updates and replaces entries while they are read, so the
/// result is a close view, not an atomic snapshot.
///
/// # Errors
///
/// When the map cannot be read.
pub fn read_per_cpu(map: &SourcesMap) -> anyhow::Result<HashMap<SourceKey, Vec<SourceStats>>> {
    let mut entries: HashMap<SourceKey, Vec<SourceStats>> = HashMap::new();
    for index in 0..SOURCES_CAPACITY {
        let values = map.get(&index, 0)?;
        gather(&mut entries, &values);
    }
    Ok(entries)
}

/// Adds one slot's per-CPU values to `entries`. A source sits in at most one
/// slot of each CPU's table, so a value is never overwritten (unless the
/// kernel moved the source to the other slot of its set during the walk).
fn gather(entries: &mut HashMap<SourceKey, Vec<SourceStats>>, per_cpu: &[SourceSlot]) {
    for (cpu, slot) in per_cpu.iter().enumerate() {
        if slot.key.kind == 0 {
            continue;
        }
        let values = entries
            .entry(slot.key)
            .or_insert_with(|| vec![SourceStats::default(); per_cpu.len()]);
        values[cpu] = slot.stats;
    }
}

/// The pinned maps `stats` and `top` read, opened once.
pub struct SourcesReader {
    sources: SourcesMap,
    names: Array<MapData, ServiceName>,
    ports: Array<MapData, u32>,
    control: Array<MapData, Control>,
}

impl SourcesReader {
    /// # Errors
    ///
    /// When nothing is pinned in `pin_dir`, or the pins have another layout.
    pub fn open(pin_dir: &Path) -> anyhow::Result<Self> {
        bpf::check_pinned_layout(pin_dir)?;
        Ok(Self {
            sources: open_sources(pin_dir)?,
            names: bpf::open_map(pin_dir, SERVICE_NAMES_MAP)?,
            ports: bpf::open_map(pin_dir, PORTS_MAP)?,
            control: bpf::open_map(pin_dir, CONTROL_MAP)?,
        })
    }

    /// Every tracked source, merged over the CPUs, unordered.
    ///
    /// The kernel updates and evicts entries while they are read, so the
    /// result is a close view, not an atomic snapshot.
    ///
    /// # Errors
    ///
    /// When a map cannot be read.
    pub fn read(&self, clock: &Clock) -> anyhow::Result<Vec<SourceRow>> {
        let names = bpf::read_service_names(&self.names)?;
        let slot = self.control.get(&0, 0)?.active_slot & 1;

        let entries = read_per_cpu(&self.sources)?;

        // Each (protocol, port) is looked up once, not once per row.
        let mut lookups: HashMap<(u32, u16), u32> = HashMap::new();
        let protected = |proto_idx: u32, port: u16| -> u32 {
            *lookups.entry((proto_idx, port)).or_insert_with(|| {
                self.ports
                    .get(&port_index(slot, proto_idx, port), 0)
                    .map(|value| value & PORT_SERVICE_MASK)
                    .unwrap_or(0)
            })
        };
        Ok(build_rows(
            entries
                .iter()
                .map(|(key, values)| (*key, values.as_slice())),
            &names,
            clock,
            protected,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_collects_each_source_from_every_cpu_table_and_skips_empty_slots() {
        let key = |last: u8| SourceKey {
            service: 1,
            kind: EVENT_DROP,
            family: FAMILY_V4,
            addr: [203, 0, 113, last, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        };
        let slot = |key: SourceKey, packets: u64| SourceSlot {
            key,
            _pad: 0,
            stats: SourceStats {
                packets,
                ..SourceStats::default()
            },
        };
        let mut entries = HashMap::new();

        // Slot 7 holds source .1 on CPU 0 and source .2 on CPU 2; CPU 1's is empty.
        gather(
            &mut entries,
            &[slot(key(1), 5), SourceSlot::default(), slot(key(2), 9)],
        );
        // Another slot holds source .1 on CPU 1 (its table placed it elsewhere).
        gather(
            &mut entries,
            &[
                SourceSlot::default(),
                slot(key(1), 3),
                SourceSlot::default(),
            ],
        );

        assert_eq!(entries.len(), 2);
        let one: Vec<u64> = entries[&key(1)].iter().map(|s| s.packets).collect();
        assert_eq!(one, [5, 3, 0]);
        let two: Vec<u64> = entries[&key(2)].iter().map(|s| s.packets).collect();
        assert_eq!(two, [0, 0, 9]);
    }

    fn cpu(packets: u64, first: u64, last: u64, ports: &[u16], proto: u8) -> SourceStats {
        let mut stats = SourceStats {
            packets,
            bytes: packets * 100,
            first_seen_ns: first,
            last_seen_ns: last,
            proto,
            ..SourceStats::default()
        };
        for (slot, &port) in stats.ports.iter_mut().zip(ports) {
            *slot = port;
        }
        stats.port_count = ports.len() as u16;
        stats
    }

    fn key(service: u16, kind: u8, addr: [u8; 4]) -> SourceKey {
        let mut bytes = [0; 16];
        bytes[..4].copy_from_slice(&addr);
        SourceKey {
            service,
            kind,
            family: FAMILY_V4,
            addr: bytes,
        }
    }

    #[test]
    fn merge_sums_counts_and_spans_the_times_of_the_cpus_that_saw_the_source() {
        let values = [
            cpu(3, 5_000, 9_000, &[5353], PROTO_UDP),
            SourceStats::default(),
            cpu(2, 4_000, 12_000, &[8443, 5353], PROTO_TCP),
        ];

        let merged = merge(&values);

        assert_eq!(
            merged,
            Some(Merged {
                packets: 5,
                bytes: 500,
                first_seen_ns: 4_000,
                last_seen_ns: 12_000,
                // The most recent CPU's ports first.
                ports: vec![8443, 5353],
                other_port_packets: 0,
                protocols: vec![PROTO_TCP, PROTO_UDP],
            })
        );
    }

    #[test]
    fn a_cpu_with_no_packets_is_ignored_even_with_stale_times() {
        let stale = SourceStats {
            first_seen_ns: 1,
            last_seen_ns: 99_999,
            ..SourceStats::default()
        };
        let values = [stale, cpu(1, 50, 50, &[22], PROTO_TCP)];

        let merged = merge(&values).unwrap_or_default();

        assert_eq!(merged.first_seen_ns, 50);
        assert_eq!(merged.last_seen_ns, 50);
        assert_eq!(merged.packets, 1);
        assert_eq!(merge(&[SourceStats::default(); 4]), None);
    }

    #[test]
    fn other_port_packets_add_up_and_port_count_is_clamped() {
        let mut full = cpu(20, 1, 2, &[1, 2, 3, 4, 5, 6, 7, 8], PROTO_UDP);
        full.other_port_packets = 7;
        full.port_count = 200; // corrupt: must not read past the array
        let mut other = cpu(4, 1, 3, &[9], PROTO_UDP);
        other.other_port_packets = 1;

        let merged = merge(&[full, other]).unwrap_or_default();

        assert_eq!(merged.other_port_packets, 8);
        assert_eq!(merged.ports, vec![9, 1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn ports_are_labelled_with_the_protocol_the_service_protects() {
        // Service 1 protects udp/5353, tcp/8443, and both tcp/53 and udp/53.
        let protected = |idx: u32, port: u16| match (idx, port) {
            (1, 5353) | (0, 8443) | (0, 53) | (1, 53) => 1,
            (0, 22) => 2,
            _ => 0,
        };

        assert_eq!(port_label(5353, 1, &[PROTO_TCP], protected), "udp/5353");
        assert_eq!(port_label(8443, 1, &[], protected), "tcp/8443");
        // Ambiguous: the protocol the source used decides...
        assert_eq!(port_label(53, 1, &[PROTO_UDP], protected), "udp/53");
        // ...unless it used both, or none is known.
        assert_eq!(port_label(53, 1, &[PROTO_UDP, PROTO_TCP], protected), "53");
        assert_eq!(port_label(53, 1, &[], protected), "53");
        // Another service's port: no longer protected by this one.
        assert_eq!(port_label(22, 1, &[PROTO_TCP], protected), "tcp/22");
        assert_eq!(port_label(22, 1, &[PROTO_TCP, PROTO_UDP], protected), "22");
    }

    #[test]
    fn kernel_times_become_wall_clock_times() {
        let realtime = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let clock = Clock {
            monotonic_ns: 50_000_000_000,
            realtime,
        };

        assert_eq!(
            clock.wall(45_000_000_000),
            realtime - Duration::from_secs(5)
        );
        assert_eq!(clock.wall(50_000_000_000), realtime);
        assert_eq!(clock.wall(60_000_000_000), realtime, "never in the future");
        assert_eq!(clock.wall(0), realtime - Duration::from_secs(50));
    }

    #[test]
    fn the_clock_reads_a_plausible_monotonic_time() {
        let clock = Clock::now();

        assert!(clock.monotonic_ns > 0);
        assert!(clock.realtime > SystemTime::UNIX_EPOCH);
    }

    #[test]
    fn rows_name_service_kind_and_source_and_skip_junk() {
        let names = BTreeMap::from([(1, "dns".to_owned())]);
        let clock = Clock {
            monotonic_ns: 10_000_000_000,
            realtime: SystemTime::UNIX_EPOCH + Duration::from_secs(100),
        };
        let seen = [cpu(4, 2_000_000_000, 9_000_000_000, &[5353], PROTO_UDP)];
        let mut v6 = key(7, EVENT_WOULD_DROP, [0; 4]);
        v6.family = FAMILY_V6;
        v6.addr = "2001:db8::9"
            .parse::<Ipv6Addr>()
            .unwrap_or(Ipv6Addr::UNSPECIFIED)
            .octets();
        let mut bad_family = key(1, EVENT_DROP, [1, 2, 3, 4]);
        bad_family.family = 5;
        let entries = [
            (key(1, EVENT_DROP, [198, 51, 100, 2]), &seen[..]),
            (v6, &seen[..]),
            (bad_family, &seen[..]),
            (key(1, 9, [1, 2, 3, 4]), &seen[..]),
            (
                key(1, EVENT_ACCESS, [1, 2, 3, 4]),
                &[SourceStats::default()][..],
            ),
        ];

        let rows = build_rows(entries, &names, &clock, |idx, port| {
            u32::from(idx == 1 && port == 5353)
        });

        assert_eq!(rows.len(), 2, "{rows:?}");
        let first = &rows[0];
        assert_eq!(first.source, IpAddr::from([198, 51, 100, 2]));
        assert_eq!(first.service, "dns");
        assert_eq!(first.kind, Kind::Drop);
        assert_eq!(first.packets, 4);
        assert_eq!(first.ports, vec!["udp/5353"]);
        assert_eq!(
            first.first_seen,
            SystemTime::UNIX_EPOCH + Duration::from_secs(92)
        );
        assert_eq!(
            first.last_seen,
            SystemTime::UNIX_EPOCH + Duration::from_secs(99)
        );
        let second = &rows[1];
        assert_eq!(second.source.to_string(), "2001:db8::9");
        assert_eq!(second.service, "#7");
        assert_eq!(second.kind, Kind::WouldDrop);
        assert_eq!(
            second.ports,
            vec!["udp/5353"],
            "the source's protocol decides"
        );
    }

    fn row(source: [u8; 4], kind: Kind, packets: u64, last_seen_s: u64) -> SourceRow {
        SourceRow::for_test(IpAddr::from(source), "svc", kind, packets, last_seen_s)
    }

    #[test]
    fn refusals_and_access_are_split_filtered_by_since_and_ranked() {
        let rows = vec![
            row([10, 0, 0, 1], Kind::Drop, 5, 100),
            row([10, 0, 0, 2], Kind::WouldDrop, 50, 990),
            row([10, 0, 0, 3], Kind::Drop, 50, 995),
            row([10, 0, 0, 4], Kind::Access, 7, 999),
            row([10, 0, 0, 5], Kind::Drop, 900, 10),
        ];
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);

        let (refusals, access) = split_and_rank(rows.clone(), None, now);
        let order: Vec<String> = refusals.iter().map(|r| r.source.to_string()).collect();
        assert_eq!(order, ["10.0.0.5", "10.0.0.3", "10.0.0.2", "10.0.0.1"]);
        assert_eq!(access.len(), 1);

        let (recent, access) = split_and_rank(rows, Some(Duration::from_secs(60)), now);
        let order: Vec<String> = recent.iter().map(|r| r.source.to_string()).collect();
        assert_eq!(
            order,
            ["10.0.0.3", "10.0.0.2"],
            "older than a minute left out"
        );
        assert_eq!(access[0].source.to_string(), "10.0.0.4");
    }

    #[test]
    fn rows_serialize_with_stable_field_names() {
        let mut r = row([198, 51, 100, 2], Kind::WouldDrop, 3, 5);
        r.ports = vec!["udp/5353".to_owned()];

        let json = serde_json::to_value(&r).unwrap_or_default();

        assert_eq!(json["source"], "198.51.100.2");
        assert_eq!(json["kind"], "would_drop");
        assert_eq!(json["packets"], 3);
        assert_eq!(json["last_seen"], "1970-01-01T00:00:05.000Z");
        assert_eq!(json["ports"][0], "udp/5353");
    }
}
