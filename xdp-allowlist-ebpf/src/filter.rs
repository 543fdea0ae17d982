//! What both builds of the program share once the headers are parsed: the
//! maps, bounded packet reads, and the policy that judges a (source,
//! protocol, port) triple. `main.rs` is the hardened parser in front of it;
//! `naive.rs` is a deliberately naive parser used only by the benchmark that
//! measures what the hardening costs.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::{
        bpf_get_prandom_u32, bpf_get_smp_processor_id, bpf_jiffies64, bpf_ktime_get_coarse_ns,
    },
    macros::map,
    maps::{lpm_trie::Key, Array, LpmTrie, PerCpuArray, RingBuf},
    programs::XdpContext,
};
use xdp_allowlist_common::{
    counter_index, key_tag, port_index, proto_index, Control, EventLimiter, Meta, Reason,
    RuleValue, ServiceCounters, ServiceName, ServicePolicy, SourceEvent, SourceKey, SourceSlot,
    SourceStats, V4KeyData, V6KeyData, CONTROL_EVENTS_OFF, CONTROL_TRACKING_OFF,
    CONTROL_TUNNEL_DROP, COUNTER_ENTRIES, DEFAULT_CAPACITY, EVENTS_RING_BYTES, EVENT_ACCESS,
    EVENT_DROP, EVENT_WOULD_DROP, FAMILY_V4, FAMILY_V6, MAX_SERVICES, PORTS_PER_SLOT, PORT_MONITOR,
    PORT_SERVICE_MASK, PROTO_TCP, REASON_COUNT, SLOTS, SOURCES_CAPACITY, SOURCE_PORTS, SOURCE_SETS,
    SOURCE_WAYS, TAG_BITS, WHY_FIRST, WHY_NEW_PORT, WHY_SUMMARY,
};

// One trie per address family, shared by all services and both slots: the
// key starts with a 32-bit tag (slot, service), so one lookup answers "is this
// source allowed for this service in this generation". A trie per service
// would need a map-in-map indirection per packet and a fixed service count
// baked into the program; the tag costs four bytes of key and nothing else.
#[map]
static ALLOW_V4: LpmTrie<V4KeyData, RuleValue> = LpmTrie::pinned(SLOTS * DEFAULT_CAPACITY, 0);

#[map]
static ALLOW_V6: LpmTrie<V6KeyData, RuleValue> = LpmTrie::pinned(SLOTS * DEFAULT_CAPACITY, 0);

/// (slot, protocol, port) to service id; an array lookup the verifier inlines.
#[map]
static PORTS: Array<u32> = Array::pinned(SLOTS * PORTS_PER_SLOT, 0);

#[map]
static CONTROL: Array<Control> = Array::pinned(1, 0);

#[map]
static COUNTERS: PerCpuArray<ServiceCounters> = PerCpuArray::pinned(COUNTER_ENTRIES, 0);

#[map]
static REASONS: PerCpuArray<u64> = PerCpuArray::pinned(REASON_COUNT, 0);

#[map]
static EVENTS: RingBuf = RingBuf::pinned(EVENTS_RING_BYTES, 0);

#[map]
static EVENT_LIMITER: PerCpuArray<EventLimiter> = PerCpuArray::pinned(1, 0);

// Who was refused (or admitted to a protected port): a fixed table per CPU,
// so a flood of spoofed sources replaces old entries instead of growing
// anything, and CPUs never contend on an entry. A set-associative table in a
// per-CPU array rather than an LRU hash: the verifier inlines an array
// lookup, where a hash lookup is a helper call that hashes the key, and on
// the test machine that call cost more than the rest of the drop path. New
// entries are also budgeted per CPU and second
// (`Control::new_sources_per_sec`).
#[map]
static SOURCES: PerCpuArray<SourceSlot> = PerCpuArray::pinned(SOURCES_CAPACITY, 0);

// SERVICES (modes, for `status`), META and SERVICE_NAMES are read and written
// by the daemon only; declared here so that they are pinned with the rest and
// their layout is part of the object.
#[map]
static SERVICES: Array<ServicePolicy> = Array::pinned(SLOTS * MAX_SERVICES, 0);

#[map]
static META: Array<Meta> = Array::pinned(1, 0);

#[map]
static SERVICE_NAMES: Array<ServiceName> = Array::pinned(MAX_SERVICES, 0);

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_IPIP: u8 = 4;
const IPPROTO_IPV6: u8 = 41;
const IPPROTO_GRE: u8 = 47;
const IPPROTO_ESP: u8 = 50;
const IPPROTO_ICMPV6: u8 = 58;

const ONE_SECOND_NS: u64 = 1_000_000_000;

/// `bpf_ringbuf_submit` flags and `bpf_ringbuf_query` selector.
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Unread bytes in the ring at which a record wakes the reader; below it
/// records wait for the reader's own poll (a few times a second).
const WAKEUP_BYTES: u64 = EVENTS_RING_BYTES as u64 / 8;

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Bounds of the packet: every read goes through [`Packet::read`].
pub struct Packet {
    pub start: usize,
    pub end: usize,
}

impl Packet {
    /// Copies a `T` from `offset`, or `None` when it does not fit before
    /// `limit` (an offset from `start`, never past the frame).
    ///
    /// The check against `data_end` comes first and on the pointer itself:
    /// that is the form the verifier tracks, and LLVM may drop whichever of
    /// two equivalent checks comes second.
    #[inline(always)]
    pub fn read<T: Copy>(&self, offset: usize, limit: usize) -> Option<T> {
        let size = core::mem::size_of::<T>();
        let ptr = self.start + offset;
        if ptr + size > self.end {
            return None;
        }
        if offset + size > limit {
            return None;
        }
        // SAFETY: `ptr..ptr + size` lies inside the packet (checked against
        // `data_end` just above) and `read_unaligned` needs no alignment.
        Some(unsafe { core::ptr::read_unaligned(ptr as *const T) })
    }

    #[inline(always)]
    pub fn len(&self) -> usize {
        self.end - self.start
    }
}

/// The source address, as the trie and events want it.
#[derive(Clone, Copy)]
pub enum Source {
    V4([u8; 4]),
    V6([u8; 16]),
}

/// A port-carrying header too short to hold its ports.
#[inline(always)]
pub fn short_l4(first_fragment: bool) -> u32 {
    if first_fragment {
        drop(Reason::ShortFragment)
    } else {
        drop(Reason::Malformed)
    }
}

#[inline(always)]
pub fn transport(
    ctx: &XdpContext,
    pkt: &Packet,
    source: Source,
    proto: u8,
    l4: usize,
    l3_end: usize,
    first_fragment: bool,
) -> u32 {
    let Some(control) = CONTROL.get(0) else {
        return pass(Reason::OtherProtocol);
    };
    let slot = control.active_slot & 1;

    let Some(proto_idx) = proto_index(proto) else {
        return match proto {
            IPPROTO_ICMP | IPPROTO_ICMPV6 => pass(Reason::Icmp),
            IPPROTO_IPIP | IPPROTO_IPV6 | IPPROTO_GRE | IPPROTO_ESP => {
                tunnel(control, slot, source)
            }
            _ => pass(Reason::OtherProtocol),
        };
    };

    // TCP, UDP and SCTP all start with the source then destination port.
    let Some(ports) = pkt.read::<[u8; 4]>(l4, l3_end) else {
        return short_l4(first_fragment);
    };
    let port = u16::from_be_bytes([ports[2], ports[3]]);

    let entry = match PORTS.get(port_index(slot, proto_idx, port)) {
        Some(&entry) => entry,
        None => 0,
    };
    let service = entry & PORT_SERVICE_MASK;
    if service == 0 || service >= MAX_SERVICES {
        return pass(Reason::Unprotected);
    }
    let bytes = (l3_end - l4) as u64;

    if is_allowed(slot, service, source) {
        count_service(service, proto_idx, |c| {
            c.passed += 1;
            c.passed_bytes += bytes;
        });
        // Access records: a TCP connection attempt (SYN without ACK), or any
        // datagram of the other protocols (the per-source interval keeps
        // those to one record per source and interval).
        let new_flow = proto != PROTO_TCP
            || matches!(pkt.read::<u8>(l4 + 13, l3_end), Some(flags) if flags & (TCP_SYN | TCP_ACK) == TCP_SYN);
        if new_flow {
            track(control, EVENT_ACCESS, service, proto, port, source, bytes);
        }
        return XDP_PASS;
    }

    if entry & PORT_MONITOR != 0 {
        count_service(service, proto_idx, |c| c.would_drop += 1);
        track(
            control,
            EVENT_WOULD_DROP,
            service,
            proto,
            port,
            source,
            bytes,
        );
        return XDP_PASS;
    }

    count_service(service, proto_idx, |c| {
        c.dropped += 1;
        c.dropped_bytes += bytes;
    });
    track(control, EVENT_DROP, service, proto, port, source, bytes);
    aya_log_ebpf::debug!(
        ctx,
        "drop proto={} port={} service={}",
        proto,
        port,
        service
    );
    XDP_DROP
}

/// Is `source` in `service`'s allowlist in `slot`?
#[inline(always)]
fn is_allowed(slot: u32, service: u32, source: Source) -> bool {
    let tag = key_tag(slot, service);
    match source {
        Source::V4(addr) => {
            let key = Key::new(TAG_BITS + 32, V4KeyData { tag, addr });
            ALLOW_V4.get(&key).is_some()
        }
        Source::V6(addr) => {
            if is_v4_embedded(&addr) {
                // `::ffff:a.b.c.d` and `::a.b.c.d` reach IPv4-mapped sockets;
                // no entry ever admits them (the configuration refuses such
                // CIDRs, and an IPv4 entry lives in the other trie).
                count_reason(Reason::MappedSource);
                return false;
            }
            let key = Key::new(TAG_BITS + 128, V6KeyData { tag, addr });
            ALLOW_V6.get(&key).is_some()
        }
    }
}

/// `::ffff:0:0/96` (IPv4-mapped) or `::/96` (IPv4-compatible, deprecated).
#[inline(always)]
fn is_v4_embedded(addr: &[u8; 16]) -> bool {
    let head = u64::from_be_bytes([
        addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
    ]);
    let mid = u32::from_be_bytes([addr[8], addr[9], addr[10], addr[11]]);
    head == 0 && (mid == 0xffff || mid == 0)
}

/// Tunnels and ESP carry no ports the filter can see. Service 0 of the active
/// slot holds the union of every allowlist when the policy is "drop".
#[inline(always)]
fn tunnel(control: &Control, slot: u32, source: Source) -> u32 {
    if control.flags & CONTROL_TUNNEL_DROP == 0 || is_allowed(slot, 0, source) {
        pass(Reason::TunnelPassed)
    } else {
        drop(Reason::TunnelDropped)
    }
}

#[inline(always)]
fn count_reason(reason: Reason) {
    if let Some(counter) = REASONS.get_ptr_mut(reason as u32) {
        // SAFETY: the pointer comes from a per-CPU array lookup and points at
        // this CPU's u64; XDP programs do not migrate between CPUs mid-run.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
pub fn pass(reason: Reason) -> u32 {
    count_reason(reason);
    XDP_PASS
}

#[inline(always)]
pub fn drop(reason: Reason) -> u32 {
    count_reason(reason);
    XDP_DROP
}

#[inline(always)]
fn count_service(service: u32, proto_idx: u32, update: impl FnOnce(&mut ServiceCounters)) {
    if let Some(counters) = COUNTERS.get_ptr_mut(counter_index(service, proto_idx)) {
        // SAFETY: a per-CPU array slot of this CPU, valid for the program's run.
        update(unsafe { &mut *counters });
    }
}

/// Accounts a packet to its source in [`SOURCES`] and sends an event when
/// that is news: the source's first packet, a port it had not touched, or
/// the summary interval passed since the last event about it.
#[inline(always)]
fn track(
    control: &Control,
    kind: u8,
    service: u32,
    proto: u8,
    port: u16,
    source: Source,
    bytes: u64,
) {
    if control.flags & CONTROL_TRACKING_OFF != 0 {
        return;
    }
    let (family, addr) = match source {
        Source::V4(a) => (
            FAMILY_V4,
            [a[0], a[1], a[2], a[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ),
        Source::V6(a) => (FAMILY_V6, a),
    };
    let key = SourceKey {
        service: service as u16,
        kind,
        family,
        addr,
    };
    let Some(limiter) = EVENT_LIMITER.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a per-CPU array slot of this CPU, valid for the program's run;
    // XDP programs do not migrate between CPUs mid-run.
    let limiter = unsafe { &mut *limiter };
    let now = coarse_now(limiter);

    let words = key_words(&key);
    let first = source_set(&words, hash_seed(limiter)) * SOURCE_WAYS;
    let (Some(way0), Some(way1)) = (SOURCES.get_ptr_mut(first), SOURCES.get_ptr_mut(first + 1))
    else {
        return;
    };
    // SAFETY: two distinct slots of this CPU's part of a per-CPU array, valid
    // for the program's run; no other CPU reads or writes them.
    let (way0, way1) = unsafe { (&mut *way0, &mut *way1) };

    let (slot, fresh) = if same_key(&way0.key, &words) {
        (way0, false)
    } else if same_key(&way1.key, &words) {
        (way1, false)
    } else {
        // A source not seen (or already forgotten): start tracking it in
        // the free or least recently seen slot of its set, within this
        // CPU's budget of new sources per second.
        if now.wrapping_sub(limiter.track_window_start_ns) >= ONE_SECOND_NS {
            limiter.track_window_start_ns = now;
            limiter.tracked_in_window = 0;
        }
        if limiter.tracked_in_window >= u64::from(control.new_sources_per_sec) {
            limiter.untracked += 1;
            return;
        }
        limiter.tracked_in_window += 1;
        let older = if way1.stats.last_seen_ns < way0.stats.last_seen_ns {
            way1
        } else {
            way0
        };
        (older, true)
    };

    limiter.table_updates += 1;
    let why = if fresh {
        slot.key = key;
        slot.stats = SourceStats {
            packets: 1,
            bytes,
            first_seen_ns: now,
            last_seen_ns: now,
            last_event_ns: 0,
            reported_packets: 0,
            reported_bytes: 0,
            ports: [0; SOURCE_PORTS],
            port_count: 1,
            other_port_packets: 0,
            proto,
            _pad: [0; 3],
        };
        slot.stats.ports[0] = port;
        WHY_FIRST
    } else {
        let stats = &mut slot.stats;
        stats.packets += 1;
        stats.bytes += bytes;
        stats.last_seen_ns = now;
        stats.proto = proto;
        if remember_port(stats, port) {
            WHY_NEW_PORT
        } else if now.wrapping_sub(stats.last_event_ns)
            >= u64::from(control.summary_interval_ms) * 1_000_000
        {
            WHY_SUMMARY
        } else {
            return;
        }
    };
    send_event(
        control,
        limiter,
        now,
        kind,
        why,
        service,
        port,
        family,
        addr,
        &mut slot.stats,
    );
}

/// A [`SourceKey`] as five words, to hash and compare without `memcmp`
/// (which BPF does not have).
#[inline(always)]
fn key_words(key: &SourceKey) -> [u32; 5] {
    // SAFETY: `SourceKey` is `#[repr(C)]` plain data of 20 bytes without
    // padding (asserted in the common crate), so every bit pattern of it is
    // a valid `[u32; 5]`; `transmute` copies by value, so alignment does not
    // matter.
    unsafe { core::mem::transmute::<SourceKey, [u32; 5]>(*key) }
}

#[inline(always)]
fn same_key(key: &SourceKey, words: &[u32; 5]) -> bool {
    let other = key_words(key);
    let mut diff = 0;
    for i in 0..5 {
        diff |= other[i] ^ words[i];
    }
    diff == 0
}

/// The set of [`SOURCES`] a key belongs to: a seeded multiply-xorshift hash.
/// It only spreads keys over the sets; the seed, random and per CPU, keeps
/// anyone who cannot read the map from aiming sources at one set.
#[inline(always)]
fn source_set(words: &[u32; 5], seed: u64) -> u32 {
    let mut hash = seed;
    for &word in words {
        hash = (hash ^ u64::from(word)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        hash ^= hash >> 29;
    }
    (hash >> 32) as u32 & (SOURCE_SETS - 1)
}

/// This CPU's hash seed, drawn on first use.
#[inline(always)]
fn hash_seed(limiter: &mut EventLimiter) -> u64 {
    if limiter.hash_seed == 0 {
        // SAFETY: helpers without preconditions.
        let (high, low) = unsafe { (bpf_get_prandom_u32(), bpf_get_prandom_u32()) };
        limiter.hash_seed = (u64::from(high) << 32 | u64::from(low)) | 1;
    }
    limiter.hash_seed
}

/// The coarse clock. It advances once per tick, so it is read only when
/// `jiffies` (which the verifier inlines into one load) has moved since the
/// last read on this CPU: the helper call costs more than the rest of the
/// accounting, and its value would be the same within a tick.
#[inline(always)]
fn coarse_now(limiter: &mut EventLimiter) -> u64 {
    // SAFETY: a helper without preconditions (Linux 5.5+).
    let tick = unsafe { bpf_jiffies64() };
    if tick != limiter.clock_jiffies {
        limiter.clock_jiffies = tick;
        // SAFETY: a helper without preconditions (Linux 5.11+); a tick's
        // precision is plenty for first/last seen and one-second windows.
        limiter.clock_ns = unsafe { bpf_ktime_get_coarse_ns() };
    }
    limiter.clock_ns
}

/// Adds `port` to the source's ports; true when it was not there yet.
#[inline(always)]
fn remember_port(stats: &mut SourceStats, port: u16) -> bool {
    let count = usize::from(stats.port_count);
    // A fixed trip count with no early exit: LLVM unrolls it into constant
    // offsets, where a loop bounded by `count` leaves the verifier unsure.
    let mut known = false;
    for i in 0..SOURCE_PORTS {
        known |= i < count && stats.ports[i] == port;
    }
    if known {
        return false;
    }
    if count < SOURCE_PORTS {
        stats.ports[count] = port;
        stats.port_count += 1;
        true
    } else {
        stats.other_port_packets = stats.other_port_packets.saturating_add(1);
        false
    }
}

/// Sends one event unless this CPU already sent its share this second.
/// Records do not wake the reader until the ring holds [`WAKEUP_BYTES`].
#[inline(always)]
#[allow(
    clippy::too_many_arguments,
    reason = "the fields of one event, all used"
)]
fn send_event(
    control: &Control,
    limiter: &mut EventLimiter,
    now: u64,
    kind: u8,
    why: u8,
    service: u32,
    port: u16,
    family: u8,
    addr: [u8; 16],
    stats: &mut SourceStats,
) {
    if control.flags & CONTROL_EVENTS_OFF != 0 {
        return;
    }
    if now.wrapping_sub(limiter.window_start_ns) >= ONE_SECOND_NS {
        limiter.window_start_ns = now;
        limiter.sent_in_window = 0;
    }
    let budget = u64::from(control.events_per_sec);
    if limiter.sent_in_window >= budget {
        limiter.rate_limited += 1;
        return;
    }
    limiter.sent_in_window += 1;

    let Some(mut entry) = EVENTS.reserve::<SourceEvent>(0) else {
        limiter.ring_full += 1;
        return;
    };
    entry.write(SourceEvent {
        ts_ns: now,
        first_seen_ns: stats.first_seen_ns,
        packets: stats.packets - stats.reported_packets,
        bytes: stats.bytes - stats.reported_bytes,
        total_packets: stats.packets,
        service,
        port,
        proto: stats.proto,
        family,
        kind,
        why,
        port_count: stats.port_count,
        other_port_packets: stats.other_port_packets,
        // SAFETY: a helper without preconditions; XDP runs with migration
        // disabled, so it names the CPU whose per-CPU value `stats` is.
        cpu: unsafe { bpf_get_smp_processor_id() } as u16,
        addr,
        ports: stats.ports,
    });
    let wakeup = if EVENTS.query(BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(wakeup);
    limiter.sent += 1;
    stats.last_event_ns = now;
    stats.reported_packets = stats.packets;
    stats.reported_bytes = stats.bytes;
}
