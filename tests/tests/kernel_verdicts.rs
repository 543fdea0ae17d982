//! Verdicts of the real kernel program through `BPF_PROG_TEST_RUN`, case by
//! case: each case names a packet, the verdict it must get, why, and which
//! counter must move (a `Reason` counter or a service counter). Needs root.
//!
//! Every case is also judged by the reference classifier, which must agree.
//! All cases of a table run before the test fails, so one failure shows
//! every other one too.

use std::net::{Ipv4Addr, Ipv6Addr};

use xdp_allowlist::reference::{self, ReferencePolicy, ServiceAction};
use xdp_allowlist_common::{Reason, ServiceCounters};
use xdp_allowlist_tests::{
    kernel::{Fixture, XDP_DROP, XDP_PASS},
    packets::*,
};

/// The configuration of the brief, with `api` narrowed to a /25 so that
/// `NOWHERE_V4` is in no allowlist, and a UDP-only service.
const CONFIG: &str = r#"
interfaces = ["lo"]
[services.admin]
ports = ["tcp/8443", "tcp/22", "sctp/3868"]
allow = ["203.0.113.0/24", "2001:db8:100::/48"]
[services.api]
ports = ["tcp/443"]
allow = ["198.51.100.0/25"]
[services.quic]
ports = ["udp/4433"]
allow = ["203.0.113.0/24"]
"#;

const ADMIN_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);
const API_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
/// In no allowlist.
const NOWHERE_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 200);
const SERVER_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const ADMIN_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 5);
/// In no allowlist.
const NOWHERE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x200, 0, 0, 0, 0, 7);
const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
/// `::ffff:203.0.113.5`, IPv4-mapped.
const MAPPED_ADMIN: Ipv6Addr = Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0xcb00, 0x7105);
/// `::203.0.113.5`, IPv4-compatible.
const COMPAT_ADMIN: Ipv6Addr = Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0xcb00, 0x7105);

/// One row of a table.
struct Case {
    name: String,
    packet: Vec<u8>,
    verdict: u32,
    why: &'static str,
    /// The `Reason` counter that moves by one (none when a service judges).
    reason: Option<Reason>,
    /// `mapped_source` moves by one as well.
    mapped: bool,
    /// The service counter that moves by one.
    service: Option<(&'static str, ServiceAction)>,
}

impl Case {
    fn pass(name: impl Into<String>, packet: Vec<u8>, why: &'static str) -> Self {
        Self::new(name, packet, XDP_PASS, why)
    }

    fn drop(name: impl Into<String>, packet: Vec<u8>, why: &'static str) -> Self {
        Self::new(name, packet, XDP_DROP, why)
    }

    fn new(name: impl Into<String>, packet: Vec<u8>, verdict: u32, why: &'static str) -> Self {
        Self {
            name: name.into(),
            packet,
            verdict,
            why,
            reason: None,
            mapped: false,
            service: None,
        }
    }

    fn reason(mut self, reason: Reason) -> Self {
        self.reason = Some(reason);
        self
    }

    fn mapped(mut self) -> Self {
        self.mapped = true;
        self
    }

    fn service(mut self, name: &'static str, action: ServiceAction) -> Self {
        self.service = Some((name, action));
        self
    }
}

fn snapshot(fx: &Fixture) -> Vec<(String, ServiceCounters)> {
    fx.config()
        .services
        .keys()
        .map(|name| (name.clone(), fx.service_counters(name)))
        .collect()
}

/// Runs every case and panics listing every one that failed.
fn check(fx: &Fixture, cases: &[Case]) {
    assert!(!cases.is_empty(), "an empty table tests nothing");
    let policy = ReferencePolicy::from_config(fx.config());
    let mut failures = Vec::new();

    for case in cases {
        let reasons_before = fx.reasons();
        let services_before = snapshot(fx);

        let verdict = fx.verdict(&case.packet);

        let reasons_after = fx.reasons();
        let services_after = snapshot(fx);
        let mut problems = Vec::new();
        if verdict != case.verdict {
            problems.push(format!(
                "kernel verdict {verdict}, expected {}",
                case.verdict
            ));
        }

        // Exactly the expected reason counters moved, each by one.
        for reason in Reason::ALL {
            let i = reason as usize;
            let moved = reasons_after[i] - reasons_before[i];
            let expected = u64::from(case.reason == Some(reason))
                + u64::from(case.mapped && reason == Reason::MappedSource);
            if moved != expected {
                problems.push(format!(
                    "reason `{}` moved by {moved}, expected {expected}",
                    reason.name()
                ));
            }
        }

        // Exactly the expected service counter moved.
        for ((name, before), (_, after)) in services_before.iter().zip(&services_after) {
            let (passed, dropped, would_drop) = match case.service {
                Some((n, ServiceAction::Passed)) if n == name => (1, 0, 0),
                Some((n, ServiceAction::Dropped)) if n == name => (0, 1, 0),
                Some((n, ServiceAction::WouldDrop)) if n == name => (0, 0, 1),
                _ => (0, 0, 0),
            };
            let moved = (
                after.passed - before.passed,
                after.dropped - before.dropped,
                after.would_drop - before.would_drop,
            );
            if moved != (passed, dropped, would_drop) {
                problems.push(format!(
                    "service `{name}` (passed, dropped, would_drop) moved by {moved:?}, expected {:?}",
                    (passed, dropped, would_drop)
                ));
            }
        }

        // The reference must read the packet the same way.
        let outcome = reference::classify(&case.packet, &policy);
        let service = outcome
            .service
            .map(|hit| (policy.services[hit.service].name.as_str(), hit.action));
        if outcome.verdict.xdp_action() != case.verdict
            || outcome.reason != case.reason
            || outcome.mapped_source != case.mapped
            || service != case.service
        {
            problems.push(format!(
                "reference says {:?} / {:?} / mapped {} / {service:?}",
                outcome.verdict, outcome.reason, outcome.mapped_source
            ));
        }

        if !problems.is_empty() {
            failures.push(format!(
                "{} ({}):\n    {}\n{}",
                case.name,
                case.why,
                problems.join("\n    "),
                hex_dump(&case.packet)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn v4(src: Ipv4Addr, proto: u8, dport: u16) -> Vec<u8> {
    v4_frame(
        &Ipv4::new(src, SERVER_V4, proto),
        &ports_header(proto, 40000, dport),
    )
}

fn v6(src: Ipv6Addr, proto: u8, dport: u16) -> Vec<u8> {
    v6_frame(
        &Ipv6::new(src, SERVER_V6, proto),
        &ports_header(proto, 40000, dport),
    )
}

fn proto_name(proto: u8) -> &'static str {
    match proto {
        TCP => "tcp",
        UDP => "udp",
        SCTP => "sctp",
        _ => "other",
    }
}

#[test]
fn protected_ports_by_protocol_source_and_family() {
    let fx = Fixture::new(CONFIG);
    let mut cases = Vec::new();

    // admin: tcp/22, tcp/8443, sctp/3868.
    for (proto, port) in [(TCP, 22), (TCP, 8443), (SCTP, 3868)] {
        let p = proto_name(proto);
        cases.push(
            Case::pass(
                format!("v4 {p}/{port} allowed"),
                v4(ADMIN_V4, proto, port),
                "source in admin's list",
            )
            .service("admin", ServiceAction::Passed),
        );
        cases.push(
            Case::drop(
                format!("v4 {p}/{port} refused"),
                v4(API_V4, proto, port),
                "api's source, not admin's",
            )
            .service("admin", ServiceAction::Dropped),
        );
        cases.push(
            Case::pass(
                format!("v6 {p}/{port} allowed"),
                v6(ADMIN_V6, proto, port),
                "source in admin's list",
            )
            .service("admin", ServiceAction::Passed),
        );
        cases.push(
            Case::drop(
                format!("v6 {p}/{port} refused"),
                v6(NOWHERE_V6, proto, port),
                "source in no list",
            )
            .service("admin", ServiceAction::Dropped),
        );
    }

    // api: tcp/443 protected, udp/443 (QUIC) not.
    cases.push(
        Case::pass("v4 tcp/443 allowed", v4(API_V4, TCP, 443), "api's source")
            .service("api", ServiceAction::Passed),
    );
    cases.push(
        Case::drop(
            "v4 tcp/443 refused",
            v4(ADMIN_V4, TCP, 443),
            "admin's source is not api's",
        )
        .service("api", ServiceAction::Dropped),
    );
    cases.push(
        Case::drop(
            "v6 tcp/443 refused",
            v6(ADMIN_V6, TCP, 443),
            "api allows no IPv6 source",
        )
        .service("api", ServiceAction::Dropped),
    );
    for (name, packet) in [
        ("v4", v4(NOWHERE_V4, UDP, 443)),
        ("v6", v6(NOWHERE_V6, UDP, 443)),
    ] {
        cases.push(
            Case::pass(
                format!("{name} udp/443 unprotected"),
                packet,
                "tcp/443 is protected, udp/443 is not",
            )
            .reason(Reason::Unprotected),
        );
    }

    // quic: udp/4433 protected, tcp/4433 not.
    cases.push(
        Case::pass(
            "v4 udp/4433 allowed",
            v4(ADMIN_V4, UDP, 4433),
            "quic's source",
        )
        .service("quic", ServiceAction::Passed),
    );
    cases.push(
        Case::drop(
            "v4 udp/4433 refused",
            v4(NOWHERE_V4, UDP, 4433),
            "source in no list",
        )
        .service("quic", ServiceAction::Dropped),
    );
    cases.push(
        Case::drop(
            "v6 udp/4433 refused",
            v6(ADMIN_V6, UDP, 4433),
            "quic allows no IPv6 source",
        )
        .service("quic", ServiceAction::Dropped),
    );
    cases.push(
        Case::pass(
            "v4 tcp/4433 unprotected",
            v4(NOWHERE_V4, TCP, 4433),
            "udp/4433 is protected, tcp/4433 is not",
        )
        .reason(Reason::Unprotected),
    );
    cases.push(
        Case::pass(
            "v6 tcp/4433 unprotected",
            v6(NOWHERE_V6, TCP, 4433),
            "udp/4433 is protected, tcp/4433 is not",
        )
        .reason(Reason::Unprotected),
    );

    // Unprotected ports of every protocol, from refused sources.
    for proto in [TCP, UDP, SCTP] {
        let p = proto_name(proto);
        for port in [80, 3869, 65535] {
            cases.push(
                Case::pass(
                    format!("v4 {p}/{port} unprotected"),
                    v4(NOWHERE_V4, proto, port),
                    "no service protects it",
                )
                .reason(Reason::Unprotected),
            );
            cases.push(
                Case::pass(
                    format!("v6 {p}/{port} unprotected"),
                    v6(NOWHERE_V6, proto, port),
                    "no service protects it",
                )
                .reason(Reason::Unprotected),
            );
        }
    }
    // sctp/22 and udp/22 are not tcp/22.
    cases.push(
        Case::pass(
            "v4 udp/22 unprotected",
            v4(NOWHERE_V4, UDP, 22),
            "only tcp/22 is protected",
        )
        .reason(Reason::Unprotected),
    );
    cases.push(
        Case::pass(
            "v4 sctp/22 unprotected",
            v4(NOWHERE_V4, SCTP, 22),
            "only tcp/22 is protected",
        )
        .reason(Reason::Unprotected),
    );

    check(&fx, &cases);
}

#[test]
fn ipv4_header_lengths() {
    let fx = Fixture::new(CONFIG);
    let mut cases = Vec::new();

    // Every legal IHL: the options push the ports back.
    for ihl in 5..=15u8 {
        let words = usize::from(ihl - 5);
        for (src, verdict, action, who) in [
            (ADMIN_V4, XDP_PASS, ServiceAction::Passed, "allowed"),
            (NOWHERE_V4, XDP_DROP, ServiceAction::Dropped, "refused"),
        ] {
            let ip = Ipv4::new(src, SERVER_V4, TCP).with_option_words(words);
            let frame = v4_frame(&ip, &tcp(40000, 22, &[]));
            cases.push(
                Case::new(
                    format!("IHL {ihl} tcp/22 {who}"),
                    frame,
                    verdict,
                    "ports found after the options",
                )
                .service("admin", action),
            );
        }
        let ip = Ipv4::new(NOWHERE_V4, SERVER_V4, TCP).with_option_words(words);
        cases.push(
            Case::pass(
                format!("IHL {ihl} tcp/80"),
                v4_frame(&ip, &tcp(40000, 80, &[])),
                "unprotected after the options",
            )
            .reason(Reason::Unprotected),
        );
    }
    // A first header with options whose bytes read as port 22 if the
    // options were ignored: the real port (80) decides.
    let mut ip = Ipv4::new(NOWHERE_V4, SERVER_V4, TCP);
    ip.options = vec![0x9c, 0x40, 0x00, 0x16];
    cases.push(
        Case::pass(
            "options that look like port 22",
            v4_frame(&ip, &tcp(40000, 80, &[])),
            "a fixed 20-byte header would read port 22",
        )
        .reason(Reason::Unprotected),
    );

    // IHL below 5 can never be a header.
    for ihl in 0..5u8 {
        let mut frame = v4(ADMIN_V4, TCP, 80);
        set_ihl(&mut frame, ihl);
        cases.push(
            Case::drop(format!("IHL {ihl}"), frame, "header shorter than 20 bytes")
                .reason(Reason::Malformed),
        );
    }
    // IHL beyond the datagram and beyond the frame.
    let mut frame = v4(ADMIN_V4, TCP, 80);
    set_ihl(&mut frame, 15);
    cases.push(
        Case::drop(
            "IHL 15 in a 40-byte datagram",
            frame,
            "header longer than the total length",
        )
        .reason(Reason::Malformed),
    );
    let mut frame = v4(ADMIN_V4, UDP, 80);
    set_ihl(&mut frame, 15);
    set_total_len(&mut frame, 60);
    cases.push(
        Case::drop("IHL 15 past the frame", frame, "header runs past the frame")
            .reason(Reason::Malformed),
    );
    // Total length below the header, and beyond the frame.
    for total in [0u16, 19] {
        let mut frame = v4(ADMIN_V4, TCP, 80);
        set_total_len(&mut frame, total);
        cases.push(
            Case::drop(
                format!("total length {total}"),
                frame,
                "total length below the header",
            )
            .reason(Reason::Malformed),
        );
    }
    let mut frame = v4(ADMIN_V4, TCP, 80);
    set_total_len(&mut frame, 41);
    cases.push(
        Case::drop(
            "total length past the frame",
            frame,
            "datagram longer than the frame",
        )
        .reason(Reason::Malformed),
    );
    // Total length 20 with a transport header in the link padding: the
    // padding is not read as ports.
    let mut frame = v4(NOWHERE_V4, TCP, 22);
    set_total_len(&mut frame, 20);
    cases.push(
        Case::drop(
            "TCP only in the padding",
            frame,
            "no transport bytes inside the datagram",
        )
        .reason(Reason::Malformed),
    );
    // Link padding after a whole datagram is fine.
    let mut frame = v4(ADMIN_V4, TCP, 22);
    frame.extend_from_slice(&[0; 6]);
    cases.push(
        Case::pass(
            "padded frame",
            frame,
            "padding after the datagram is ignored",
        )
        .service("admin", ServiceAction::Passed),
    );
    // Version 6 in an IPv4 ethertype.
    let mut frame = v4(ADMIN_V4, TCP, 80);
    frame[ETH_LEN] = 0x65;
    cases.push(
        Case::drop("version 6 in 0x0800", frame, "not an IPv4 header").reason(Reason::Malformed),
    );

    // One AH before the ports; two are refused.
    let mut ah = Ext::Auth { icv_words: 3 }.build(TCP);
    ah.extend_from_slice(&tcp(40000, 22, &[]));
    let frame = v4_frame(&Ipv4::new(NOWHERE_V4, SERVER_V4, AH), &ah);
    cases.push(
        Case::drop("AH then tcp/22 refused", frame, "ports behind the AH")
            .service("admin", ServiceAction::Dropped),
    );
    let frame = v4_frame(&Ipv4::new(ADMIN_V4, SERVER_V4, AH), &ah);
    cases.push(
        Case::pass("AH then tcp/22 allowed", frame, "ports behind the AH")
            .service("admin", ServiceAction::Passed),
    );
    let mut twice = Ext::Auth { icv_words: 1 }.build(AH);
    twice.extend_from_slice(&ah);
    let frame = v4_frame(&Ipv4::new(ADMIN_V4, SERVER_V4, AH), &twice);
    cases.push(
        Case::drop(
            "AH, AH, tcp/22",
            frame,
            "a second AH is a chain the filter does not follow",
        )
        .reason(Reason::ExtChain),
    );

    check(&fx, &cases);
}

#[test]
fn every_truncation() {
    let fx = Fixture::new(CONFIG);
    let mut cases = Vec::new();
    let full_v4 = v4(ADMIN_V4, TCP, 22);
    let full_v6 = v6(ADMIN_V6, TCP, 22);
    assert_eq!((full_v4.len(), full_v6.len()), (54, 74));

    for (family, full) in [("v4", &full_v4), ("v6", &full_v6)] {
        // Below an Ethernet header the kernel refuses to run the program;
        // that refusal is asserted, not skipped.
        for len in 0..ETH_LEN {
            let err = fx.run(&full[..len]).expect_err(&format!(
                "{family}: a {len}-byte frame was accepted by BPF_PROG_TEST_RUN"
            ));
            assert_eq!(
                err.raw_os_error(),
                Some(libc::EINVAL),
                "{family} {len} bytes: {err}"
            );
        }
        // Every cut from the Ethernet header on: the IP header's lengths
        // contradict the frame.
        for len in ETH_LEN..full.len() {
            cases.push(
                Case::drop(
                    format!("{family} cut to {len} bytes"),
                    full[..len].to_vec(),
                    "lengths contradict the frame",
                )
                .reason(Reason::Malformed),
            );
        }
        cases.push(
            Case::pass(format!("{family} whole"), full.clone(), "allowed source")
                .service("admin", ServiceAction::Passed),
        );
    }

    // Consistent lengths, transport header cut: below 4 bytes there are no
    // ports; from 4 bytes on the port is judged.
    for l4_len in 0..=20usize {
        let header = tcp(40000, 22, &[]);
        for (src4, src6, who, verdict, action) in [
            (
                ADMIN_V4,
                ADMIN_V6,
                "allowed",
                XDP_PASS,
                ServiceAction::Passed,
            ),
            (
                NOWHERE_V4,
                NOWHERE_V6,
                "refused",
                XDP_DROP,
                ServiceAction::Dropped,
            ),
        ] {
            let frames = [
                (
                    "v4",
                    v4_frame(&Ipv4::new(src4, SERVER_V4, TCP), &header[..l4_len]),
                ),
                (
                    "v6",
                    v6_frame(&Ipv6::new(src6, SERVER_V6, TCP), &header[..l4_len]),
                ),
            ];
            for (family, frame) in frames {
                let name = format!("{family} {who} with {l4_len} TCP bytes");
                cases.push(if l4_len < 4 {
                    Case::drop(name, frame, "no room for the ports").reason(Reason::Malformed)
                } else {
                    Case::new(name, frame, verdict, "the ports are there").service("admin", action)
                });
            }
        }
    }
    check(&fx, &cases);
}

#[test]
fn fragments() {
    let fx = Fixture::new(CONFIG);
    let mut cases = Vec::new();

    for (src, who, verdict, action) in [
        (ADMIN_V4, "allowed", XDP_PASS, ServiceAction::Passed),
        (NOWHERE_V4, "refused", XDP_DROP, ServiceAction::Dropped),
    ] {
        let ip = Ipv4::new(src, SERVER_V4, TCP).fragment(0, true);
        cases.push(
            Case::new(
                format!("v4 first fragment {who}"),
                v4_frame(&ip, &tcp(40000, 22, &[0; 100])),
                verdict,
                "a first fragment is judged by its ports",
            )
            .service("admin", action),
        );
    }
    let ip = Ipv4::new(NOWHERE_V4, SERVER_V4, TCP).fragment(0, true);
    cases.push(
        Case::drop(
            "v4 first fragment of 3 bytes",
            v4_frame(&ip, &[0x9c, 0x40, 0]),
            "too short to hold the ports",
        )
        .reason(Reason::ShortFragment),
    );
    let ip = Ipv4::new(NOWHERE_V4, SERVER_V4, TCP)
        .with_option_words(4)
        .fragment(0, true);
    cases.push(
        Case::drop(
            "v4 first fragment with options, ports cut",
            v4_frame(&ip, &[0x9c, 0x40]),
            "too short to hold the ports",
        )
        .reason(Reason::ShortFragment),
    );
    for offset in [1u16, 185, 8191] {
        for more in [false, true] {
            let ip = Ipv4::new(NOWHERE_V4, SERVER_V4, TCP).fragment(offset, more);
            cases.push(
                Case::pass(
                    format!("v4 fragment at {offset} more={more}"),
                    v4_frame(&ip, &tcp(40000, 22, &[])),
                    "a non-first fragment carries no ports",
                )
                .reason(Reason::Fragment),
            );
        }
    }
    let mut ip = Ipv4::new(NOWHERE_V4, SERVER_V4, TCP);
    ip.dont_fragment = true;
    cases.push(
        Case::drop(
            "v4 DF set",
            v4_frame(&ip, &tcp(40000, 22, &[])),
            "DF does not make a fragment",
        )
        .service("admin", ServiceAction::Dropped),
    );

    for (src, who, verdict, action) in [
        (ADMIN_V6, "allowed", XDP_PASS, ServiceAction::Passed),
        (NOWHERE_V6, "refused", XDP_DROP, ServiceAction::Dropped),
    ] {
        let ip = Ipv6::new(src, SERVER_V6, TCP).with_exts(&[Ext::Fragment {
            offset: 0,
            more: true,
        }]);
        cases.push(
            Case::new(
                format!("v6 first fragment {who}"),
                v6_frame(&ip, &tcp(40000, 22, &[0; 100])),
                verdict,
                "a first fragment is judged by its ports",
            )
            .service("admin", action),
        );
        let ip = Ipv6::new(src, SERVER_V6, TCP).with_exts(&[Ext::Fragment {
            offset: 0,
            more: false,
        }]);
        cases.push(
            Case::new(
                format!("v6 atomic fragment {who}"),
                v6_frame(&ip, &tcp(40000, 22, &[])),
                verdict,
                "an atomic fragment is a whole datagram",
            )
            .service("admin", action),
        );
    }
    let ip = Ipv6::new(NOWHERE_V6, SERVER_V6, TCP).with_exts(&[Ext::Fragment {
        offset: 0,
        more: true,
    }]);
    cases.push(
        Case::drop(
            "v6 first fragment of 3 bytes",
            v6_frame(&ip, &[0x9c, 0x40, 0]),
            "too short to hold the ports",
        )
        .reason(Reason::ShortFragment),
    );
    for offset in [1u16, 8191] {
        let ip = Ipv6::new(NOWHERE_V6, SERVER_V6, TCP)
            .with_exts(&[Ext::Fragment { offset, more: true }]);
        cases.push(
            Case::pass(
                format!("v6 fragment at {offset}"),
                v6_frame(&ip, &tcp(40000, 22, &[])),
                "a non-first fragment carries no ports",
            )
            .reason(Reason::Fragment),
        );
    }
    check(&fx, &cases);
}

#[test]
fn ipv6_extension_chains() {
    let fx = Fixture::new(CONFIG);
    let mut cases = Vec::new();
    let mixed = [
        Ext::HopByHop { units: 0 },
        Ext::DestOpts { units: 1 },
        Ext::Routing { units: 2 },
        Ext::Fragment {
            offset: 0,
            more: false,
        },
        Ext::Auth { icv_words: 3 },
        Ext::DestOpts { units: 0 },
    ];
    let eight = [Ext::DestOpts { units: 0 }; 8];
    let nine = [Ext::DestOpts { units: 0 }; 9];

    for (label, chain) in [("six mixed", &mixed[..]), ("eight", &eight[..])] {
        for (src, who, verdict, action) in [
            (ADMIN_V6, "allowed", XDP_PASS, ServiceAction::Passed),
            (NOWHERE_V6, "refused", XDP_DROP, ServiceAction::Dropped),
        ] {
            let ip = Ipv6::new(src, SERVER_V6, TCP).with_exts(chain);
            cases.push(
                Case::new(
                    format!("{label} headers, tcp/22 {who}"),
                    v6_frame(&ip, &tcp(40000, 22, &[])),
                    verdict,
                    "within the bound of eight headers",
                )
                .service("admin", action),
            );
        }
        let ip = Ipv6::new(NOWHERE_V6, SERVER_V6, UDP).with_exts(chain);
        cases.push(
            Case::pass(
                format!("{label} headers, udp/53"),
                v6_frame(&ip, &udp(40000, 53, &[])),
                "unprotected behind the chain",
            )
            .reason(Reason::Unprotected),
        );
    }
    for (proto, port) in [(TCP, 22), (UDP, 53)] {
        let ip = Ipv6::new(ADMIN_V6, SERVER_V6, proto).with_exts(&nine);
        cases.push(
            Case::drop(
                format!("nine headers, {}/{port}", proto_name(proto)),
                v6_frame(&ip, &ports_header(proto, 40000, port)),
                "longer than the bound, protected or not",
            )
            .reason(Reason::ExtChain),
        );
    }

    // A chain cut inside a header: the payload length is made consistent
    // with the cut, so only the chain is at fault.
    let ip = Ipv6::new(ADMIN_V6, SERVER_V6, TCP).with_exts(&mixed);
    let whole = v6_frame(&ip, &tcp(40000, 22, &[]));
    for cut in [1usize, 8, 9, 23, 33, 40] {
        let mut frame = whole[..ETH_LEN + 40 + cut].to_vec();
        set_payload_len(&mut frame, cut as u16);
        cases.push(
            Case::drop(
                format!("chain cut after {cut} bytes"),
                frame,
                "the chain cannot be finished",
            )
            .reason(Reason::ExtChain),
        );
    }
    // A header whose length runs past the datagram, before TCP.
    let ip = Ipv6::new(ADMIN_V6, SERVER_V6, TCP)
        .with_exts(&[Ext::DestOpts { units: 0 }, Ext::DestOpts { units: 0 }]);
    let mut frame = v6_frame(&ip, &tcp(40000, 22, &[]));
    frame[ETH_LEN + 40 + 8 + 1] = 200;
    cases.push(
        Case::drop(
            "header length past the datagram, then TCP",
            frame,
            "the ports are not inside the datagram",
        )
        .reason(Reason::Malformed),
    );
    // An empty payload after a fragment header.
    let ip = Ipv6::new(NOWHERE_V6, SERVER_V6, TCP).with_exts(&[
        Ext::Fragment {
            offset: 0,
            more: true,
        },
        Ext::DestOpts { units: 0 },
    ]);
    let mut frame = v6_frame(&ip, &[]);
    frame.truncate(frame.len() - 8);
    set_payload_len(&mut frame, 8);
    cases.push(
        Case::drop(
            "first fragment ending inside the chain",
            frame,
            "the chain cannot be finished",
        )
        .reason(Reason::ExtChain),
    );

    // Ending in ESP: the tunnel policy (pass by default).
    let ip = Ipv6::new(NOWHERE_V6, SERVER_V6, ESP).with_exts(&mixed);
    cases.push(
        Case::pass(
            "chain ending in ESP",
            v6_frame(&ip, &esp()),
            "ESP hides the ports: tunnel policy pass",
        )
        .reason(Reason::TunnelPassed),
    );
    // Ending in No Next Header: nothing follows.
    let ip = Ipv6::new(NOWHERE_V6, SERVER_V6, NO_NEXT_HEADER).with_exts(&mixed);
    cases.push(
        Case::pass(
            "chain ending in No Next Header",
            v6_frame(&ip, &[]),
            "no payload, no ports",
        )
        .reason(Reason::OtherProtocol),
    );
    let ip = Ipv6::new(NOWHERE_V6, SERVER_V6, NO_NEXT_HEADER);
    cases.push(
        Case::pass(
            "No Next Header alone",
            v6_frame(&ip, &[]),
            "no payload, no ports",
        )
        .reason(Reason::OtherProtocol),
    );

    // IPv6 header itself: cut, wrong version, payload past the frame.
    let mut frame = v6(ADMIN_V6, TCP, 80);
    frame[ETH_LEN] = 0x45;
    cases.push(
        Case::drop("version 4 in 0x86dd", frame, "not an IPv6 header").reason(Reason::Malformed),
    );
    let mut frame = v6(ADMIN_V6, TCP, 80);
    set_payload_len(&mut frame, 21);
    cases.push(
        Case::drop(
            "payload length past the frame",
            frame,
            "datagram longer than the frame",
        )
        .reason(Reason::Malformed),
    );
    check(&fx, &cases);
}

#[test]
fn vlan_tags() {
    let fx = Fixture::new(CONFIG);
    let mut cases = Vec::new();
    let v4_refused = Ipv4::new(NOWHERE_V4, SERVER_V4, TCP).build(&tcp(40000, 22, &[]));
    let v4_allowed = Ipv4::new(ADMIN_V4, SERVER_V4, TCP).build(&tcp(40000, 22, &[]));
    let v6_refused = Ipv6::new(NOWHERE_V6, SERVER_V6, TCP).build(&tcp(40000, 22, &[]));
    let v6_allowed = Ipv6::new(ADMIN_V6, SERVER_V6, TCP).build(&tcp(40000, 22, &[]));

    for (label, tags) in [
        ("802.1Q", &[TPID_8021Q][..]),
        ("802.1ad", &[TPID_8021AD][..]),
        ("802.1ad+802.1Q", &[TPID_8021AD, TPID_8021Q][..]),
        ("802.1Q+802.1Q", &[TPID_8021Q, TPID_8021Q][..]),
    ] {
        cases.push(
            Case::drop(
                format!("{label} v4 refused"),
                ethernet(ETH_IPV4, tags, &v4_refused),
                "tags skipped, ports judged",
            )
            .service("admin", ServiceAction::Dropped),
        );
        cases.push(
            Case::pass(
                format!("{label} v4 allowed"),
                ethernet(ETH_IPV4, tags, &v4_allowed),
                "tags skipped, ports judged",
            )
            .service("admin", ServiceAction::Passed),
        );
        cases.push(
            Case::drop(
                format!("{label} v6 refused"),
                ethernet(ETH_IPV6, tags, &v6_refused),
                "tags skipped, ports judged",
            )
            .service("admin", ServiceAction::Dropped),
        );
        cases.push(
            Case::pass(
                format!("{label} v6 allowed"),
                ethernet(ETH_IPV6, tags, &v6_allowed),
                "tags skipped, ports judged",
            )
            .service("admin", ServiceAction::Passed),
        );
        cases.push(
            Case::pass(
                format!("{label} ARP"),
                ethernet(ETH_ARP, tags, &arp_request(ADMIN_V4, SERVER_V4)),
                "ARP always passes",
            )
            .reason(Reason::NotIp),
        );
    }
    let three = [TPID_8021AD, TPID_8021Q, TPID_8021Q];
    cases.push(
        Case::drop(
            "three tags, v4 allowed",
            ethernet(ETH_IPV4, &three, &v4_allowed),
            "more tags than the parser follows",
        )
        .reason(Reason::VlanTooDeep),
    );
    cases.push(
        Case::drop(
            "three tags, ARP",
            ethernet(ETH_ARP, &three, &arp_request(ADMIN_V4, SERVER_V4)),
            "more tags than the parser follows",
        )
        .reason(Reason::VlanTooDeep),
    );
    let mut cut = ethernet(ETH_IPV4, &[TPID_8021Q], &[]);
    cut.truncate(ETH_LEN + 2);
    cases.push(Case::drop("cut tag", cut, "a tag cut short").reason(Reason::Malformed));
    let mut cut = ethernet(ETH_IPV4, &[TPID_8021AD, TPID_8021Q], &[]);
    cut.truncate(ETH_LEN + 6);
    cases.push(Case::drop("cut inner tag", cut, "a tag cut short").reason(Reason::Malformed));
    check(&fx, &cases);
}

#[test]
fn mapped_and_compatible_sources() {
    let fx = Fixture::new(CONFIG);
    let mut cases = Vec::new();
    for (label, src) in [
        ("::ffff:203.0.113.5", MAPPED_ADMIN),
        ("::203.0.113.5", COMPAT_ADMIN),
    ] {
        cases.push(
            Case::drop(
                format!("{label} to tcp/22"),
                v6(src, TCP, 22),
                "admin allows 203.0.113.0/24, never its IPv6 forms",
            )
            .mapped()
            .service("admin", ServiceAction::Dropped),
        );
        cases.push(
            Case::drop(
                format!("{label} to sctp/3868"),
                v6(src, SCTP, 3868),
                "admin allows 203.0.113.0/24, never its IPv6 forms",
            )
            .mapped()
            .service("admin", ServiceAction::Dropped),
        );
        cases.push(
            Case::pass(
                format!("{label} to tcp/80"),
                v6(src, TCP, 80),
                "unprotected: the source is not looked at",
            )
            .reason(Reason::Unprotected),
        );
    }
    let mapped_api = Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0xc633, 0x6407);
    cases.push(
        Case::drop(
            "::ffff:198.51.100.7 to tcp/443",
            v6(mapped_api, TCP, 443),
            "api allows 198.51.100.0/25, never its IPv6 forms",
        )
        .mapped()
        .service("api", ServiceAction::Dropped),
    );
    check(&fx, &cases);
}

fn tunnel_packets(v4_src: Ipv4Addr, v6_src: Ipv6Addr) -> Vec<(String, Vec<u8>)> {
    let inner = Ipv4::new(NOWHERE_V4, SERVER_V4, TCP).build(&tcp(40000, 22, &[]));
    let inner6 = Ipv6::new(NOWHERE_V6, SERVER_V6, TCP).build(&tcp(40000, 22, &[]));
    let mut packets = Vec::new();
    for (proto, label, body) in [
        (IPIP, "IPIP", inner.clone()),
        (IPV6_IN_IP, "6in4", inner6.clone()),
        (GRE, "GRE", gre(&inner)),
        (ESP, "ESP", esp()),
    ] {
        packets.push((
            format!("v4 {label} from {v4_src}"),
            v4_frame(&Ipv4::new(v4_src, SERVER_V4, proto), &body),
        ));
        packets.push((
            format!("v6 {label} from {v6_src}"),
            v6_frame(&Ipv6::new(v6_src, SERVER_V6, proto), &body),
        ));
    }
    packets
}

#[test]
fn tunnels_follow_the_tunnel_policy() {
    let mut fx = Fixture::new(CONFIG);

    let cases: Vec<Case> = tunnel_packets(NOWHERE_V4, NOWHERE_V6)
        .into_iter()
        .map(|(name, packet)| {
            Case::pass(
                format!("{name}, policy pass"),
                packet,
                "tunnel_policy = \"pass\" (the default)",
            )
            .reason(Reason::TunnelPassed)
        })
        .collect();
    check(&fx, &cases);

    fx.apply(&format!("tunnel_policy = \"drop\"\n{CONFIG}"));
    let mut cases: Vec<Case> = tunnel_packets(NOWHERE_V4, NOWHERE_V6)
        .into_iter()
        .map(|(name, packet)| {
            Case::drop(
                format!("{name}, policy drop"),
                packet,
                "source in no allowlist",
            )
            .reason(Reason::TunnelDropped)
        })
        .collect();
    for (v4_src, v6_src) in [(ADMIN_V4, ADMIN_V6), (API_V4, ADMIN_V6)] {
        cases.extend(
            tunnel_packets(v4_src, v6_src)
                .into_iter()
                .map(|(name, packet)| {
                    Case::pass(
                        format!("{name}, policy drop"),
                        packet,
                        "source in some allowlist",
                    )
                    .reason(Reason::TunnelPassed)
                }),
        );
    }
    cases.extend(
        tunnel_packets(NOWHERE_V4, MAPPED_ADMIN)
            .into_iter()
            .filter(|(name, _)| name.starts_with("v6"))
            .map(|(name, packet)| {
                Case::drop(
                    format!("{name}, policy drop"),
                    packet,
                    "a mapped source is in no allowlist",
                )
                .mapped()
                .reason(Reason::TunnelDropped)
            }),
    );
    // A non-first fragment of a tunnel is a fragment first.
    let ip = Ipv4::new(NOWHERE_V4, SERVER_V4, ESP).fragment(3, false);
    cases.push(
        Case::pass(
            "ESP non-first fragment",
            v4_frame(&ip, &esp()),
            "a non-first fragment is passed before its protocol is looked at",
        )
        .reason(Reason::Fragment),
    );
    // Ports are still judged as before.
    cases.push(
        Case::drop(
            "tcp/22 refused, policy drop",
            v4(NOWHERE_V4, TCP, 22),
            "unchanged by the tunnel policy",
        )
        .service("admin", ServiceAction::Dropped),
    );
    check(&fx, &cases);
}

#[test]
fn icmp_neighbour_discovery_and_arp_always_pass() {
    let mut fx = Fixture::new(CONFIG);
    let quoted4 = Ipv4::new(SERVER_V4, NOWHERE_V4, TCP).build(&tcp(22, 40000, &[]));
    let quoted6 = Ipv6::new(SERVER_V6, NOWHERE_V6, TCP).build(&tcp(22, 40000, &[]));
    let build = || {
        let icmp4 = |body: Vec<u8>| v4_frame(&Ipv4::new(NOWHERE_V4, SERVER_V4, ICMP), &body);
        let icmp6 = |body: Vec<u8>| v6_frame(&Ipv6::new(NOWHERE_V6, SERVER_V6, ICMPV6), &body);
        let link_local = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 7);
        let nd = |kind: u8| {
            v6_frame(
                &Ipv6::new(link_local, SERVER_V6, ICMPV6),
                &icmpv6_neighbour(kind, SERVER_V6),
            )
        };
        let mut cases = vec![
            Case::pass("ICMP echo", icmp4(icmpv4_echo()), "ICMP always passes")
                .reason(Reason::Icmp),
            Case::pass(
                "ICMP frag needed",
                icmp4(icmpv4_frag_needed(&quoted4[..28])),
                "path MTU discovery",
            )
            .reason(Reason::Icmp),
            Case::pass(
                "ICMPv6 packet too big",
                icmp6(icmpv6_packet_too_big(&quoted6)),
                "path MTU discovery",
            )
            .reason(Reason::Icmp),
            Case::pass(
                "ICMPv6 unreachable",
                icmp6(icmpv6_unreachable(&quoted6)),
                "ICMP errors always pass",
            )
            .reason(Reason::Icmp),
            Case::pass("neighbour solicitation", nd(135), "address resolution")
                .reason(Reason::Icmp),
            Case::pass("neighbour advertisement", nd(136), "address resolution")
                .reason(Reason::Icmp),
            Case::pass(
                "ARP request",
                ethernet(ETH_ARP, &[], &arp_request(NOWHERE_V4, SERVER_V4)),
                "ARP always passes",
            )
            .reason(Reason::NotIp),
            Case::pass(
                "ICMPv6 behind hop-by-hop (MLD)",
                v6_frame(
                    &Ipv6::new(link_local, SERVER_V6, ICMPV6)
                        .with_exts(&[Ext::HopByHop { units: 0 }]),
                    &icmpv6_neighbour(143, SERVER_V6),
                ),
                "ICMPv6 behind options",
            )
            .reason(Reason::Icmp),
            Case::pass(
                "ICMP from a mapped source",
                v6_frame(
                    &Ipv6::new(MAPPED_ADMIN, SERVER_V6, ICMPV6),
                    &icmpv6_packet_too_big(&quoted6),
                ),
                "no port, no lookup",
            )
            .reason(Reason::Icmp),
        ];
        cases.push(
            Case::pass(
                "other protocol (OSPF, 89)",
                v4_frame(&Ipv4::new(NOWHERE_V4, SERVER_V4, 89), &[0; 24]),
                "no ports",
            )
            .reason(Reason::OtherProtocol),
        );
        cases
    };
    check(&fx, &build());
    fx.apply(&format!("tunnel_policy = \"drop\"\n{CONFIG}"));
    check(&fx, &build());
}

#[test]
fn monitor_mode_passes_and_counts() {
    let mut fx = Fixture::new(CONFIG);
    check(
        &fx,
        &[
            Case::drop("enforce first", v4(NOWHERE_V4, TCP, 22), "admin enforces")
                .service("admin", ServiceAction::Dropped),
        ],
    );

    let monitored = CONFIG.replace(
        "allow = [\"203.0.113.0/24\", \"2001:db8:100::/48\"]",
        "allow = [\"203.0.113.0/24\", \"2001:db8:100::/48\"]\nmode = \"monitor\"",
    );
    assert_ne!(monitored, CONFIG, "the monitor edit did not apply");
    fx.apply(&monitored);
    let cases = [
        Case::pass(
            "v4 refused, monitor",
            v4(NOWHERE_V4, TCP, 22),
            "monitor: counted, not dropped",
        )
        .service("admin", ServiceAction::WouldDrop),
        Case::pass(
            "v6 refused, monitor",
            v6(NOWHERE_V6, SCTP, 3868),
            "monitor: counted, not dropped",
        )
        .service("admin", ServiceAction::WouldDrop),
        Case::pass(
            "mapped, monitor",
            v6(MAPPED_ADMIN, TCP, 8443),
            "monitor: counted, not dropped",
        )
        .mapped()
        .service("admin", ServiceAction::WouldDrop),
        Case::pass(
            "v4 allowed, monitor",
            v4(ADMIN_V4, TCP, 22),
            "allowed sources count as passed",
        )
        .service("admin", ServiceAction::Passed),
        Case::drop(
            "api still enforces",
            v4(ADMIN_V4, TCP, 443),
            "monitor is per service",
        )
        .service("api", ServiceAction::Dropped),
    ];
    check(&fx, &cases);

    // And back: the next generation enforces again.
    fx.apply(CONFIG);
    check(
        &fx,
        &[
            Case::drop("enforce again", v4(NOWHERE_V4, TCP, 22), "admin enforces")
                .service("admin", ServiceAction::Dropped),
        ],
    );
}
