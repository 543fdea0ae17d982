//! Probing alerts and access records, from the kernel's source events.
//!
//! The kernel sends an event only when it has news about a source (its first
//! packet, a port it had not touched, or a summary once per interval with the
//! packets since the last one); the daemon's sweep of the source table adds
//! what the events left out (see [`crate::sweep`]). [`Engine`] turns those
//! observations into:
//!
//! - **alerts**, raised once per episode and ended once the condition has
//!   been false for a whole window:
//!   - `source`: one source was refused `source_drops` times within the window;
//!   - `prefix`: one /24 (IPv4) or /64 (IPv6) was refused `prefix_drops`
//!     times within the window, however many addresses it rotated through;
//!   - `scan`: one refused source touched `scan_ports` distinct protected
//!     ports within the window;
//! - **access records**: an allowed source opened connections (TCP SYNs) or
//!   sent datagrams to a protected port.
//!
//! The engine is pure: no clock, no I/O. Time comes in with each observation
//! and with [`Engine::tick`], so it is tested without root or kernel. Its
//! memory is bounded: at most `capacity` sources and as many prefixes are
//! tracked; past that the least recently seen are forgotten and counted.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::IpAddr,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use ipnet::IpNet;
use serde::Serialize;

use crate::config::{AlertSettings, Protocol};

pub mod sink;

/// Sources (and, separately, prefixes) tracked at most by default.
pub const DEFAULT_CAPACITY: usize = 65_536;

/// Buckets a sliding window is cut into: counts are exact to within one
/// bucket (a sixteenth of the window).
const BUCKETS: u64 = 16;

/// Distinct ports and services remembered per source or prefix; also the
/// largest `scan_ports` the configuration takes.
pub const MAX_PORTS: usize = 256;
const MAX_SERVICES: usize = 32;

/// What the kernel saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObservationKind {
    /// Refused and dropped.
    Drop,
    /// Refused by a service in monitor mode: counted, then passed.
    WouldDrop,
    /// An allowed source reached a protected port.
    Access,
}

/// One source event, in wall-clock time and with the service named.
#[derive(Clone, Debug)]
pub struct Observation {
    pub time: SystemTime,
    pub kind: ObservationKind,
    pub service: String,
    pub source: IpAddr,
    pub protocol: Protocol,
    /// The port of the packet that triggered the event.
    pub port: u16,
    /// Distinct ports the kernel has seen from this source since
    /// `first_seen` (on one CPU, at most eight).
    pub ports: Vec<u16>,
    /// Packets not counted before: since the previous event or sweep
    /// about this source (on that CPU).
    pub packets: u64,
    pub first_seen: SystemTime,
}

/// The three alerts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertKind {
    Source,
    Prefix,
    Scan,
}

impl AlertKind {
    pub const ALL: [AlertKind; 3] = [AlertKind::Source, AlertKind::Prefix, AlertKind::Scan];

    pub const fn name(self) -> &'static str {
        match self {
            AlertKind::Source => "source",
            AlertKind::Prefix => "prefix",
            AlertKind::Scan => "scan",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// Whether an alert starts or ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Firing,
    Ended,
}

/// An alert as logged, written to the file and given to the command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AlertRecord {
    pub alert: AlertKind,
    pub state: AlertState,
    /// The source address, or the prefix in CIDR form for `prefix` alerts.
    pub source: String,
    pub services: Vec<String>,
    /// Protected ports touched within the window, like `tcp/22`.
    pub ports: Vec<String>,
    /// Drops (and would-drops) within the window when the record was made.
    pub drops: u64,
    /// Drops counted from the start of the episode to its end (`ended` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub episode_drops: Option<u64>,
    pub window_seconds: u64,
    pub first_seen: String,
    pub last_seen: String,
    pub time: String,
}

/// An allowed source reaching a protected port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AccessRecord {
    pub service: String,
    pub source: String,
    pub protocol: Protocol,
    pub port: u16,
    /// Packets since the last record about this source (for TCP, SYNs).
    pub packets: u64,
    /// Connection attempts since the last record (TCP only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<u64>,
    pub first_seen: String,
    pub time: String,
}

/// One line of the JSON-lines file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Record {
    Alert(AlertRecord),
    Access(AccessRecord),
}

/// Alerts firing now, and what the engine had to leave out; shared with
/// the metrics thread.
#[derive(Debug, Default)]
pub struct AlertGauges {
    active: [AtomicU64; 3],
    /// Sources and prefixes forgotten because the tables were full.
    pub evicted: AtomicU64,
    /// Alert commands not run because too many were still running.
    pub commands_skipped: AtomicU64,
}

impl AlertGauges {
    pub fn active(&self, kind: AlertKind) -> u64 {
        self.active[kind.index()].load(Ordering::Relaxed)
    }

    /// Copies the engine's counts.
    pub fn update(&self, engine: &Engine) {
        for kind in AlertKind::ALL {
            self.active[kind.index()].store(engine.active(kind) as u64, Ordering::Relaxed);
        }
        self.evicted.store(engine.evicted(), Ordering::Relaxed);
    }
}

/// The bucket a time falls in, and the window it counts over. Buckets are
/// kept by their start time, not their number, so that counts taken under
/// one window stay comparable after a reload changes it.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    start_ms: u64,
    window_ms: u64,
}

/// A count over a sliding window, kept in [`BUCKETS`] buckets.
#[derive(Clone, Debug, Default)]
struct WindowCounter {
    /// (bucket start in ms since the epoch, count), oldest first.
    buckets: VecDeque<(u64, u64)>,
}

impl WindowCounter {
    fn add(&mut self, bucket: Bucket, count: u64) {
        match self.buckets.back_mut() {
            Some((b, c)) if *b == bucket.start_ms => *c = c.saturating_add(count),
            // Observations arrive in about time order; one a little late is
            // counted in the current bucket rather than reordered.
            Some((b, c)) if *b > bucket.start_ms => *c = c.saturating_add(count),
            _ => self.buckets.push_back((bucket.start_ms, count)),
        }
        let latest = self.buckets.back().map_or(0, |(b, _)| *b);
        self.prune(Bucket {
            start_ms: bucket.start_ms.max(latest),
            ..bucket
        });
    }

    fn prune(&mut self, bucket: Bucket) {
        while self
            .buckets
            .front()
            .is_some_and(|(b, _)| b + bucket.window_ms <= bucket.start_ms)
        {
            self.buckets.pop_front();
        }
    }

    fn total(&mut self, bucket: Bucket) -> u64 {
        self.prune(bucket);
        self.buckets.iter().map(|(_, c)| c).sum()
    }
}

/// One alert's episode on one source or prefix.
#[derive(Clone, Copy, Debug, Default)]
struct Episode {
    firing: bool,
    /// Last time the condition held (ms since the epoch).
    last_true_ms: u64,
    /// Drops counted since the episode started.
    drops: u64,
}

/// What is known about one source or one prefix.
#[derive(Clone, Debug, Default)]
struct Tracked {
    drops: WindowCounter,
    /// Last time each protected port was touched (ms since the epoch).
    ports: HashMap<(Protocol, u16), u64>,
    services: BTreeMap<String, u64>,
    first_seen_ms: u64,
    last_seen_ms: u64,
    episodes: [Episode; 3],
}

impl Tracked {
    fn firing(&self) -> bool {
        self.episodes.iter().any(|e| e.firing)
    }

    fn touch(&mut self, protocol: Protocol, port: u16, at_ms: u64) {
        if self.ports.len() >= MAX_PORTS && !self.ports.contains_key(&(protocol, port)) {
            if let Some(oldest) = self.ports.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k) {
                self.ports.remove(&oldest);
            }
        }
        let seen = self.ports.entry((protocol, port)).or_insert(at_ms);
        *seen = (*seen).max(at_ms);
    }

    fn note_service(&mut self, service: &str, at_ms: u64) {
        if let Some(seen) = self.services.get_mut(service) {
            *seen = (*seen).max(at_ms);
            return;
        }
        if self.services.len() >= MAX_SERVICES {
            if let Some(oldest) = self
                .services
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(k, _)| k.clone())
            {
                self.services.remove(&oldest);
            }
        }
        self.services.insert(service.to_owned(), at_ms);
    }

    fn live_ports(&self, now_ms: u64, window_ms: u64) -> Vec<(Protocol, u16)> {
        let mut ports: Vec<_> = self
            .ports
            .iter()
            .filter(|(_, &t)| t + window_ms > now_ms)
            .map(|(k, _)| *k)
            .collect();
        ports.sort_unstable();
        ports
    }
}

/// Turns observations into alerts and access records; see the module
/// documentation.
#[derive(Debug)]
pub struct Engine {
    settings: AlertSettings,
    capacity: usize,
    sources: HashMap<IpAddr, Tracked>,
    prefixes: HashMap<IpNet, Tracked>,
    evicted: u64,
    /// Alerts firing now, by [`AlertKind::index`].
    active: [usize; 3],
}

impl Engine {
    pub fn new(settings: AlertSettings) -> Self {
        Self::with_capacity(settings, DEFAULT_CAPACITY)
    }

    /// An engine tracking at most `capacity` sources and as many prefixes.
    pub fn with_capacity(settings: AlertSettings, capacity: usize) -> Self {
        Self {
            settings,
            capacity: capacity.max(1),
            sources: HashMap::new(),
            prefixes: HashMap::new(),
            evicted: 0,
            active: [0; 3],
        }
    }

    /// New thresholds (a reloaded configuration); alerts already firing
    /// keep their episode.
    pub fn set_settings(&mut self, settings: AlertSettings) {
        self.settings = settings;
    }

    /// Alerts of `kind` firing now.
    pub fn active(&self, kind: AlertKind) -> usize {
        self.active[kind.index()]
    }

    /// Sources and prefixes forgotten because the tables were full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Sources and prefixes tracked now.
    pub fn tracked(&self) -> (usize, usize) {
        (self.sources.len(), self.prefixes.len())
    }

    fn window_ms(&self) -> u64 {
        (self.settings.window.as_millis() as u64).max(1)
    }

    fn bucket(&self, at_ms: u64) -> Bucket {
        let window_ms = self.window_ms();
        let width = (window_ms / BUCKETS).max(1);
        Bucket {
            start_ms: at_ms - at_ms % width,
            window_ms,
        }
    }

    /// Takes one observation; returns the records it causes (an access
    /// record, or alerts that start firing).
    pub fn observe(&mut self, obs: &Observation) -> Vec<Record> {
        let now_ms = millis(obs.time);
        if obs.kind == ObservationKind::Access {
            if !self.settings.access_records {
                return Vec::new();
            }
            return vec![Record::Access(AccessRecord {
                service: obs.service.clone(),
                source: obs.source.to_string(),
                protocol: obs.protocol,
                port: obs.port,
                packets: obs.packets,
                connections: (obs.protocol == Protocol::Tcp).then_some(obs.packets),
                first_seen: rfc3339(obs.first_seen),
                time: rfc3339(obs.time),
            })];
        }

        let window_ms = self.window_ms();
        let bucket = self.bucket(now_ms);
        let first_ms = millis(obs.first_seen).min(now_ms);
        // The kernel's port list covers the source's whole tracked life: it
        // tells which ports were touched within the window only when that
        // life is shorter than the window.
        let list_is_recent = now_ms.saturating_sub(first_ms) < window_ms;
        let update = |tracked: &mut Tracked| {
            if tracked.first_seen_ms == 0 || first_ms < tracked.first_seen_ms {
                tracked.first_seen_ms = first_ms;
            }
            tracked.last_seen_ms = tracked.last_seen_ms.max(now_ms);
            tracked.drops.add(bucket, obs.packets);
            tracked.touch(obs.protocol, obs.port, now_ms);
            if list_is_recent {
                for &port in &obs.ports {
                    tracked.touch(obs.protocol, port, now_ms);
                }
            }
            tracked.note_service(&obs.service, now_ms);
            for episode in tracked.episodes.iter_mut().filter(|e| e.firing) {
                episode.drops = episode.drops.saturating_add(obs.packets);
            }
        };

        let mut records = Vec::new();
        let prefix = prefix_of(obs.source);
        for table in [Table::Sources, Table::Prefixes] {
            self.make_room(table, obs.source, prefix, now_ms);
            let settings = &self.settings;
            let (name, tracked) = match table {
                Table::Sources => (
                    obs.source.to_string(),
                    self.sources.entry(obs.source).or_default(),
                ),
                Table::Prefixes => (prefix.to_string(), self.prefixes.entry(prefix).or_default()),
            };
            update(tracked);
            for kind in table.kinds() {
                if condition(settings, *kind, tracked, now_ms, bucket) {
                    let episode = &mut tracked.episodes[kind.index()];
                    // A sweep's observation is dated at the source's last
                    // packet, which can be older than the last tick.
                    episode.last_true_ms = episode.last_true_ms.max(now_ms);
                    if !episode.firing {
                        episode.firing = true;
                        self.active[kind.index()] += 1;
                        episode.drops = tracked.drops.total(bucket);
                        records.push(Record::Alert(alert_record(
                            settings,
                            *kind,
                            AlertState::Firing,
                            &name,
                            tracked,
                            now_ms,
                            bucket,
                        )));
                    }
                }
            }
        }
        records
    }

    /// Advances time: ends alerts whose condition has been false for a
    /// whole window, and forgets what is quiet and not firing.
    pub fn tick(&mut self, now: SystemTime) -> Vec<Record> {
        let now_ms = millis(now);
        let window_ms = self.window_ms();
        let bucket = self.bucket(now_ms);
        let settings = &self.settings;
        let active = &mut self.active;
        let mut records = Vec::new();

        let mut check = |name: &dyn Fn() -> String, tracked: &mut Tracked, kinds: &[AlertKind]| {
            if !tracked.firing() {
                return;
            }
            for kind in kinds {
                if !tracked.episodes[kind.index()].firing {
                    continue;
                }
                if condition(settings, *kind, tracked, now_ms, bucket) {
                    tracked.episodes[kind.index()].last_true_ms = now_ms;
                    continue;
                }
                let episode = tracked.episodes[kind.index()];
                if now_ms.saturating_sub(episode.last_true_ms) >= window_ms {
                    let mut record = alert_record(
                        settings,
                        *kind,
                        AlertState::Ended,
                        &name(),
                        tracked,
                        now_ms,
                        bucket,
                    );
                    record.episode_drops = Some(episode.drops);
                    records.push(Record::Alert(record));
                    tracked.episodes[kind.index()] = Episode::default();
                    active[kind.index()] = active[kind.index()].saturating_sub(1);
                }
            }
        };
        for (source, tracked) in &mut self.sources {
            check(&|| source.to_string(), tracked, Table::Sources.kinds());
        }
        for (prefix, tracked) in &mut self.prefixes {
            check(&|| prefix.to_string(), tracked, Table::Prefixes.kinds());
        }

        let quiet = |t: &Tracked| !t.firing() && t.last_seen_ms + window_ms <= now_ms;
        self.sources.retain(|_, t| !quiet(t));
        self.prefixes.retain(|_, t| !quiet(t));
        records
    }

    /// Before a new entry goes into a full table, forgets the least
    /// recently seen sixteenth of it (those not firing first), so that a
    /// flood of new sources costs one sort per many insertions.
    fn make_room(&mut self, table: Table, source: IpAddr, prefix: IpNet, now_ms: u64) {
        let capacity = self.capacity;
        let evicted = match table {
            Table::Sources if !self.sources.contains_key(&source) => {
                evict(&mut self.sources, capacity, &mut self.active)
            }
            Table::Prefixes if !self.prefixes.contains_key(&prefix) => {
                evict(&mut self.prefixes, capacity, &mut self.active)
            }
            _ => 0,
        };
        if evicted > 0 {
            self.evicted += evicted as u64;
            tracing::debug!(
                table = table.name(),
                evicted,
                now_ms,
                "alert tables full: forgot the least recently seen"
            );
        }
    }
}

/// Forgets the least recently seen sixteenth of a full table; an alert
/// still firing on a forgotten entry just stops (no `ended` record).
fn evict<K: Copy + Eq + std::hash::Hash>(
    map: &mut HashMap<K, Tracked>,
    capacity: usize,
    active: &mut [usize; 3],
) -> usize {
    if map.len() < capacity {
        return 0;
    }
    let count = (capacity / 16).max(1);
    let mut order: Vec<(bool, u64, K)> = map
        .iter()
        .map(|(k, t)| (t.firing(), t.last_seen_ms, *k))
        .collect();
    let count = count.min(order.len());
    if count < order.len() {
        order.select_nth_unstable_by_key(count, |(f, t, _)| (*f, *t));
    }
    for (_, _, key) in &order[..count] {
        if let Some(gone) = map.remove(key) {
            for kind in AlertKind::ALL {
                if gone.episodes[kind.index()].firing {
                    active[kind.index()] = active[kind.index()].saturating_sub(1);
                }
            }
        }
    }
    count
}

#[derive(Clone, Copy, Debug)]
enum Table {
    Sources,
    Prefixes,
}

impl Table {
    fn kinds(self) -> &'static [AlertKind] {
        match self {
            Table::Sources => &[AlertKind::Source, AlertKind::Scan],
            Table::Prefixes => &[AlertKind::Prefix],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Table::Sources => "sources",
            Table::Prefixes => "prefixes",
        }
    }
}

fn condition(
    settings: &AlertSettings,
    kind: AlertKind,
    tracked: &mut Tracked,
    now_ms: u64,
    bucket: Bucket,
) -> bool {
    match kind {
        AlertKind::Source => tracked.drops.total(bucket) >= settings.source_drops,
        AlertKind::Prefix => tracked.drops.total(bucket) >= settings.prefix_drops,
        AlertKind::Scan => {
            tracked.live_ports(now_ms, bucket.window_ms).len() >= settings.scan_ports as usize
        }
    }
}

fn alert_record(
    settings: &AlertSettings,
    kind: AlertKind,
    state: AlertState,
    name: &str,
    tracked: &mut Tracked,
    now_ms: u64,
    bucket: Bucket,
) -> AlertRecord {
    let window_ms = bucket.window_ms;
    AlertRecord {
        alert: kind,
        state,
        source: name.to_owned(),
        services: tracked.services.keys().cloned().collect(),
        ports: tracked
            .live_ports(now_ms, window_ms)
            .into_iter()
            .map(|(protocol, port)| format!("{protocol}/{port}"))
            .collect(),
        drops: tracked.drops.total(bucket),
        episode_drops: None,
        window_seconds: settings.window.as_secs(),
        first_seen: rfc3339(from_millis(tracked.first_seen_ms)),
        last_seen: rfc3339(from_millis(tracked.last_seen_ms)),
        time: rfc3339(from_millis(now_ms)),
    }
}

/// The /24 of an IPv4 source, the /64 of an IPv6 source.
pub fn prefix_of(source: IpAddr) -> IpNet {
    let len = if source.is_ipv4() { 24 } else { 64 };
    // Both lengths are valid for their family.
    IpNet::new(source, len)
        .map(|net| net.trunc())
        .unwrap_or_else(|_| IpNet::from(source))
}

fn millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn from_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// RFC 3339 in UTC with milliseconds, like `2026-12-03T19:21:29.123Z`.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

#[cfg(test)]
mod tests;
