//! The daemon's reader of the kernel's source events: drains the ring
//! buffer, turns each event into an [`Observation`] in wall-clock time,
//! feeds the alert [`Engine`] and hands what it finds to the [`Sink`].

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Arc, Mutex},
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::watch};
use xdp_allowlist_common::{SourceEvent, EVENT_ACCESS, EVENT_DROP, EVENT_WOULD_DROP, FAMILY_V4};

use crate::{
    alerts::{self, sink::Sink, AlertGauges, Engine, Observation, ObservationKind},
    config::{AlertSettings, Protocol},
};

/// How often the ring is drained even without a wake-up: the kernel
/// submits without waking the reader until the ring is an eighth full.
const DRAIN_INTERVAL: Duration = Duration::from_millis(200);

/// How often alert conditions are checked for their end.
const TICK_INTERVAL: Duration = Duration::from_secs(1);

/// Reads source events, feeds the alert engine and sends what it finds to
/// the log, the alert file and the alert command. The kernel already limits
/// how many events are sent; counters hold the full numbers.
pub async fn stream_events(
    ring: RingBuf<MapData>,
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
                let records = drain_ring(guard.get_inner_mut(), &names, &mut engine);
                guard.clear_ready();
                records
            }
            _ = drain.tick() => drain_ring(fd.get_mut(), &names, &mut engine),
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

/// Reads the records in the ring and feeds them to the engine.
fn drain_ring(
    ring: &mut RingBuf<MapData>,
    names: &Mutex<BTreeMap<u32, String>>,
    engine: &mut Engine,
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
        let service = names
            .lock()
            .ok()
            .and_then(|n| n.get(&event.service).cloned())
            .unwrap_or_else(|| format!("#{}", event.service));
        log_event(&event, &service);
        if let Some(observation) = observe(&event, service, &clock) {
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

/// An event as the alert engine takes it; `None` for a protocol without
/// ports, which the kernel never tracks.
fn observe(event: &SourceEvent, service: String, clock: &Clock) -> Option<Observation> {
    let kind = match event.kind {
        EVENT_DROP => ObservationKind::Drop,
        EVENT_WOULD_DROP => ObservationKind::WouldDrop,
        EVENT_ACCESS => ObservationKind::Access,
        _ => return None,
    };
    let count = usize::from(event.port_count).min(event.ports.len());
    Some(Observation {
        time: clock.wall(event.ts_ns),
        kind,
        service,
        source: event_source(event),
        protocol: Protocol::from_number(event.proto)?,
        port: event.port,
        ports: event.ports[..count].to_vec(),
        packets: event.packets,
        first_seen: clock.wall(event.first_seen_ns),
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
