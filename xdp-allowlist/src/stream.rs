//! The daemon's reader of the kernel's source events: drains the ring
//! buffer, turns each event into an [`Observation`] in wall-clock time,
//! feeds the alert [`Engine`] and hands what it finds to the [`Sink`].
//!
//! It also sweeps the pinned `SOURCES` map every `summary_interval` (kept
//! between one and ten seconds) and feeds the engine what the events did not report,
//! such as the rest of a burst that ended within one interval; see
//! [`crate::sweep`] for how nothing is counted twice.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::watch};
use xdp_allowlist_common::{SourceEvent, EVENT_ACCESS, EVENT_DROP, EVENT_WOULD_DROP, FAMILY_V4};

use crate::{
    alerts::{self, sink::Sink, AlertGauges, Engine, Observation, ObservationKind},
    config::{AlertSettings, Protocol},
    sources::{self, SourceTable},
    sweep::{Accounting, SweepDelta},
};

/// How often the ring is drained even without a wake-up: the kernel
/// submits without waking the reader until the ring is an eighth full.
const DRAIN_INTERVAL: Duration = Duration::from_millis(200);

/// How often alert conditions are checked for their end.
const TICK_INTERVAL: Duration = Duration::from_secs(1);

/// Least time between two sweeps of the `SOURCES` map.
const MIN_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Most time between two sweeps (unless a sweep is slow, see
/// [`SWEEP_COST_FACTOR`]): with a long `summary_interval`, bursts still
/// reach the alerts within seconds.
const MAX_SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// A sweep waits at least this many times as long as the last one took, so
/// that sweeping never takes more than a tenth of one CPU.
const SWEEP_COST_FACTOR: u32 = 10;

/// Time until the next sweep: the kernel's summary interval (a source that
/// keeps sending is reported by then anyway) within one and ten seconds,
/// and at least ten times what the last sweep took.
///
/// Measured on the 2-core test VM (root test
/// `a_sweep_of_a_full_source_map_counts_each_packet_once`, a debug build):
/// reading the map, 16,384 slots with 2 CPU values each, takes about 35 ms
/// whatever it holds (one lookup per slot), and accounting a full map the
/// first time about 20 ms, so a sweep costs at most about 5 % of one CPU at
/// the one-second floor, and the cost bound only stretches the period on
/// much slower or much larger machines. A sweep that finds the kernel's
/// update count unchanged reads nothing.
fn sweep_interval(settings: &AlertSettings, last_took: Duration) -> Duration {
    settings
        .summary_interval
        .clamp(MIN_SWEEP_INTERVAL, MAX_SWEEP_INTERVAL)
        .max(last_took.saturating_mul(SWEEP_COST_FACTOR))
}

/// Reads source events, feeds the alert engine and sends what it finds to
/// the log, the alert file and the alert command. The kernel already limits
/// how many events are sent; counters hold the full numbers.
///
/// `sources` is the pinned `SOURCES` map to sweep, with what it held when
/// the daemon started (see [`SourceSweep::start`]); without it only events
/// reach the alerts.
pub async fn stream_events(
    ring: RingBuf<MapData>,
    sources: Option<SourceSweep>,
    names: Arc<Mutex<BTreeMap<u32, String>>>,
    mut settings: watch::Receiver<AlertSettings>,
    gauges: Arc<AlertGauges>,
) {
    // SAFETY: the ring buffer's fd is owned by the `RingBuf` moved into the
    // AsyncFd and stays open for as long as the AsyncFd exists.
    let mut fd = match unsafe { AsyncFd::register(ring) } {
        Ok(fd) => fd,
        Err(err) => {
            tracing::error!(error = %err, "cannot poll the source-event ring buffer; drops are still counted");
            return;
        }
    };
    let mut engine = Engine::new(settings.borrow().clone());
    let mut sink = Sink::new(&settings.borrow(), Arc::clone(&gauges));
    let mut drain = tokio::time::interval(DRAIN_INTERVAL);
    drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tick = tokio::time::interval(TICK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut settings_open = true;

    let mut sweeper = sources;
    let mut next_sweep = tokio::time::Instant::now()
        + sweep_interval(
            &settings.borrow(),
            sweeper.as_ref().map_or(Duration::ZERO, |s| s.took),
        );

    loop {
        let records = tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = match guard {
                    Ok(guard) => guard,
                    Err(err) => {
                        tracing::error!(error = %err, "source-event ring buffer failed");
                        return;
                    }
                };
                let accounting = sweeper.as_mut().map(|s| &mut s.accounting);
                let records = drain_ring(guard.get_inner_mut(), &names, &mut engine, accounting);
                guard.clear_ready();
                records
            }
            _ = drain.tick() => {
                let accounting = sweeper.as_mut().map(|s| &mut s.accounting);
                drain_ring(fd.get_mut(), &names, &mut engine, accounting)
            }
            _ = tokio::time::sleep_until(next_sweep), if sweeper.is_some() => {
                let Some(sweeper) = sweeper.as_mut() else { continue };
                // The ring first, then the walk, and no event until the
                // walk's values are applied (see `crate::sweep`).
                let mut records = drain_ring(fd.get_mut(), &names, &mut engine, Some(&mut sweeper.accounting));
                if let Some(swept) = sweeper.sweep().await {
                    tracing::debug!(
                        entries = ?swept.entries,
                        values_with_news = swept.deltas.len(),
                        remembered = sweeper.accounting.len(),
                        took_ms = sweeper.took.as_millis() as u64,
                        "swept the source map"
                    );
                    records.extend(apply_sweep(&swept.deltas, &names, &mut engine));
                }
                next_sweep = tokio::time::Instant::now() + sweep_interval(&settings.borrow(), sweeper.took);
                records
            }
            _ = tick.tick() => engine.tick(std::time::SystemTime::now()),
            changed = settings.changed(), if settings_open => {
                if changed.is_ok() {
                    let next = settings.borrow_and_update().clone();
                    sink.set_settings(&next);
                    engine.set_settings(next);
                } else {
                    settings_open = false;
                }
                Vec::new()
            }
        };
        sink.emit(&records);
        gauges.update(&engine);
    }
}

/// Most records taken in one drain: twice what the ring holds, so that a
/// kernel refilling it as fast as it is read cannot keep the task here.
const MAX_PER_DRAIN: usize =
    2 * xdp_allowlist_common::EVENTS_RING_BYTES as usize / std::mem::size_of::<SourceEvent>();

/// What one sweep found.
struct Swept {
    /// Entries in the map; `None` when the kernel had not touched it since
    /// the last read, which was then not repeated.
    entries: Option<usize>,
    deltas: Vec<SweepDelta>,
}

/// The `SOURCES` map and where its sweeps stand.
pub struct SourceSweep {
    table: Arc<SourceTable>,
    /// What the events and sweeps counted so far, per source and CPU.
    accounting: Accounting,
    /// The next sweep only records what the map holds (after a failed one).
    baseline: bool,
    /// The kernel's update count when the map was last read: while it stands
    /// still the map is not read again (an idle host costs one map lookup
    /// per sweep).
    read_at: Option<u64>,
    /// What the last sweep took, the walk and the accounting together.
    took: Duration,
}

impl SourceSweep {
    /// Records what the map holds now, before the daemon attaches the filter
    /// (or adopts it): those counts are no news, and every packet the
    /// filter judges from here on is. Taken later, packets that arrived in
    /// between would pass for old ones and never reach the alerts.
    ///
    /// # Errors
    ///
    /// When the map cannot be read.
    pub fn start(table: SourceTable) -> anyhow::Result<Self> {
        let started = Instant::now();
        let updates = table.updates()?;
        let mut accounting = Accounting::new();
        // A table the kernel never wrote (a fresh load) holds nothing.
        if updates != 0 {
            accounting.baseline(&table.read()?);
        }
        Ok(Self {
            table: Arc::new(table),
            accounting,
            baseline: false,
            read_at: Some(updates),
            took: started.elapsed(),
        })
    }

    /// Reads every value of the map and accounts it, on a blocking thread,
    /// off the executor: a full map takes tens of milliseconds (see
    /// [`sweep_interval`]). `None` (logged) when the map cannot be read; if
    /// the thread failed, the accounting is lost and the next sweep must be
    /// a baseline again.
    async fn sweep(&mut self) -> Option<Swept> {
        let table = Arc::clone(&self.table);
        let mut owned = std::mem::take(&mut self.accounting);
        let only_record = self.baseline;
        let unchanged_at = self.read_at;
        let joined = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let result = table
                .updates()
                .map_err(anyhow::Error::from)
                .and_then(|updates| {
                    if !only_record && unchanged_at == Some(updates) {
                        return Ok((updates, None));
                    }
                    let entries = table.read()?;
                    let deltas = if only_record {
                        owned.baseline(&entries);
                        Vec::new()
                    } else {
                        owned.sweep(&entries)
                    };
                    Ok((updates, Some((entries.len(), deltas))))
                });
            (owned, result, started.elapsed())
        })
        .await;
        match joined {
            Ok((owned, Ok((updates, found)), took)) => {
                self.accounting = owned;
                self.baseline = false;
                self.read_at = Some(updates);
                self.took = took;
                let (entries, deltas) = match found {
                    Some((entries, deltas)) => (Some(entries), deltas),
                    None => (None, Vec::new()),
                };
                Some(Swept { entries, deltas })
            }
            Ok((owned, Err(err), _)) => {
                self.accounting = owned;
                self.read_at = None;
                tracing::warn!(error = %format!("{err:#}"), "cannot read the source map; alerts see only events until the next sweep");
                None
            }
            Err(err) => {
                self.baseline = true;
                self.read_at = None;
                tracing::warn!(error = %err, "the source-map sweep failed; the next one starts afresh");
                None
            }
        }
    }
}

/// The name of a service id, or `#ID`.
fn service_name(names: &Mutex<BTreeMap<u32, String>>, id: u32) -> String {
    names
        .lock()
        .ok()
        .and_then(|n| n.get(&id).cloned())
        .unwrap_or_else(|| format!("#{id}"))
}

/// Feeds what a sweep found to the engine.
fn apply_sweep(
    deltas: &[SweepDelta],
    names: &Mutex<BTreeMap<u32, String>>,
    engine: &mut Engine,
) -> Vec<alerts::Record> {
    let clock = Clock::now();
    let mut records = Vec::new();
    for delta in deltas {
        let service = service_name(names, u32::from(delta.slot.key.service));
        if let Some(observation) = sweep_observation(delta, service, &clock) {
            records.extend(engine.observe(&observation));
        }
    }
    records
}

/// Reads the records in the ring and feeds them to the engine.
fn drain_ring(
    ring: &mut RingBuf<MapData>,
    names: &Mutex<BTreeMap<u32, String>>,
    engine: &mut Engine,
    mut accounting: Option<&mut Accounting>,
) -> Vec<alerts::Record> {
    let clock = Clock::now();
    let mut records = Vec::new();
    for _ in 0..MAX_PER_DRAIN {
        let Some(item) = ring.next() else {
            break;
        };
        let Some(event) = decode_event(&item) else {
            continue;
        };
        let service = service_name(names, event.service);
        log_event(&event, &service);
        // Without a sweep, nothing else counts the packets: the event's
        // own delta is the news (and nothing is remembered per source).
        let packets = match accounting.as_deref_mut() {
            Some(accounting) => accounting.event(&event),
            None => event.packets,
        };
        if let Some(observation) = observe(&event, packets, service, &clock) {
            records.extend(engine.observe(&observation));
        }
    }
    records
}

/// The kernel's coarse monotonic clock mapped to the wall clock, read once
/// per drain: the offset moves only when the wall clock is set.
struct Clock {
    monotonic_ns: u64,
    wall: std::time::SystemTime,
}

impl Clock {
    fn now() -> Self {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec for the duration of the
        // call; CLOCK_MONOTONIC always exists on Linux.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        Self {
            monotonic_ns: (ts.tv_sec as u64)
                .saturating_mul(1_000_000_000)
                .saturating_add(ts.tv_nsec as u64),
            wall: std::time::SystemTime::now(),
        }
    }

    /// Wall-clock time of a kernel timestamp (0: unknown, taken as now).
    fn wall(&self, kernel_ns: u64) -> std::time::SystemTime {
        if kernel_ns == 0 {
            return self.wall;
        }
        if kernel_ns >= self.monotonic_ns {
            self.wall + Duration::from_nanos(kernel_ns - self.monotonic_ns)
        } else {
            self.wall
                .checked_sub(Duration::from_nanos(self.monotonic_ns - kernel_ns))
                .unwrap_or(self.wall)
        }
    }
}

/// The observation kind of an event's or a key's `kind` byte.
fn observation_kind(kind: u8) -> Option<ObservationKind> {
    match kind {
        EVENT_DROP => Some(ObservationKind::Drop),
        EVENT_WOULD_DROP => Some(ObservationKind::WouldDrop),
        EVENT_ACCESS => Some(ObservationKind::Access),
        _ => None,
    }
}

/// An event as the alert engine takes it, with the `packets` not counted
/// yet ([`Accounting::event`]); `None` for a protocol without ports, which
/// the kernel never tracks, and for access whose packets a sweep already
/// reported. A refusal whose packets were counted still brings its ports.
fn observe(
    event: &SourceEvent,
    packets: u64,
    service: String,
    clock: &Clock,
) -> Option<Observation> {
    let kind = observation_kind(event.kind)?;
    if kind == ObservationKind::Access && packets == 0 {
        return None;
    }
    let count = usize::from(event.port_count).min(event.ports.len());
    Some(Observation {
        time: clock.wall(event.ts_ns),
        kind,
        service,
        source: event_source(event),
        protocol: Protocol::from_number(event.proto)?,
        port: event.port,
        ports: event.ports[..count].to_vec(),
        packets,
        first_seen: clock.wall(event.first_seen_ns),
    })
}

/// What a sweep found, as the alert engine takes it: the packets no event
/// reported, with the value's ports (so a scan is seen from sweeps too).
///
/// Its time is the value's last packet, on the wall clock, not the moment
/// of the sweep: the uncounted packets arrived by then, so windows, the
/// alert's `time` and the end of an episode stay tied to the traffic, as
/// they are for events (which carry the kernel's time). The port is the
/// last one the value lists, the most recently first-touched one.
fn sweep_observation(delta: &SweepDelta, service: String, clock: &Clock) -> Option<Observation> {
    let stats = &delta.stats;
    let count = usize::from(stats.port_count).min(stats.ports.len());
    let ports = stats.ports[..count].to_vec();
    Some(Observation {
        time: clock.wall(stats.last_seen_ns),
        kind: observation_kind(delta.slot.key.kind)?,
        service,
        source: sources::source_addr(&delta.slot.key)?,
        protocol: Protocol::from_number(stats.proto)?,
        port: *ports.last()?,
        ports,
        packets: delta.packets,
        first_seen: clock.wall(stats.first_seen_ns),
    })
}

/// Copies a [`SourceEvent`] out of a ring-buffer record.
pub fn decode_event(bytes: &[u8]) -> Option<SourceEvent> {
    if bytes.len() < std::mem::size_of::<SourceEvent>() {
        return None;
    }
    // SAFETY: the record holds at least size_of::<SourceEvent>() bytes and
    // SourceEvent is plain data (every bit pattern valid); read_unaligned
    // has no alignment requirement.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<SourceEvent>()) })
}

/// The source address of an event.
pub fn event_source(event: &SourceEvent) -> IpAddr {
    if event.family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(
            event.addr[0],
            event.addr[1],
            event.addr[2],
            event.addr[3],
        ))
    } else {
        IpAddr::V6(Ipv6Addr::from(event.addr))
    }
}

/// Each event at debug level only: alerts and access records are the
/// news worth reading.
fn log_event(event: &SourceEvent, service: &str) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let source = event_source(event);
    let protocol = Protocol::from_number(event.proto)
        .map(Protocol::name)
        .unwrap_or("?");
    let what = match event.kind {
        EVENT_WOULD_DROP => "would drop (monitor mode)",
        EVENT_ACCESS => "allowed",
        _ => "dropped",
    };
    tracing::debug!(
        src = %source,
        service,
        port = %format!("{protocol}/{}", event.port),
        packets = event.packets,
        why = event.why,
        "{what}"
    );
}

#[cfg(test)]
mod tests {
    use xdp_allowlist_common::{SourceKey, SourceStats, PROTO_TCP, PROTO_UDP};

    use super::*;
    use crate::sweep::Slot;

    fn clock() -> Clock {
        Clock {
            monotonic_ns: 10_000_000_000,
            wall: std::time::UNIX_EPOCH + Duration::from_secs(1_000),
        }
    }

    #[test]
    fn sweeps_follow_the_summary_interval_within_bounds_and_their_own_cost() {
        let mut settings = AlertSettings {
            summary_interval: Duration::from_secs(2),
            ..AlertSettings::default()
        };
        assert_eq!(
            sweep_interval(&settings, Duration::ZERO),
            Duration::from_secs(2)
        );

        settings.summary_interval = Duration::from_millis(100);
        assert_eq!(
            sweep_interval(&settings, Duration::ZERO),
            Duration::from_secs(1)
        );
        settings.summary_interval = Duration::from_secs(3_600);
        assert_eq!(
            sweep_interval(&settings, Duration::ZERO),
            Duration::from_secs(10)
        );

        // A slow sweep stretches the period: at most a tenth of one CPU.
        settings.summary_interval = Duration::from_secs(1);
        assert_eq!(
            sweep_interval(&settings, Duration::from_millis(300)),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn a_sweep_delta_becomes_an_observation_at_the_last_packet() {
        let mut addr = [0; 16];
        addr[..4].copy_from_slice(&[198, 51, 100, 2]);
        let key = SourceKey {
            service: 3,
            kind: EVENT_DROP,
            family: FAMILY_V4,
            addr,
        };
        let mut stats = SourceStats {
            packets: 40,
            first_seen_ns: 7_000_000_000,
            last_seen_ns: 8_000_000_000,
            port_count: 2,
            proto: PROTO_UDP,
            ..SourceStats::default()
        };
        stats.ports[..2].copy_from_slice(&[5353, 53]);
        let delta = SweepDelta {
            slot: Slot { key, cpu: 1 },
            packets: 39,
            stats,
        };

        let obs = sweep_observation(&delta, "dns".to_owned(), &clock())
            .unwrap_or_else(|| panic!("a drop with ports is observed"));

        assert_eq!(obs.kind, ObservationKind::Drop);
        assert_eq!(obs.source, IpAddr::from([198, 51, 100, 2]));
        assert_eq!(obs.service, "dns");
        assert_eq!(obs.protocol, Protocol::Udp);
        assert_eq!(obs.packets, 39);
        assert_eq!(obs.ports, [5353, 53]);
        assert_eq!(obs.port, 53);
        assert_eq!(obs.time, std::time::UNIX_EPOCH + Duration::from_secs(998));
        assert_eq!(
            obs.first_seen,
            std::time::UNIX_EPOCH + Duration::from_secs(997)
        );

        // No protocol with ports, or no port at all: nothing to observe.
        let mut odd = delta;
        odd.stats.proto = 1;
        assert!(sweep_observation(&odd, "dns".to_owned(), &clock()).is_none());
        let mut odd = delta;
        odd.stats.port_count = 0;
        assert!(sweep_observation(&odd, "dns".to_owned(), &clock()).is_none());
    }

    #[test]
    fn an_event_a_sweep_already_counted_brings_ports_but_no_access_record() {
        let event = SourceEvent {
            kind: EVENT_DROP,
            proto: PROTO_TCP,
            port: 22,
            port_count: 1,
            ports: [22, 0, 0, 0, 0, 0, 0, 0],
            packets: 5,
            ..SourceEvent::default()
        };

        let obs = observe(&event, 0, "admin".to_owned(), &clock());
        assert_eq!(obs.map(|o| (o.packets, o.ports)), Some((0, vec![22])));

        let access = SourceEvent {
            kind: EVENT_ACCESS,
            ..event
        };
        assert!(observe(&access, 0, "admin".to_owned(), &clock()).is_none());
        assert_eq!(
            observe(&access, 2, "admin".to_owned(), &clock()).map(|o| o.packets),
            Some(2)
        );
    }
}
