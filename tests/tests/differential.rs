//! Differential fuzzing: the kernel program (through `BPF_PROG_TEST_RUN`)
//! and the reference classifier (`xdp_allowlist::reference`) judge the same
//! packets, and must agree on every verdict. At the end of each phase the
//! kernel's `Reason` and service counters must also equal what the
//! reference says they should have counted. Needs root.
//!
//! Packets are random and mutated: VLAN tags, IPv4 options and fragments,
//! IPv6 extension chains, AH, tunnels, ICMP, truncations (consistent and
//! not), bit flips and overwritten bytes, from sources allowed and refused,
//! to ports protected and not.
//!
//! `XA_FUZZ_SEED` sets the seed (printed on every run, and in every failure)
//! and `XA_FUZZ_PACKETS` the number of packets (default 1,000,000, split over
//! two configurations). Run with `--release --nocapture` to see the numbers.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};
use xdp_allowlist::{
    config::TunnelPolicy,
    reference::{classify, ReferencePolicy, ServiceAction, Verdict},
};
use xdp_allowlist_common::{Reason, ServiceCounters, REASON_COUNT};
use xdp_allowlist_tests::{kernel::Fixture, packets::*};

/// Phase one: tunnels dropped unless allowed, one service in monitor mode,
/// port ranges, allowlists that cover part of each test range.
const CONFIG_A: &str = r#"
interfaces = ["lo"]
tunnel_policy = "drop"
[services.admin]
ports = ["tcp/22", "tcp/8443", "sctp/3868"]
allow = ["203.0.113.0/25", "2001:db8:100::/48"]
[services.api]
ports = ["tcp/443", "udp/500-520"]
allow = ["198.51.100.0/26", "203.0.113.200/32", "2001:db8:200::/48"]
[services.watch]
ports = ["udp/53", "tcp/9000-9010", "sctp/9000"]
allow = ["198.51.100.128/25"]
mode = "monitor"
"#;

/// Phase two: tunnels pass, the monitor flag moves, lists change.
const CONFIG_B: &str = r#"
interfaces = ["lo"]
[services.admin]
ports = ["tcp/22", "udp/22", "sctp/3868"]
allow = ["203.0.113.128/25", "2001:db8:300::/40"]
mode = "monitor"
[services.api]
ports = ["tcp/443", "tcp/8443"]
allow = ["198.51.100.0/24", "2001:db8:100:1::/64"]
[services.watch]
ports = ["udp/53", "udp/443"]
allow = []
"#;

fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    match text.trim().parse() {
        Ok(value) => Some(value),
        Err(_) => panic!("{name}={text:?} is not a whole number"),
    }
}

/// Where the IP header sits in a generated frame, for length-aware mutations.
#[derive(Clone, Copy)]
enum L3 {
    V4(usize),
    V6(usize),
    None,
}

struct Gen {
    rng: StdRng,
    /// Protected (protocol, port) pairs of the configuration, plus neighbours.
    ports: Vec<(u8, u16)>,
}

impl Gen {
    fn chance(&mut self, percent: u32) -> bool {
        self.rng.gen_range(0..100) < percent
    }

    fn v4_source(&mut self) -> Ipv4Addr {
        let net = if self.rng.gen() {
            [203, 0, 113]
        } else {
            [198, 51, 100]
        };
        Ipv4Addr::new(net[0], net[1], net[2], self.rng.gen())
    }

    fn v6_source(&mut self) -> Ipv6Addr {
        let v4 = self.v4_source().octets();
        let low = u16::from_be_bytes([v4[2], v4[3]]);
        let high = u16::from_be_bytes([v4[0], v4[1]]);
        match self.rng.gen_range(0..10) {
            // IPv4-mapped and IPv4-compatible forms of the test ranges.
            0 => Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, high, low),
            1 => Ipv6Addr::new(0, 0, 0, 0, 0, 0, high, low),
            _ => {
                let third = *[0x100u16, 0x200, 0x300, 0x3ff, 0x400]
                    .choose(&mut self.rng)
                    .unwrap_or(&0x100);
                let fourth = if self.chance(50) { 1 } else { self.rng.gen() };
                Ipv6Addr::new(0x2001, 0xdb8, third, fourth, 0, 0, 0, self.rng.gen())
            }
        }
    }

    fn proto(&mut self) -> u8 {
        match self.rng.gen_range(0..100) {
            0..=29 => TCP,
            30..=44 => UDP,
            45..=54 => SCTP,
            55..=59 => ICMP,
            60..=64 => ICMPV6,
            65..=67 => IPIP,
            68..=70 => IPV6_IN_IP,
            71..=73 => GRE,
            74..=77 => ESP,
            78..=83 => AH,
            84..=86 => NO_NEXT_HEADER,
            87..=89 => *[0u8, 43, 44, 60].choose(&mut self.rng).unwrap_or(&0),
            _ => self.rng.gen(),
        }
    }

    fn dport(&mut self, proto: u8) -> u16 {
        if self.chance(65) {
            let matching: Vec<u16> = self
                .ports
                .iter()
                .filter(|(p, _)| *p == proto)
                .map(|(_, port)| *port)
                .collect();
            if let Some(port) = matching.choose(&mut self.rng) {
                return *port;
            }
        }
        if self.chance(50) {
            // The protected ports of the other protocols.
            if let Some((_, port)) = self.ports.choose(&mut self.rng) {
                return *port;
            }
        }
        self.rng.gen()
    }

    /// The transport part for `proto`.
    fn transport(&mut self, proto: u8) -> Vec<u8> {
        match proto {
            TCP | UDP | SCTP => {
                let dport = self.dport(proto);
                let mut bytes = ports_header(proto, self.rng.gen(), dport);
                let extra = self.rng.gen_range(0..16);
                bytes.extend((0..extra).map(|_| self.rng.gen::<u8>()));
                bytes
            }
            ESP => esp(),
            ICMP => icmpv4_echo(),
            ICMPV6 => icmpv6_packet_too_big(&[0; 48]),
            _ => {
                let len = self.rng.gen_range(0..48);
                (0..len).map(|_| self.rng.gen()).collect()
            }
        }
    }

    fn ext(&mut self) -> Ext {
        let units = if self.chance(80) {
            0
        } else {
            self.rng.gen_range(1..4)
        };
        match self.rng.gen_range(0..5) {
            0 => Ext::HopByHop { units },
            1 => Ext::Routing { units },
            2 => Ext::DestOpts { units },
            3 => Ext::Fragment {
                offset: if self.chance(70) {
                    0
                } else {
                    self.rng.gen_range(0..8192)
                },
                more: self.rng.gen(),
            },
            _ => Ext::Auth {
                icv_words: self.rng.gen_range(0..5),
            },
        }
    }

    /// A well-formed frame and where its IP header is.
    fn structured(&mut self) -> (Vec<u8>, L3) {
        let tags = match self.rng.gen_range(0..100) {
            0..=69 => 0,
            70..=81 => 1,
            82..=93 => 2,
            _ => 3,
        };
        let tpids: Vec<u16> = (0..tags)
            .map(|_| {
                if self.rng.gen() {
                    TPID_8021Q
                } else {
                    TPID_8021AD
                }
            })
            .collect();
        let l3_at = ETH_LEN + 4 * tags;

        let roll = self.rng.gen_range(0..100);
        let (ether_type, ip, l3) = if roll < 50 {
            let proto = self.proto();
            let mut ip = Ipv4::new(self.v4_source(), Ipv4Addr::new(198, 51, 100, 1), proto);
            if self.chance(40) {
                let words = self.rng.gen_range(1..=10);
                ip.options = (0..words * 4).map(|_| self.rng.gen()).collect();
            }
            if self.chance(30) {
                ip.dont_fragment = self.rng.gen();
                ip.more_fragments = self.rng.gen();
                ip.fragment_offset = if self.rng.gen() {
                    0
                } else {
                    self.rng.gen_range(0..8192)
                };
            }
            let payload = if proto == AH {
                // One AH (or, now and then, two) in front of the ports.
                let inner = self.proto();
                let mut bytes = Vec::new();
                let twice = self.chance(20);
                if twice {
                    bytes.extend(
                        Ext::Auth {
                            icv_words: self.rng.gen_range(0..3),
                        }
                        .build(AH),
                    );
                }
                bytes.extend(
                    Ext::Auth {
                        icv_words: self.rng.gen_range(0..4),
                    }
                    .build(inner),
                );
                bytes.extend(self.transport(inner));
                bytes
            } else {
                self.transport(proto)
            };
            (ETH_IPV4, ip.build(&payload), L3::V4(l3_at))
        } else if roll < 95 {
            let proto = self.proto();
            let count = match self.rng.gen_range(0..100) {
                0..=44 => 0,
                45..=84 => self.rng.gen_range(1..=4),
                _ => self.rng.gen_range(5..=10),
            };
            let exts: Vec<Ext> = (0..count).map(|_| self.ext()).collect();
            let ip = Ipv6::new(
                self.v6_source(),
                Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1),
                proto,
            )
            .with_exts(&exts);
            let payload = self.transport(proto);
            (ETH_IPV6, ip.build(&payload), L3::V6(l3_at))
        } else {
            let body = arp_request(self.v4_source(), Ipv4Addr::new(198, 51, 100, 1));
            let ether_type = if self.rng.gen() {
                ETH_ARP
            } else {
                self.rng.gen()
            };
            (ether_type, body, L3::None)
        };

        let mut frame = ethernet(ether_type, &tpids, &ip);
        if self.chance(15) {
            // Link-layer padding after the datagram.
            let pad = self.rng.gen_range(1..16);
            frame.extend((0..pad).map(|_| self.rng.gen::<u8>()));
        }
        (frame, l3)
    }

    /// Cuts the datagram and rewrites its length field to match, so that
    /// only the headers inside are short.
    fn consistent_cut(&mut self, frame: &mut Vec<u8>, l3: L3) {
        let (at, fixed, field) = match l3 {
            L3::V4(at) => (at, 0usize, at + 2),
            L3::V6(at) => (at, 40, at + 4),
            L3::None => return,
        };
        if frame.len() <= at + 20 {
            return;
        }
        let len = self.rng.gen_range(at + 20..frame.len());
        frame.truncate(len);
        let value = (len - at).saturating_sub(fixed) as u16;
        frame[field..field + 2].copy_from_slice(&value.to_be_bytes());
    }

    fn mutate(&mut self, frame: &mut Vec<u8>, l3: L3) {
        for _ in 0..self.rng.gen_range(1..=3) {
            if frame.is_empty() {
                return;
            }
            match self.rng.gen_range(0..100) {
                0..=19 => {
                    let len = if self.chance(3) {
                        self.rng.gen_range(0..ETH_LEN.min(frame.len()))
                    } else {
                        self.rng.gen_range(ETH_LEN.min(frame.len())..=frame.len())
                    };
                    frame.truncate(len);
                }
                20..=39 => self.consistent_cut(frame, l3),
                40..=69 => {
                    // Flip a bit, mostly in the headers.
                    let span = frame
                        .len()
                        .min(if self.chance(80) { 96 } else { usize::MAX });
                    let at = self.rng.gen_range(0..span);
                    frame[at] ^= 1 << self.rng.gen_range(0..8);
                }
                70..=89 => {
                    let span = frame.len().min(96);
                    let at = self.rng.gen_range(0..span);
                    frame[at] = self.rng.gen();
                }
                _ => {
                    // Lengths and header-length fields set at random.
                    let field = match l3 {
                        L3::V4(at) => *[at, at + 2, at + 3].choose(&mut self.rng).unwrap_or(&at),
                        L3::V6(at) => *[at + 4, at + 5, at + 6]
                            .choose(&mut self.rng)
                            .unwrap_or(&at),
                        L3::None => 12,
                    };
                    if let Some(byte) = frame.get_mut(field) {
                        *byte = self.rng.gen();
                    }
                }
            }
        }
    }

    fn packet(&mut self) -> Vec<u8> {
        let roll = self.rng.gen_range(0..100);
        if roll < 3 {
            // Pure noise behind a real ethertype.
            let ether_type = *[ETH_IPV4, ETH_IPV6, TPID_8021Q, TPID_8021AD, ETH_ARP]
                .choose(&mut self.rng)
                .unwrap_or(&ETH_IPV4);
            let len = self.rng.gen_range(0..120);
            let noise: Vec<u8> = (0..len).map(|_| self.rng.gen()).collect();
            return ethernet(ether_type, &[], &noise);
        }
        let (mut frame, l3) = self.structured();
        if roll < 55 {
            self.mutate(&mut frame, l3);
        }
        frame
    }
}

/// What the reference says the counters must have counted.
#[derive(Default)]
struct Expected {
    reasons: [u64; REASON_COUNT as usize],
    /// Per service index: passed, passed_bytes, dropped, dropped_bytes, would_drop.
    services: Vec<[u64; 5]>,
    verdicts: [u64; 2],
    refused_by_kernel: u64,
}

fn counters(c: &ServiceCounters) -> [u64; 5] {
    [
        c.passed,
        c.passed_bytes,
        c.dropped,
        c.dropped_bytes,
        c.would_drop,
    ]
}

fn run_phase(fx: &Fixture, gen: &mut Gen, count: u64, seed: u64, phase: &str) {
    let policy = ReferencePolicy::from_config(fx.config());
    gen.ports = protected_ports(fx);
    let mut expected = Expected {
        services: vec![[0; 5]; policy.services.len()],
        ..Expected::default()
    };
    let reasons_before = fx.reasons();
    let services_before: Vec<[u64; 5]> = policy
        .services
        .iter()
        .map(|s| counters(&fx.service_counters(&s.name)))
        .collect();

    let started = Instant::now();
    for index in 0..count {
        let packet = gen.packet();
        let outcome = classify(&packet, &policy);
        let kernel = fx.run(&packet);

        match kernel {
            Err(err) if packet.len() < ETH_LEN && err.raw_os_error() == Some(libc::EINVAL) => {
                expected.refused_by_kernel += 1;
                continue;
            }
            Ok(action) if packet.len() >= ETH_LEN && action == outcome.verdict.xdp_action() => {}
            other => panic!(
                "{phase}: packet {index} (seed {seed}): kernel {other:?}, reference {outcome:?}\n{}",
                hex_dump(&packet)
            ),
        }

        expected.verdicts[usize::from(outcome.verdict == Verdict::Drop)] += 1;
        if let Some(reason) = outcome.reason {
            expected.reasons[reason as usize] += 1;
        }
        if outcome.mapped_source {
            expected.reasons[Reason::MappedSource as usize] += 1;
        }
        if let Some(hit) = outcome.service {
            let slot = &mut expected.services[hit.service];
            match hit.action {
                ServiceAction::Passed => {
                    slot[0] += 1;
                    slot[1] += hit.bytes;
                }
                ServiceAction::Dropped => {
                    slot[2] += 1;
                    slot[3] += hit.bytes;
                }
                ServiceAction::WouldDrop => slot[4] += 1,
            }
        }
    }
    let elapsed = started.elapsed();

    // The counters must agree as well as the verdicts.
    let reasons_after = fx.reasons();
    for reason in Reason::ALL {
        let i = reason as usize;
        assert_eq!(
            reasons_after[i] - reasons_before[i],
            expected.reasons[i],
            "{phase} (seed {seed}): reason `{}` counted {} in the kernel, {} by the reference",
            reason.name(),
            reasons_after[i] - reasons_before[i],
            expected.reasons[i]
        );
    }
    for (i, service) in policy.services.iter().enumerate() {
        let after = counters(&fx.service_counters(&service.name));
        let moved: Vec<u64> = after
            .iter()
            .zip(&services_before[i])
            .map(|(a, b)| a - b)
            .collect();
        assert_eq!(
            moved,
            expected.services[i].to_vec(),
            "{phase} (seed {seed}): service `{}` [passed, passed_bytes, dropped, dropped_bytes, would_drop]",
            service.name
        );
    }

    eprintln!(
        "{phase}: {count} packets in {:.2?} ({:.0} packets/s): {} passed, {} dropped, {} refused by BPF_PROG_TEST_RUN (< 14 bytes)",
        elapsed,
        count as f64 / elapsed.as_secs_f64(),
        expected.verdicts[0],
        expected.verdicts[1],
        expected.refused_by_kernel
    );
    let summary: Vec<String> = Reason::ALL
        .iter()
        .map(|r| format!("{}={}", r.name(), expected.reasons[*r as usize]))
        .collect();
    eprintln!("{phase}: reasons {}", summary.join(" "));
    for (i, service) in policy.services.iter().enumerate() {
        eprintln!(
            "{phase}: service {} {:?}",
            service.name, expected.services[i]
        );
    }

    // A run that never reached a path proves nothing about it.
    if count >= 100_000 {
        let tunnel_drop = fx.config().tunnel_policy == TunnelPolicy::Drop;
        for reason in Reason::ALL {
            if reason == Reason::TunnelDropped && !tunnel_drop {
                continue;
            }
            assert!(
                expected.reasons[reason as usize] > 0,
                "{phase} (seed {seed}): no packet reached reason `{}`; the generator lost a shape",
                reason.name()
            );
        }
        for (i, service) in policy.services.iter().enumerate() {
            let allows_some = !service.v4.is_empty() || !service.v6.is_empty();
            assert!(
                (expected.services[i][0] > 0 || !allows_some)
                    && expected.services[i][2] + expected.services[i][4] > 0,
                "{phase} (seed {seed}): service `{}` saw no allowed or no refused packet",
                service.name
            );
        }
    }
}

/// Every protected (protocol, port), with the ports just outside each range.
fn protected_ports(fx: &Fixture) -> Vec<(u8, u16)> {
    let mut ports = Vec::new();
    for service in fx.config().services.values() {
        for range in &service.ports {
            let proto = range.protocol.number();
            ports.push((proto, range.first));
            ports.push((proto, range.last));
            ports.push((proto, range.first.saturating_sub(1)));
            ports.push((proto, range.last.saturating_add(1)));
        }
    }
    ports
}

#[test]
fn kernel_and_reference_agree() {
    let seed = env_u64("XA_FUZZ_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let total = env_u64("XA_FUZZ_PACKETS").unwrap_or(1_000_000);
    assert!(total > 0, "XA_FUZZ_PACKETS=0 tests nothing");
    eprintln!("differential: seed {seed} (XA_FUZZ_SEED={seed} repeats this run), {total} packets");

    let mut gen = Gen {
        rng: StdRng::seed_from_u64(seed),
        ports: Vec::new(),
    };
    let mut fx = Fixture::new(CONFIG_A);
    let first = total / 2 + total % 2;
    run_phase(&fx, &mut gen, first, seed, "config A (tunnel drop)");

    fx.apply(CONFIG_B);
    run_phase(&fx, &mut gen, total - first, seed, "config B (tunnel pass)");
}
