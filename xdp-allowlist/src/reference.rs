//! A pure-Rust reference of the policy the kernel program enforces.
//!
//! [`classify`] judges one Ethernet frame against a [`ReferencePolicy`] built
//! from a [`Config`], and says what the kernel program does with it: the
//! verdict, which `Reason` counter moves, and which service counter moves.
//! It is written from the packet bytes up, on plain slices, without the
//! kernel program's types, so that the differential test (`tests/tests/
//! differential.rs`) compares two independent readings of the same policy
//! packet by packet. Every decision carries a one-line comment; the README's
//! "Packet handling" section states the same decisions for users.
//!
//! Nothing here needs root or a kernel.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use xdp_allowlist_common::Reason;

use crate::config::{Config, ServiceMode, TunnelPolicy};

/// What happens to a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
}

impl Verdict {
    /// The XDP action the kernel program returns for this verdict
    /// (`XDP_DROP` = 1, `XDP_PASS` = 2).
    pub const fn xdp_action(self) -> u32 {
        match self {
            Verdict::Drop => 1,
            Verdict::Pass => 2,
        }
    }
}

/// What a service's counters record for a packet to one of its ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceAction {
    /// The source is allowed: `passed` and `passed_bytes`.
    Passed,
    /// Refused in enforce mode: `dropped` and `dropped_bytes`.
    Dropped,
    /// Refused in monitor mode: `would_drop`, and the packet passes.
    WouldDrop,
}

/// A packet judged by a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceHit {
    /// Index into [`ReferencePolicy::services`].
    pub service: usize,
    pub action: ServiceAction,
    /// Bytes from the transport header to the end of the IP datagram.
    pub bytes: u64,
}

/// Everything the kernel program records about one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    /// The `Reason` counter of a packet judged without a service; `None`
    /// when a service judged it.
    pub reason: Option<Reason>,
    /// An IPv4-mapped or IPv4-compatible IPv6 source was looked up in an
    /// allowlist (and refused): `Reason::MappedSource` moves as well.
    pub mapped_source: bool,
    pub service: Option<ServiceHit>,
}

impl Outcome {
    fn pass(reason: Reason) -> Self {
        Self {
            verdict: Verdict::Pass,
            reason: Some(reason),
            mapped_source: false,
            service: None,
        }
    }

    fn drop(reason: Reason) -> Self {
        Self {
            verdict: Verdict::Drop,
            reason: Some(reason),
            mapped_source: false,
            service: None,
        }
    }
}

/// One service as the reference sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReferenceService {
    pub name: String,
    pub v4: Vec<Ipv4Net>,
    pub v6: Vec<Ipv6Net>,
    pub monitor: bool,
}

/// The policy of one configuration: who may reach which protected port.
#[derive(Clone, Debug)]
pub struct ReferencePolicy {
    /// Services in name order.
    pub services: Vec<ReferenceService>,
    /// `ports[protocol slot * 65536 + port]`: service index + 1, or 0 when
    /// the port is not protected. Slots: 0 TCP, 1 UDP, 2 SCTP.
    ports: Vec<u16>,
    /// `tunnel_policy = "drop"`.
    tunnel_drop: bool,
    /// Every allowed CIDR of every service: tunnels from these pass.
    union: ReferenceService,
}

impl ReferencePolicy {
    pub fn from_config(config: &Config) -> Self {
        let Config {
            services,
            tunnel_policy,
            ..
        } = config;
        let mut ports = vec![0u16; 3 * 65536];
        let mut refs = Vec::with_capacity(services.len());
        let mut union = ReferenceService {
            name: String::new(),
            v4: Vec::new(),
            v6: Vec::new(),
            monitor: false,
        };
        for (index, (name, service)) in services.iter().enumerate() {
            let mut entry = ReferenceService {
                name: name.clone(),
                v4: Vec::new(),
                v6: Vec::new(),
                monitor: service.mode == ServiceMode::Monitor,
            };
            for allow in &service.allow {
                match allow.net {
                    IpNet::V4(net) => entry.v4.push(net),
                    IpNet::V6(net) => entry.v6.push(net),
                }
            }
            union.v4.extend_from_slice(&entry.v4);
            union.v6.extend_from_slice(&entry.v6);
            for range in &service.ports {
                let slot = match range.protocol.number() {
                    TCP => 0,
                    UDP => 1,
                    _ => 2,
                };
                for port in range.ports() {
                    ports[slot * 65536 + usize::from(port)] = (index + 1) as u16;
                }
            }
            refs.push(entry);
        }
        Self {
            services: refs,
            ports,
            tunnel_drop: *tunnel_policy == TunnelPolicy::Drop,
            union,
        }
    }

    /// Index of the service that protects `port` of `proto`, if any.
    fn protecting(&self, proto: u8, port: u16) -> Option<usize> {
        let slot = match proto {
            TCP => 0,
            UDP => 1,
            SCTP => 2,
            _ => return None,
        };
        match self.ports[slot * 65536 + usize::from(port)] {
            0 => None,
            id => Some(usize::from(id) - 1),
        }
    }
}

const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;

/// The source address of the datagram.
#[derive(Clone, Copy)]
enum Src {
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

/// Big-endian u16 at `at`, or `None` past the end of `bytes`.
fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    let hi = *bytes.get(at)?;
    let lo = *bytes.get(at.checked_add(1)?)?;
    Some(u16::from_be_bytes([hi, lo]))
}

/// Judges one Ethernet frame (as XDP sees it) against `policy`.
pub fn classify(frame: &[u8], policy: &ReferencePolicy) -> Outcome {
    // No room for an Ethernet header: nothing an IP stack would take.
    let Some(mut ether_type) = be16(frame, 12) else {
        return Outcome::pass(Reason::NotIp);
    };
    let mut at = 14;

    // Up to two VLAN tags (802.1ad outer, 802.1Q inner) are skipped; a third
    // is refused rather than guessed at, and a cut tag is malformed.
    let mut tags = 0;
    while ether_type == 0x8100 || ether_type == 0x88a8 {
        if tags == 2 {
            return Outcome::drop(Reason::VlanTooDeep);
        }
        if frame.len() < at + 4 {
            return Outcome::drop(Reason::Malformed);
        }
        ether_type = u16::from_be_bytes([frame[at + 2], frame[at + 3]]);
        at += 4;
        tags += 1;
    }

    match ether_type {
        0x0800 => ipv4(&frame[at..], policy),
        0x86dd => ipv6(&frame[at..], policy),
        // ARP and every other ethertype: not ours to judge.
        _ => Outcome::pass(Reason::NotIp),
    }
}

/// `l3` runs from the IPv4 header to the end of the frame.
fn ipv4(l3: &[u8], policy: &ReferencePolicy) -> Outcome {
    // A header that cannot be read, or whose lengths contradict each other
    // or the frame, is dropped whatever it is addressed to.
    if l3.len() < 20 {
        return Outcome::drop(Reason::Malformed);
    }
    let version = l3[0] >> 4;
    let header_len = usize::from(l3[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([l3[2], l3[3]]));
    if version != 4 || header_len < 20 || total_len < header_len || total_len > l3.len() {
        return Outcome::drop(Reason::Malformed);
    }
    // From here on only the datagram counts, never the link padding after it.
    let datagram = &l3[..total_len];

    // Only the offset bits tell a non-first fragment; it carries no ports
    // and its first fragment was judged by them.
    let frag = u16::from_be_bytes([datagram[6], datagram[7]]);
    if frag & 0x1fff != 0 {
        return Outcome::pass(Reason::Fragment);
    }
    let first_fragment = frag & 0x2000 != 0;
    let src = Src::V4(Ipv4Addr::new(
        datagram[12],
        datagram[13],
        datagram[14],
        datagram[15],
    ));

    // Options of any legal length push the transport header back.
    let mut proto = datagram[9];
    let mut l4 = header_len;
    if proto == 51 {
        // One authentication header is stepped over (its length counts
        // 4-byte words, minus 2); a cut one hides the ports.
        let (Some(&next), Some(&len)) = (datagram.get(l4), datagram.get(l4 + 1)) else {
            return short_transport(first_fragment);
        };
        proto = next;
        l4 += (usize::from(len) + 2) * 4;
        // A second authentication header is a chain the filter does not
        // follow: refused, as an IPv6 chain past the bound is.
        if proto == 51 {
            return Outcome::drop(Reason::ExtChain);
        }
    }
    transport(datagram, l4, proto, src, first_fragment, policy)
}

/// `l3` runs from the IPv6 header to the end of the frame.
fn ipv6(l3: &[u8], policy: &ReferencePolicy) -> Outcome {
    if l3.len() < 40 {
        return Outcome::drop(Reason::Malformed);
    }
    let payload_len = usize::from(u16::from_be_bytes([l3[4], l3[5]]));
    if l3[0] >> 4 != 6 || 40 + payload_len > l3.len() {
        return Outcome::drop(Reason::Malformed);
    }
    let datagram = &l3[..40 + payload_len];
    let mut src = [0u8; 16];
    src.copy_from_slice(&datagram[8..24]);
    let src = Src::V6(Ipv6Addr::from(src));

    // Walk at most eight extension headers; every one must be readable
    // within the datagram.
    let mut next = datagram[6];
    let mut at = 40usize;
    let mut first_fragment = false;
    for _ in 0..8 {
        match next {
            // Hop-by-hop, routing, destination options: length in 8-byte
            // units, not counting the first 8.
            0 | 43 | 60 => {
                let (Some(&n), Some(&len)) = (datagram.get(at), datagram.get(at + 1)) else {
                    return Outcome::drop(Reason::ExtChain);
                };
                next = n;
                at += (usize::from(len) + 1) * 8;
            }
            // Authentication header: length in 4-byte units, minus 2.
            51 => {
                let (Some(&n), Some(&len)) = (datagram.get(at), datagram.get(at + 1)) else {
                    return Outcome::drop(Reason::ExtChain);
                };
                next = n;
                at += (usize::from(len) + 2) * 4;
            }
            // Fragment header: always 8 bytes, all of which must be there.
            44 => {
                if datagram.len() < at + 8 {
                    return Outcome::drop(Reason::ExtChain);
                }
                let offset_and_flags = u16::from_be_bytes([datagram[at + 2], datagram[at + 3]]);
                // A non-first fragment carries no ports, as in IPv4.
                if offset_and_flags >> 3 != 0 {
                    return Outcome::pass(Reason::Fragment);
                }
                first_fragment = offset_and_flags & 1 != 0;
                next = datagram[at];
                at += 8;
            }
            _ => break,
        }
    }
    // Still inside the chain after eight headers: refused.
    if matches!(next, 0 | 43 | 44 | 51 | 60) {
        return Outcome::drop(Reason::ExtChain);
    }
    transport(datagram, at, next, src, first_fragment, policy)
}

/// A TCP, UDP or SCTP header too short to hold the ports.
fn short_transport(first_fragment: bool) -> Outcome {
    if first_fragment {
        // The rest of the datagram follows in fragments the filter passes.
        Outcome::drop(Reason::ShortFragment)
    } else {
        Outcome::drop(Reason::Malformed)
    }
}

/// Judges the transport header of `proto` at `l4` within `datagram`.
fn transport(
    datagram: &[u8],
    l4: usize,
    proto: u8,
    src: Src,
    first_fragment: bool,
    policy: &ReferencePolicy,
) -> Outcome {
    match proto {
        TCP | UDP | SCTP => {}
        // ICMP errors and neighbour discovery keep the network working;
        // either ICMP number is accepted under either IP version.
        1 | 58 => return Outcome::pass(Reason::Icmp),
        // IP-in-IP, IPv6-in-IPv4, GRE and ESP hide the ports they carry:
        // the tunnel policy decides, by the union of every allowlist.
        4 | 41 | 47 | 50 => return tunnel(src, policy),
        // No Next Header (59) and every other protocol carry no ports.
        _ => return Outcome::pass(Reason::OtherProtocol),
    }

    // All three start with the source port, then the destination port.
    let Some(port) = (datagram.len() >= l4 + 4)
        .then(|| be16(datagram, l4 + 2))
        .flatten()
    else {
        return short_transport(first_fragment);
    };
    let Some(service) = policy.protecting(proto, port) else {
        return Outcome::pass(Reason::Unprotected);
    };
    let bytes = (datagram.len() - l4) as u64;

    let entry = &policy.services[service];
    let (allowed, mapped_source) = admits(entry, src);
    let (verdict, action) = if allowed {
        (Verdict::Pass, ServiceAction::Passed)
    } else if entry.monitor {
        // Monitor mode: count what would be dropped, drop nothing.
        (Verdict::Pass, ServiceAction::WouldDrop)
    } else {
        (Verdict::Drop, ServiceAction::Dropped)
    };
    Outcome {
        verdict,
        reason: None,
        mapped_source,
        service: Some(ServiceHit {
            service,
            action,
            bytes,
        }),
    }
}

fn tunnel(src: Src, policy: &ReferencePolicy) -> Outcome {
    // Policy "pass" (the default) lets every tunnel through unexamined.
    if !policy.tunnel_drop {
        return Outcome::pass(Reason::TunnelPassed);
    }
    let (allowed, mapped_source) = admits(&policy.union, src);
    let mut outcome = if allowed {
        Outcome::pass(Reason::TunnelPassed)
    } else {
        Outcome::drop(Reason::TunnelDropped)
    };
    outcome.mapped_source = mapped_source;
    outcome
}

/// Is `src` in `service`'s allowlist? The second value says an IPv4-mapped
/// or IPv4-compatible IPv6 source was refused as such.
fn admits(service: &ReferenceService, src: Src) -> (bool, bool) {
    match src {
        Src::V4(addr) => (service.v4.iter().any(|net| net.contains(&addr)), false),
        Src::V6(addr) => {
            // `::ffff:a.b.c.d` and `::a.b.c.d` reach IPv4 sockets: no
            // entry of either family ever admits them.
            let segments = addr.segments();
            let embedded = segments[..5].iter().all(|&s| s == 0)
                && (segments[5] == 0xffff || segments[5] == 0);
            if embedded {
                return (false, true);
            }
            (service.v6.iter().any(|net| net.contains(&addr)), false)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const CONFIG: &str = r#"
interfaces = ["lo"]
[services.admin]
ports = ["tcp/8443", "tcp/22", "sctp/3868"]
allow = ["203.0.113.0/24", "2001:db8:100::/48"]
[services.api]
ports = ["tcp/443"]
allow = ["198.51.100.0/24"]
[services.watch]
ports = ["udp/5353"]
allow = ["198.51.100.0/24"]
mode = "monitor"
"#;

    fn policy(text: &str) -> ReferencePolicy {
        let loaded = crate::config::parse_str(text, Path::new("test.toml"))
            .unwrap_or_else(|e| panic!("test config refused: {e}"));
        ReferencePolicy::from_config(&loaded.config)
    }

    fn eth(ether_type: u16, tags: &[u16], payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        let mut types: Vec<u16> = tags.to_vec();
        types.push(ether_type);
        frame.extend_from_slice(&types[0].to_be_bytes());
        for t in &types[1..] {
            frame.extend_from_slice(&[0, 10]);
            frame.extend_from_slice(&t.to_be_bytes());
        }
        frame.extend_from_slice(payload);
        frame
    }

    fn ports(dport: u16) -> Vec<u8> {
        let mut l4 = vec![0u8; 20];
        l4[0..2].copy_from_slice(&40000u16.to_be_bytes());
        l4[2..4].copy_from_slice(&dport.to_be_bytes());
        l4
    }

    fn v4(src: [u8; 4], proto: u8, options: usize, frag: u16, l4: &[u8]) -> Vec<u8> {
        let header_len = 20 + options;
        let mut ip = vec![0u8; header_len];
        ip[0] = 0x40 | (header_len / 4) as u8;
        ip[2..4].copy_from_slice(&((header_len + l4.len()) as u16).to_be_bytes());
        ip[6..8].copy_from_slice(&frag.to_be_bytes());
        ip[8] = 64;
        ip[9] = proto;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&[198, 51, 100, 1]);
        ip.extend_from_slice(l4);
        eth(0x0800, &[], &ip)
    }

    fn v6(src: Ipv6Addr, next: u8, rest: &[u8]) -> Vec<u8> {
        let mut ip = vec![0u8; 40];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&(rest.len() as u16).to_be_bytes());
        ip[6] = next;
        ip[7] = 64;
        ip[8..24].copy_from_slice(&src.octets());
        ip[24..40].copy_from_slice(
            &"2001:db8::1"
                .parse::<Ipv6Addr>()
                .map(|a| a.octets())
                .unwrap_or([0; 16]),
        );
        ip.extend_from_slice(rest);
        eth(0x86dd, &[], &ip)
    }

    /// `count` destination-options headers, then `last`.
    fn chain(count: usize, last: u8, tail: &[u8]) -> (u8, Vec<u8>) {
        let mut bytes = Vec::new();
        for i in 0..count {
            let next = if i + 1 == count { last } else { 60 };
            bytes.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
        }
        bytes.extend_from_slice(tail);
        (if count == 0 { last } else { 60 }, bytes)
    }

    const ALLOWED: [u8; 4] = [203, 0, 113, 5];
    const REFUSED: [u8; 4] = [198, 51, 100, 77];

    fn verdict(frame: &[u8], p: &ReferencePolicy) -> Verdict {
        classify(frame, p).verdict
    }

    #[test]
    fn ports_decide_by_protocol_and_source() {
        let p = policy(CONFIG);
        assert_eq!(
            verdict(&v4(ALLOWED, TCP, 0, 0, &ports(22)), &p),
            Verdict::Pass
        );
        assert_eq!(
            verdict(&v4(REFUSED, TCP, 0, 0, &ports(22)), &p),
            Verdict::Drop
        );
        assert_eq!(
            verdict(&v4(REFUSED, TCP, 0, 0, &ports(443)), &p),
            Verdict::Pass
        );
        assert_eq!(
            verdict(&v4(ALLOWED, TCP, 0, 0, &ports(443)), &p),
            Verdict::Drop
        );
        // udp/443 is not tcp/443.
        let udp = classify(&v4(ALLOWED, UDP, 0, 0, &ports(443)), &p);
        assert_eq!(
            (udp.verdict, udp.reason),
            (Verdict::Pass, Some(Reason::Unprotected))
        );
        assert_eq!(
            verdict(&v4(REFUSED, SCTP, 0, 0, &ports(3868)), &p),
            Verdict::Drop
        );
    }

    #[test]
    fn options_shift_the_ports() {
        let p = policy(CONFIG);
        for options in (0..=40).step_by(4) {
            let out = classify(&v4(REFUSED, TCP, options, 0, &ports(22)), &p);
            assert_eq!(out.verdict, Verdict::Drop, "{options} bytes of options");
            assert_eq!(out.service.map(|s| s.bytes), Some(20));
        }
    }

    #[test]
    fn malformed_ipv4_is_dropped() {
        let p = policy(CONFIG);
        let mut frame = v4(ALLOWED, UDP, 0, 0, &ports(53));
        frame[14] = 0x44;
        assert_eq!(classify(&frame, &p).reason, Some(Reason::Malformed));
        let mut frame = v4(ALLOWED, UDP, 0, 0, &ports(53));
        frame[16..18].copy_from_slice(&200u16.to_be_bytes());
        assert_eq!(classify(&frame, &p).reason, Some(Reason::Malformed));
    }

    #[test]
    fn fragments() {
        let p = policy(CONFIG);
        let later = classify(&v4(REFUSED, TCP, 0, 100, &ports(22)), &p);
        assert_eq!(
            (later.verdict, later.reason),
            (Verdict::Pass, Some(Reason::Fragment))
        );
        let short = classify(&v4(REFUSED, TCP, 0, 0x2000, &[0, 1, 0]), &p);
        assert_eq!(
            (short.verdict, short.reason),
            (Verdict::Drop, Some(Reason::ShortFragment))
        );
        let first = classify(&v4(REFUSED, TCP, 0, 0x2000, &ports(22)[..8]), &p);
        assert_eq!(first.verdict, Verdict::Drop);
        // The reserved and DF bits do not make a fragment.
        let df = classify(&v4(ALLOWED, TCP, 0, 0xc000, &ports(22)), &p);
        assert_eq!(df.verdict, Verdict::Pass);
    }

    #[test]
    fn ipv4_authentication_headers() {
        let p = policy(CONFIG);
        let mut ah = vec![TCP, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2];
        ah.extend_from_slice(&ports(22));
        assert_eq!(verdict(&v4(REFUSED, 51, 0, 0, &ah), &p), Verdict::Drop);
        assert_eq!(verdict(&v4(ALLOWED, 51, 0, 0, &ah), &p), Verdict::Pass);
        let mut twice = vec![51, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2];
        twice.extend_from_slice(&ah);
        assert_eq!(
            classify(&v4(ALLOWED, 51, 0, 0, &twice), &p).reason,
            Some(Reason::ExtChain)
        );
    }

    #[test]
    fn vlan_tags() {
        let p = policy(CONFIG);
        let ip = &v4(REFUSED, TCP, 0, 0, &ports(22))[14..];
        assert_eq!(verdict(&eth(0x0800, &[0x8100], ip), &p), Verdict::Drop);
        assert_eq!(
            verdict(&eth(0x0800, &[0x88a8, 0x8100], ip), &p),
            Verdict::Drop
        );
        let deep = classify(&eth(0x0800, &[0x88a8, 0x8100, 0x8100], ip), &p);
        assert_eq!(deep.reason, Some(Reason::VlanTooDeep));
        let allowed = &v4(ALLOWED, TCP, 0, 0, &ports(22))[14..];
        assert_eq!(
            verdict(&eth(0x0800, &[0x88a8, 0x8100], allowed), &p),
            Verdict::Pass
        );
        let arp = classify(&eth(0x0806, &[], &[0; 28]), &p);
        assert_eq!(
            (arp.verdict, arp.reason),
            (Verdict::Pass, Some(Reason::NotIp))
        );
    }

    #[test]
    fn ipv6_chains_and_mapped_sources() {
        let p = policy(CONFIG);
        let allowed: Ipv6Addr = "2001:db8:100::5".parse().unwrap_or(Ipv6Addr::UNSPECIFIED);
        let refused: Ipv6Addr = "2001:db8:200::5".parse().unwrap_or(Ipv6Addr::UNSPECIFIED);
        for count in 0..=8 {
            let (next, rest) = chain(count, TCP, &ports(22));
            assert_eq!(
                verdict(&v6(allowed, next, &rest), &p),
                Verdict::Pass,
                "{count}"
            );
            assert_eq!(
                verdict(&v6(refused, next, &rest), &p),
                Verdict::Drop,
                "{count}"
            );
        }
        let (next, rest) = chain(9, TCP, &ports(22));
        assert_eq!(
            classify(&v6(allowed, next, &rest), &p).reason,
            Some(Reason::ExtChain)
        );
        let (next, rest) = chain(2, 59, &[]);
        assert_eq!(
            classify(&v6(refused, next, &rest), &p).reason,
            Some(Reason::OtherProtocol)
        );

        let mapped: Ipv6Addr = "::ffff:203.0.113.5"
            .parse()
            .unwrap_or(Ipv6Addr::UNSPECIFIED);
        let out = classify(&v6(mapped, TCP, &ports(22)), &p);
        assert_eq!((out.verdict, out.mapped_source), (Verdict::Drop, true));
        let compatible: Ipv6Addr = "::203.0.113.5".parse().unwrap_or(Ipv6Addr::UNSPECIFIED);
        assert_eq!(verdict(&v6(compatible, TCP, &ports(22)), &p), Verdict::Drop);
        assert_eq!(verdict(&v6(mapped, TCP, &ports(80)), &p), Verdict::Pass);
    }

    #[test]
    fn tunnels_follow_the_tunnel_policy() {
        // Both test ranges are allowed somewhere in CONFIG; narrow them so
        // that REFUSED is in no allowlist at all.
        let narrow = CONFIG.replace("198.51.100.0/24", "198.51.100.0/26");
        let pass = policy(&narrow);
        let drop = policy(&format!("tunnel_policy = \"drop\"\n{narrow}"));
        for proto in [4, 41, 47, 50] {
            let refused = v4(REFUSED, proto, 0, 0, &[0; 40]);
            let allowed = v4(ALLOWED, proto, 0, 0, &[0; 40]);
            assert_eq!(classify(&refused, &pass).reason, Some(Reason::TunnelPassed));
            assert_eq!(
                classify(&refused, &drop).reason,
                Some(Reason::TunnelDropped)
            );
            assert_eq!(classify(&allowed, &drop).verdict, Verdict::Pass);
        }
    }

    #[test]
    fn monitor_passes_and_counts() {
        let p = policy(CONFIG);
        let out = classify(&v4(ALLOWED, UDP, 0, 0, &ports(5353)), &p);
        assert_eq!(out.verdict, Verdict::Pass);
        assert_eq!(
            out.service.map(|s| s.action),
            Some(ServiceAction::WouldDrop)
        );
    }

    #[test]
    fn every_truncation_is_judged_without_panicking() {
        let p = policy(CONFIG);
        let full = v4(REFUSED, TCP, 8, 0, &ports(22));
        for len in 0..full.len() {
            let out = classify(&full[..len], &p);
            let expected = if len < 14 {
                Verdict::Pass
            } else {
                Verdict::Drop
            };
            assert_eq!(out.verdict, expected, "{len} bytes");
        }
    }
}
