//! The XDP program: drops packets to protected ports whose source is not in
//! the service's allowlist, and leaves everything else alone.
//!
//! The parser follows every header an attacker can put in front of the ports
//! (VLAN tags, IPv4 options, IPv6 extension headers, fragments). Every early
//! exit has a [`Reason`] with a per-CPU counter; the README's "Packet
//! handling" section states each decision. `xdp-allowlist` carries a pure-Rust
//! reference of the same policy (`reference.rs`) that a differential test
//! compares against this program packet by packet; keep both in step.
//!
//! The program counts; it never logs per packet unless `--kernel-log` raised
//! aya-log's level at load time.

#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::bpf_ktime_get_coarse_ns,
    macros::{map, xdp},
    maps::{lpm_trie::Key, Array, LpmTrie, PerCpuArray, RingBuf},
    programs::XdpContext,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, ip::Ipv6Hdr};
use xdp_allowlist_common::{
    key_tag, port_index, proto_index, Control, DropEvent, EventLimiter, Meta, Reason, RuleValue,
    ServiceCounters, ServiceName, ServicePolicy, V4KeyData, V6KeyData, CONTROL_EVENTS_OFF,
    CONTROL_TUNNEL_DROP, DEFAULT_CAPACITY, EVENTS_RING_BYTES, EVENT_DROP, EVENT_WOULD_DROP,
    FAMILY_V4, FAMILY_V6, MAX_SERVICES, PORTS_PER_SLOT, PORT_MONITOR, PORT_SERVICE_MASK,
    REASON_COUNT, SLOTS, TAG_BITS,
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
static COUNTERS: PerCpuArray<ServiceCounters> = PerCpuArray::pinned(MAX_SERVICES, 0);

#[map]
static REASONS: PerCpuArray<u64> = PerCpuArray::pinned(REASON_COUNT, 0);

#[map]
static EVENTS: RingBuf = RingBuf::pinned(EVENTS_RING_BYTES, 0);

#[map]
static EVENT_LIMITER: PerCpuArray<EventLimiter> = PerCpuArray::pinned(1, 0);

// SERVICES (modes, for `status`), META and SERVICE_NAMES are read and written
// by the daemon only; declared here so that they are pinned with the rest and
// their layout is part of the object.
#[map]
static SERVICES: Array<ServicePolicy> = Array::pinned(SLOTS * MAX_SERVICES, 0);

#[map]
static META: Array<Meta> = Array::pinned(1, 0);

#[map]
static SERVICE_NAMES: Array<ServiceName> = Array::pinned(MAX_SERVICES, 0);

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;

/// VLAN tags followed before giving up (802.1ad outer plus 802.1Q inner).
const MAX_VLAN_TAGS: usize = 2;

/// IPv6 extension headers walked before giving up.
const MAX_EXT_HEADERS: usize = 8;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_IPIP: u8 = 4;
const IPPROTO_IPV6: u8 = 41;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_GRE: u8 = 47;
const IPPROTO_ESP: u8 = 50;
const IPPROTO_AH: u8 = 51;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_DSTOPTS: u8 = 60;

/// Events one CPU may send per second when the daemon set no rate.
const ONE_SECOND_NS: u64 = 1_000_000_000;

#[xdp]
pub fn xdp_allowlist(ctx: XdpContext) -> u32 {
    try_allowlist(&ctx)
}

/// Bounds of the packet: every read goes through [`Packet::read`].
struct Packet {
    start: usize,
    end: usize,
}

impl Packet {
    /// Copies a `T` from `offset`, or `None` when it does not fit before
    /// `limit` (an offset from `start`, never past the frame).
    ///
    /// The check against `data_end` comes first and on the pointer itself:
    /// that is the form the verifier tracks, and LLVM may drop whichever of
    /// two equivalent checks comes second.
    #[inline(always)]
    fn read<T: Copy>(&self, offset: usize, limit: usize) -> Option<T> {
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
    fn len(&self) -> usize {
        self.end - self.start
    }
}

/// The source address, as the trie and events want it.
#[derive(Clone, Copy)]
enum Source {
    V4([u8; 4]),
    V6([u8; 16]),
}

#[inline(always)]
fn try_allowlist(ctx: &XdpContext) -> u32 {
    let pkt = Packet {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    let frame_len = pkt.len();

    let Some(eth) = pkt.read::<EthHdr>(0, frame_len) else {
        return pass(Reason::NotIp);
    };
    let mut ether_type = u16::from_be(eth.ether_type);
    let mut offset = EthHdr::LEN;

    // Tags are in the frame only when the NIC did not strip them.
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        let Some(tag) = pkt.read::<[u8; 4]>(offset, frame_len) else {
            return drop(Reason::Malformed);
        };
        ether_type = u16::from_be_bytes([tag[2], tag[3]]);
        offset += 4;
    }

    match ether_type {
        ETH_P_IPV4 => ipv4(ctx, &pkt, offset),
        ETH_P_IPV6 => ipv6(ctx, &pkt, offset),
        ETH_P_8021Q | ETH_P_8021AD => drop(Reason::VlanTooDeep),
        _ => pass(Reason::NotIp),
    }
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, pkt: &Packet, l3: usize) -> u32 {
    let frame_len = pkt.len();
    let Some(ip) = pkt.read::<Ipv4Hdr>(l3, frame_len) else {
        return drop(Reason::Malformed);
    };
    let header_len = usize::from(ip.vihl & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes(ip.tot_len));
    if ip.vihl >> 4 != 4
        || header_len < Ipv4Hdr::LEN
        || total_len < header_len
        || l3 + total_len > frame_len
    {
        return drop(Reason::Malformed);
    }
    // Everything after the IP header is read within the datagram, never
    // from the link layer's padding.
    let l3_end = l3 + total_len;

    let frags = u16::from_be_bytes(ip.frags);
    if frags & 0x1fff != 0 {
        // A non-first fragment carries no ports. Its first fragment is judged
        // by its ports, and without it the datagram cannot be reassembled.
        return pass(Reason::Fragment);
    }
    let first_fragment = frags & 0x2000 != 0;
    let source = Source::V4(ip.src_addr);

    let mut proto = ip.proto;
    let mut l4 = l3 + header_len;
    if proto == IPPROTO_AH {
        // The ports sit behind the authentication header.
        let Some(ah) = pkt.read::<[u8; 2]>(l4, l3_end) else {
            return short_l4(first_fragment);
        };
        proto = ah[0];
        l4 += (usize::from(ah[1]) + 2) * 4;
        // A second authentication header would hide the ports behind a
        // chain this parser does not follow: refused, as an IPv6 chain past
        // its bound is. Passing it as "other protocol" was a bypass.
        if proto == IPPROTO_AH {
            return drop(Reason::ExtChain);
        }
    }
    transport(ctx, pkt, source, proto, l4, l3_end, first_fragment)
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, pkt: &Packet, l3: usize) -> u32 {
    let frame_len = pkt.len();
    let Some(ip) = pkt.read::<Ipv6Hdr>(l3, frame_len) else {
        return drop(Reason::Malformed);
    };
    let payload_len = usize::from(u16::from_be_bytes(ip.payload_len));
    if ip.vcf[0] >> 4 != 6 || l3 + Ipv6Hdr::LEN + payload_len > frame_len {
        return drop(Reason::Malformed);
    }
    let l3_end = l3 + Ipv6Hdr::LEN + payload_len;
    let source = Source::V6(ip.src_addr);

    let mut next = ip.next_hdr;
    let mut offset = l3 + Ipv6Hdr::LEN;
    let mut first_fragment = false;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let Some(ext) = pkt.read::<[u8; 2]>(offset, l3_end) else {
                    return drop(Reason::ExtChain);
                };
                next = ext[0];
                offset += (usize::from(ext[1]) + 1) * 8;
            }
            IPPROTO_AH => {
                let Some(ext) = pkt.read::<[u8; 2]>(offset, l3_end) else {
                    return drop(Reason::ExtChain);
                };
                next = ext[0];
                offset += (usize::from(ext[1]) + 2) * 4;
            }
            IPPROTO_FRAGMENT => {
                let Some(frag) = pkt.read::<[u8; 8]>(offset, l3_end) else {
                    return drop(Reason::ExtChain);
                };
                let offset_and_flags = u16::from_be_bytes([frag[2], frag[3]]);
                if offset_and_flags & 0xfff8 != 0 {
                    return pass(Reason::Fragment);
                }
                first_fragment = offset_and_flags & 1 != 0;
                next = frag[0];
                offset += 8;
            }
            _ => break,
        }
    }
    if matches!(
        next,
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT
    ) {
        return drop(Reason::ExtChain);
    }
    transport(ctx, pkt, source, next, offset, l3_end, first_fragment)
}

/// A port-carrying header too short to hold its ports.
#[inline(always)]
fn short_l4(first_fragment: bool) -> u32 {
    if first_fragment {
        drop(Reason::ShortFragment)
    } else {
        drop(Reason::Malformed)
    }
}

#[inline(always)]
fn transport(
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
        count_service(service, |c| {
            c.passed += 1;
            c.passed_bytes += bytes;
        });
        return XDP_PASS;
    }

    if entry & PORT_MONITOR != 0 {
        count_service(service, |c| c.would_drop += 1);
        send_event(control, EVENT_WOULD_DROP, service, proto, port, source);
        return XDP_PASS;
    }

    count_service(service, |c| {
        c.dropped += 1;
        c.dropped_bytes += bytes;
    });
    send_event(control, EVENT_DROP, service, proto, port, source);
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
fn pass(reason: Reason) -> u32 {
    count_reason(reason);
    XDP_PASS
}

#[inline(always)]
fn drop(reason: Reason) -> u32 {
    count_reason(reason);
    XDP_DROP
}

#[inline(always)]
fn count_service(service: u32, update: impl FnOnce(&mut ServiceCounters)) {
    if let Some(counters) = COUNTERS.get_ptr_mut(service) {
        // SAFETY: a per-CPU array slot of this CPU, valid for the program's run.
        update(unsafe { &mut *counters });
    }
}

/// Sends a drop event unless this CPU already sent its share this second.
/// Under a flood most drops are only counted: an event per packet would cost
/// several times the drop itself. Once the budget is spent, the clock is read
/// again only every `skip` drops, so a limited drop costs one per-CPU lookup.
#[inline(always)]
fn send_event(control: &Control, kind: u8, service: u32, proto: u8, port: u16, source: Source) {
    if control.flags & CONTROL_EVENTS_OFF != 0 {
        return;
    }
    let Some(limiter) = EVENT_LIMITER.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a per-CPU array slot of this CPU, valid for the program's run.
    let limiter = unsafe { &mut *limiter };
    if limiter.skip > 0 {
        limiter.skip -= 1;
        limiter.rate_limited += 1;
        return;
    }
    // SAFETY: a helper without preconditions (Linux 5.11+); the coarse clock
    // is cheaper and a tick's precision is plenty for a one-second window.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if now.wrapping_sub(limiter.window_start_ns) >= ONE_SECOND_NS {
        limiter.window_start_ns = now;
        limiter.sent_in_window = 0;
    }
    let budget = u64::from(control.events_per_sec);
    if limiter.sent_in_window >= budget {
        limiter.rate_limited += 1;
        limiter.skip = budget.clamp(64, 4096);
        return;
    }
    limiter.sent_in_window += 1;

    let (family, addr) = match source {
        Source::V4(a) => (
            FAMILY_V4,
            [a[0], a[1], a[2], a[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ),
        Source::V6(a) => (FAMILY_V6, a),
    };
    let Some(mut entry) = EVENTS.reserve::<DropEvent>(0) else {
        limiter.ring_full += 1;
        return;
    };
    entry.write(DropEvent {
        ts_ns: now,
        service,
        port,
        proto,
        family,
        kind,
        _pad: [0; 7],
        addr,
    });
    entry.submit(0);
    limiter.sent += 1;
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
