//! Plain data shared by the kernel program and the daemon.
//!
//! Everything here crosses the kernel boundary through BPF maps, so every type
//! is `#[repr(C)]`, holds no `bool` or `Option`, spells its padding out, and
//! has its size asserted at compile time. Map names and capacities live here
//! too, so that both sides agree on them.
//!
//! # Generations and slots
//!
//! The policy exists twice in the maps, in slot 0 and slot 1. The kernel reads
//! the active slot once per packet from [`Control`] and only looks at that
//! slot's entries. The daemon writes a new generation into the idle slot, then
//! flips `Control::active_slot` with one map update, so no packet ever sees a
//! mix of two generations.

#![no_std]

use core::mem::size_of;

/// Bumped whenever the layout of a pinned map changes. A daemon refuses to
/// adopt pinned maps that carry another layout instead of misreading them.
pub const LAYOUT_VERSION: u32 = 3;

/// Written into [`Meta::magic`] so that a stray map of the same name is not
/// mistaken for ours.
pub const META_MAGIC: u64 = u64::from_be_bytes(*b"XDPALLOW");

/// Service ids run from 1 to `MAX_SERVICES - 1`; 0 means "not protected".
pub const MAX_SERVICES: u32 = 256;

/// Number of policy slots (see the module documentation).
pub const SLOTS: u32 = 2;

/// Protocols that carry ports the filter can protect.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;

/// Index of a protocol in the port table, or `None` if ports of that
/// protocol cannot be protected.
#[inline(always)]
pub const fn proto_index(proto: u8) -> Option<u32> {
    match proto {
        PROTO_TCP => Some(0),
        PROTO_UDP => Some(1),
        PROTO_SCTP => Some(2),
        _ => None,
    }
}

/// Number of protocols in the port table.
pub const PORT_PROTOCOLS: u32 = 3;

/// Entries of the port table per slot: one per protocol and port.
pub const PORTS_PER_SLOT: u32 = PORT_PROTOCOLS * 65536;

/// Index into [`PORTS_MAP`] of a (slot, protocol, port) triple. The value
/// stored there is the id of the service that protects the port (0: none),
/// with [`PORT_MONITOR`] set when that service is in monitor mode, so that
/// the drop path needs no second lookup.
#[inline(always)]
pub const fn port_index(slot: u32, proto_idx: u32, port: u16) -> u32 {
    slot * PORTS_PER_SLOT + proto_idx * 65536 + port as u32
}

/// Set in a [`PORTS_MAP`] value when the service is in monitor mode.
pub const PORT_MONITOR: u32 = 1 << 31;

/// The service id in a [`PORTS_MAP`] value.
pub const PORT_SERVICE_MASK: u32 = 0xffff;

/// Default capacity of each address trie, in CIDRs per family and slot.
pub const DEFAULT_CAPACITY: u32 = 1_048_576;

/// Bits of the tag that precedes the address in every trie key.
pub const TAG_BITS: u32 = 32;

/// The tag that scopes a trie key to one slot and one service, big-endian so
/// that it forms the leading bits of the prefix.
#[inline(always)]
pub const fn key_tag(slot: u32, service: u32) -> [u8; 4] {
    ((slot << 16) | service).to_be_bytes()
}

/// Data part of an IPv4 trie key: the tag, then the address in network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct V4KeyData {
    pub tag: [u8; 4],
    pub addr: [u8; 4],
}

/// Data part of an IPv6 trie key: the tag, then the address in network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct V6KeyData {
    pub tag: [u8; 4],
    pub addr: [u8; 16],
}

/// Value of a trie entry: which configuration entry admitted the packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RuleValue {
    pub rule_id: u32,
}

/// Flags in [`Control::flags`].
pub const CONTROL_TUNNEL_DROP: u32 = 1 << 0;
/// Drop events are not sent at all (counters still run).
pub const CONTROL_EVENTS_OFF: u32 = 1 << 1;
/// Per-source accounting in [`SOURCES_MAP`] is off (and with it every
/// source event). Only the benchmark sets it, to measure what tracking costs.
pub const CONTROL_TRACKING_OFF: u32 = 1 << 2;

/// The single entry of [`CONTROL_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Control {
    /// Slot the kernel judges packets against (0 or 1).
    pub active_slot: u32,
    /// `CONTROL_*` flags.
    pub flags: u32,
    /// Generation number of the configuration in the active slot.
    pub generation: u64,
    /// Most events one CPU may send per second (0: none).
    pub events_per_sec: u32,
    /// Least time between two events about the same source (milliseconds).
    pub summary_interval_ms: u32,
    /// Most sources one CPU starts tracking per second; past it a new source
    /// is only counted in [`EventLimiter::untracked`], so a flood of spoofed
    /// sources cannot turn every drop into a map insertion.
    pub new_sources_per_sec: u32,
    pub _pad: u32,
}

/// Flags in [`ServicePolicy::flags`].
pub const SERVICE_MONITOR: u32 = 1 << 0;

/// Policy of one service in one slot, in [`SERVICES_MAP`] at
/// `slot * MAX_SERVICES + service`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServicePolicy {
    pub flags: u32,
}

/// Entries of [`COUNTERS_MAP`]: one per service and protocol.
pub const COUNTER_ENTRIES: u32 = MAX_SERVICES * PORT_PROTOCOLS;

/// Index into [`COUNTERS_MAP`] of a service's counters for one protocol
/// (`proto_index`).
#[inline(always)]
pub const fn counter_index(service: u32, proto_idx: u32) -> u32 {
    service * PORT_PROTOCOLS + proto_idx
}

/// Per-CPU counters of one service and protocol, in [`COUNTERS_MAP`] at
/// [`counter_index`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceCounters {
    pub passed: u64,
    pub passed_bytes: u64,
    pub dropped: u64,
    pub dropped_bytes: u64,
    /// Refused in monitor mode: counted, then passed.
    pub would_drop: u64,
    pub _reserved: u64,
}

/// Why the parser stopped early or judged a packet without a port. Each has a
/// per-CPU counter in [`REASONS_MAP`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Not IPv4 or IPv6 (ARP and friends): passed.
    NotIp = 0,
    /// Header lengths that contradict each other or the frame: dropped.
    Malformed = 1,
    /// A non-first fragment, which carries no ports: passed (see README).
    Fragment = 2,
    /// A first fragment too short to hold the ports: dropped.
    ShortFragment = 3,
    /// IPv6 extension chain longer than the bound or truncated, or a second
    /// IPv4 authentication header: dropped.
    ExtChain = 4,
    /// More VLAN tags than the parser follows: dropped.
    VlanTooDeep = 5,
    /// IPv4-mapped or IPv4-compatible IPv6 source to a protected port: dropped.
    MappedSource = 6,
    /// Tunnel or ESP from a source in no allowlist, policy "pass".
    TunnelPassed = 7,
    /// Tunnel or ESP from a source in no allowlist, policy "drop".
    TunnelDropped = 8,
    /// ICMP or ICMPv6: always passed.
    Icmp = 9,
    /// A port-carrying protocol to an unprotected port: passed untouched.
    Unprotected = 10,
    /// Other IP protocols: passed untouched.
    OtherProtocol = 11,
}

/// Number of [`Reason`] counters.
pub const REASON_COUNT: u32 = 12;

impl Reason {
    /// All reasons in counter order.
    pub const ALL: [Reason; REASON_COUNT as usize] = [
        Reason::NotIp,
        Reason::Malformed,
        Reason::Fragment,
        Reason::ShortFragment,
        Reason::ExtChain,
        Reason::VlanTooDeep,
        Reason::MappedSource,
        Reason::TunnelPassed,
        Reason::TunnelDropped,
        Reason::Icmp,
        Reason::Unprotected,
        Reason::OtherProtocol,
    ];

    /// Name used in `status`, metrics and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::NotIp => "not_ip",
            Reason::Malformed => "malformed",
            Reason::Fragment => "fragment",
            Reason::ShortFragment => "short_fragment",
            Reason::ExtChain => "ext_chain",
            Reason::VlanTooDeep => "vlan_too_deep",
            Reason::MappedSource => "mapped_source",
            Reason::TunnelPassed => "tunnel_passed",
            Reason::TunnelDropped => "tunnel_dropped",
            Reason::Icmp => "icmp",
            Reason::Unprotected => "unprotected",
            Reason::OtherProtocol => "other_protocol",
        }
    }
}

/// Per-CPU state of the source accounting: the event rate limiter and what
/// it let through, the new-source budget, the cached clock and the hash
/// seed. One record, so a tracked packet makes one lookup for all of it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EventLimiter {
    /// Start of the current one-second window (coarse clock).
    pub window_start_ns: u64,
    pub sent_in_window: u64,
    /// Events sent.
    pub sent: u64,
    /// Events not sent because the per-CPU rate limit was reached.
    pub rate_limited: u64,
    /// Events not sent because the ring buffer was full.
    pub ring_full: u64,
    /// Start of the current one-second window of the new-source budget.
    pub track_window_start_ns: u64,
    pub tracked_in_window: u64,
    /// Packets (drops, would-drops, access) from sources not tracked because
    /// the new-source budget was spent.
    pub untracked: u64,
    /// The coarse clock as last read, and the tick (`jiffies`) it was read
    /// in: the program reads the clock once per tick, not once per packet.
    pub clock_ns: u64,
    pub clock_jiffies: u64,
    /// Packets this CPU accounted in [`SOURCES_MAP`]: while it stands still,
    /// so does this CPU's table, and the daemon's sweep skips reading it.
    pub table_updates: u64,
    /// Seed of this CPU's [`SOURCES_MAP`] hash, drawn at random by the
    /// program on its first use (0: not drawn yet), so that nobody outside
    /// can choose sources that share a set.
    pub hash_seed: u64,
}

/// What a [`SourceEvent`] (and a [`SourceKey`]) is about.
pub const EVENT_DROP: u8 = 1;
/// Refused by a service in monitor mode: counted, then passed.
pub const EVENT_WOULD_DROP: u8 = 2;
/// An allowed source opened a connection (TCP SYN) or sent a datagram to a
/// protected port.
pub const EVENT_ACCESS: u8 = 3;

/// Why a [`SourceEvent`] was sent.
/// The first packet of this kind from the source (on this CPU).
pub const WHY_FIRST: u8 = 1;
/// The source touched a port it had not touched before.
pub const WHY_NEW_PORT: u8 = 2;
/// The interval since the last event about the source passed.
pub const WHY_SUMMARY: u8 = 3;

/// Address families in events.
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// Distinct ports remembered per source.
pub const SOURCE_PORTS: usize = 8;

/// Who a [`SourceSlot`] is about: one per service, kind and source address.
/// `kind == 0` marks an empty slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SourceKey {
    pub service: u16,
    /// `EVENT_DROP`, `EVENT_WOULD_DROP` or `EVENT_ACCESS`.
    pub kind: u8,
    pub family: u8,
    /// IPv4 sources use the first four bytes.
    pub addr: [u8; 16],
}

/// What one CPU saw from one source. Times are `bpf_ktime_get_coarse_ns`
/// (CLOCK_MONOTONIC_COARSE).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SourceStats {
    /// Packets (for `EVENT_ACCESS` on TCP: connection attempts, SYNs).
    pub packets: u64,
    /// Bytes of transport header and payload.
    pub bytes: u64,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// When the last event about this source was sent (0: never).
    pub last_event_ns: u64,
    /// `packets` and `bytes` when that event was sent: the next summary
    /// reports what came since.
    pub reported_packets: u64,
    pub reported_bytes: u64,
    /// Distinct destination ports, in the order first touched.
    pub ports: [u16; SOURCE_PORTS],
    /// How many of `ports` are used.
    pub port_count: u16,
    /// Packets to a port not in `ports` once it was full (saturating).
    pub other_port_packets: u16,
    /// Protocol of the last packet.
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// One slot of [`SOURCES_MAP`], a per-CPU array: each CPU keeps its own
/// table of the sources it saw. A source lives in one of the
/// [`SOURCE_WAYS`] slots of the set its key hashes to (with a per-CPU random
/// seed, [`EventLimiter::hash_seed`]); a new source takes an empty slot of
/// its set, or the one seen least recently.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SourceSlot {
    pub key: SourceKey,
    pub _pad: u32,
    pub stats: SourceStats,
}

/// One record in [`EVENTS_MAP`], sent only when it carries news: the first
/// packet from a source, a port it had not touched, or a summary once per
/// interval of what came since the previous record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SourceEvent {
    pub ts_ns: u64,
    pub first_seen_ns: u64,
    /// Packets and bytes since the previous event about this source.
    pub packets: u64,
    pub bytes: u64,
    /// Totals since first seen (on this CPU).
    pub total_packets: u64,
    pub service: u32,
    /// Port of the packet that triggered the event.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
    /// `EVENT_*`.
    pub kind: u8,
    /// `WHY_*`.
    pub why: u8,
    pub port_count: u16,
    pub other_port_packets: u16,
    /// The CPU whose [`SourceStats`] the event reports: together with the
    /// key it names one per-CPU value, so a reader that also reads
    /// [`SOURCES_MAP`] can tell what it already counted.
    pub cpu: u16,
    pub addr: [u8; 16],
    pub ports: [u16; SOURCE_PORTS],
}

/// The single entry of [`META_MAP`], written by the daemon that created the
/// pins and checked by every later one.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Meta {
    pub magic: u64,
    pub layout: u32,
    pub capacity: u32,
}

/// Name of a service, indexed by id, in [`SERVICE_NAMES_MAP`]. Only the
/// daemon and CLI read it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceName {
    pub len: u32,
    pub bytes: [u8; 60],
}

impl Default for ServiceName {
    fn default() -> Self {
        Self {
            len: 0,
            bytes: [0; 60],
        }
    }
}

/// Map names, shared by both sides.
pub const CONTROL_MAP: &str = "CONTROL";
pub const PORTS_MAP: &str = "PORTS";
pub const SERVICES_MAP: &str = "SERVICES";
pub const V4_MAP: &str = "ALLOW_V4";
pub const V6_MAP: &str = "ALLOW_V6";
pub const COUNTERS_MAP: &str = "COUNTERS";
pub const REASONS_MAP: &str = "REASONS";
pub const EVENTS_MAP: &str = "EVENTS";
pub const EVENT_LIMITER_MAP: &str = "EVENT_LIMITER";
pub const META_MAP: &str = "META";
pub const SERVICE_NAMES_MAP: &str = "SERVICE_NAMES";
pub const SOURCES_MAP: &str = "SOURCES";

/// Name of the XDP program in the object file.
pub const PROGRAM_NAME: &str = "xdp_allowlist";

/// Size of the drop-event ring buffer in bytes.
pub const EVENTS_RING_BYTES: u32 = 256 * 1024;

/// Slots of [`SOURCES_MAP`], on each CPU: the most sources one CPU tracks.
pub const SOURCES_CAPACITY: u32 = 16_384;

/// Slots per set of [`SOURCES_MAP`]: how many sources whose keys hash alike
/// are tracked side by side before the one seen least recently gives way.
pub const SOURCE_WAYS: u32 = 2;

/// Sets of [`SOURCES_MAP`] (a power of two).
pub const SOURCE_SETS: u32 = SOURCES_CAPACITY / SOURCE_WAYS;

/// Default least time between two events about one source.
pub const DEFAULT_SUMMARY_INTERVAL_MS: u32 = 2_000;

/// Default new sources one CPU starts tracking per second.
pub const DEFAULT_NEW_SOURCES_PER_SEC: u32 = 20_000;

const _: () = assert!(size_of::<V4KeyData>() == 8);
const _: () = assert!(size_of::<V6KeyData>() == 20);
const _: () = assert!(size_of::<RuleValue>() == 4);
const _: () = assert!(size_of::<Control>() == 32);
const _: () = assert!(size_of::<ServicePolicy>() == 4);
const _: () = assert!(size_of::<ServiceCounters>() == 48);
const _: () = assert!(size_of::<EventLimiter>() == 96);
const _: () = assert!(size_of::<SourceKey>() == 20);
const _: () = assert!(size_of::<SourceStats>() == 80);
const _: () = assert!(size_of::<SourceSlot>() == 104);
const _: () = assert!(SOURCE_SETS.is_power_of_two());
const _: () = assert!(size_of::<SourceEvent>() == 88);
const _: () = assert!(size_of::<Meta>() == 16);
const _: () = assert!(size_of::<ServiceName>() == 64);

#[cfg(feature = "user")]
mod pod {
    //! `aya::Pod` lets the daemon read and write these types through maps.

    use super::*;

    macro_rules! pod {
        ($($t:ty),* $(,)?) => {
            $(
                // SAFETY: the type is `#[repr(C)]`, made only of integers and
                // byte arrays with explicit padding, so every bit pattern is
                // valid and it has no uninitialised bytes.
                unsafe impl aya::Pod for $t {}
            )*
        };
    }

    pod!(
        V4KeyData,
        V6KeyData,
        RuleValue,
        Control,
        ServicePolicy,
        ServiceCounters,
        EventLimiter,
        SourceKey,
        SourceStats,
        SourceSlot,
        SourceEvent,
        Meta,
        ServiceName,
    );
}
