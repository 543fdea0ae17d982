//! Crafted frames on the wire, made with scapy (a packet tool that shares
//! none of our parser's assumptions), sent from the client namespace to a
//! UDP listener on a protected port behind the real daemon.
//!
//! Each case carries its own marker in the payload; the test checks which
//! markers the listener received. From a refused source nothing may arrive,
//! whatever the shape (IPv4 options, fragments in order, reversed,
//! overlapping, tiny first fragments, IPv6 extension headers and
//! fragments); from an allowed source the same shapes arrive.

use std::{
    collections::BTreeSet,
    net::{SocketAddr, UdpSocket},
    process::Command,
    time::{Duration, Instant},
};

use xdp_allowlist_tests::{daemon::Daemon, netns::Pair};

const ALLOWED_V4: &str = "198.51.100.3";
const REFUSED_V4: &str = "198.51.100.4";
const ALLOWED_V6: &str = "2001:db8:1::3";
const REFUSED_V6: &str = "2001:db8:1::4";
const PORT: u16 = 7777;

/// (marker, scapy expression for the frames with `PAYLOAD` standing for
/// the marker, should arrive).
fn cases() -> Vec<(&'static str, String, bool)> {
    let mut cases = Vec::new();
    for (src, allowed) in [(ALLOWED_V4, true), (REFUSED_V4, false)] {
        let ip = format!("IP(src='{src}', dst=SRV4)");
        let tag = if allowed { "ok" } else { "no" };
        let udp = format!("UDP(sport=40000, dport={PORT})");
        cases.push((
            leak(format!("{tag}-v4-plain")),
            format!("[E/{ip}/{udp}/PAYLOAD]"),
            allowed,
        ));
        cases.push((
            leak(format!("{tag}-v4-options-4")),
            format!("[E/IP(src='{src}', dst=SRV4, options=[IPOption_NOP()]*4)/{udp}/PAYLOAD]"),
            allowed,
        ));
        cases.push((
            leak(format!("{tag}-v4-options-40")),
            format!("[E/IP(src='{src}', dst=SRV4, options=[IPOption_NOP()]*39+[IPOption_EOL()])/{udp}/PAYLOAD]"),
            allowed,
        ));
        cases.push((
            leak(format!("{tag}-v4-fragments")),
            format!("[E/f for f in fragment({ip}/{udp}/PAYLOAD/BIG, fragsize=600)]"),
            allowed,
        ));
        cases.push((
            leak(format!("{tag}-v4-fragments-reversed")),
            format!("[E/f for f in reversed(fragment({ip}/{udp}/PAYLOAD/BIG, fragsize=600))]"),
            allowed,
        ));
        cases.push((
            leak(format!("{tag}-v4-fragments-tiny")),
            format!("[E/f for f in fragment({ip}/{udp}/PAYLOAD, fragsize=8)]"),
            allowed,
        ));
        cases.push((
            leak(format!("{tag}-v6-plain")),
            format!("[E6/IPv6(src='{}', dst=SRV6)/{udp}/PAYLOAD]", v6(allowed)),
            allowed,
        ));
        cases.push((
            leak(format!("{tag}-v6-ext-chain")),
            format!(
                "[E6/IPv6(src='{}', dst=SRV6)/IPv6ExtHdrHopByHop()/IPv6ExtHdrDestOpt()/IPv6ExtHdrRouting(segleft=0)/IPv6ExtHdrDestOpt()/{udp}/PAYLOAD]",
                v6(allowed)
            ),
            allowed,
        ));
        cases.push((
            leak(format!("{tag}-v6-fragments")),
            format!(
                "[E6/f for f in fragment6(IPv6(src='{}', dst=SRV6)/IPv6ExtHdrFragment()/{udp}/PAYLOAD/BIG, 700)]",
                v6(allowed)
            ),
            allowed,
        ));
        cases.push((
            leak(format!("{tag}-v6-fragments-reversed")),
            format!(
                "[E6/f for f in reversed(fragment6(IPv6(src='{}', dst=SRV6)/IPv6ExtHdrFragment()/{udp}/PAYLOAD/BIG, 700))]",
                v6(allowed)
            ),
            allowed,
        ));
    }
    // A refused source sends the first fragment twice, once overlapping
    // with a different, unprotected port: nothing may reach the protected one.
    cases.push(("no-v4-overlap", format!("overlap('{REFUSED_V4}')"), false));
    cases
}

fn v6(allowed: bool) -> &'static str {
    if allowed {
        ALLOWED_V6
    } else {
        REFUSED_V6
    }
}

fn leak(text: String) -> &'static str {
    Box::leak(text.into_boxed_str())
}

const PRELUDE: &str = r#"
import sys
from scapy.all import Ether, IP, IPv6, UDP, Raw, IPOption_NOP, IPOption_EOL, fragment, fragment6, sendp, conf
from scapy.layers.inet6 import IPv6ExtHdrHopByHop, IPv6ExtHdrDestOpt, IPv6ExtHdrRouting, IPv6ExtHdrFragment
conf.verb = 0
IFACE, DST_MAC, SRV4, SRV6 = sys.argv[1:5]
E = Ether(dst=DST_MAC, type=0x0800)
E6 = Ether(dst=DST_MAC, type=0x86DD)
BIG = Raw(b"x" * 1800)

def overlap(src):
    whole = IP(src=src, dst=SRV4, id=4242)/UDP(sport=40000, dport=7777)/Raw(b"MARK:no-v4-overlap;")/BIG
    frags = fragment(whole, fragsize=600)
    decoy = IP(src=src, dst=SRV4, id=4242, flags="MF", frag=0, proto=17)/UDP(sport=40000, dport=7778)/Raw(b"y" * 592)
    return [E/decoy] + [E/f for f in frags] + [E/f for f in frags[1:]]

def send(marker, frames):
    for f in frames:
        sendp(f, iface=IFACE)
"#;

#[test]
fn crafted_shapes_from_a_refused_source_never_reach_a_protected_port() {
    let extra = [ALLOWED_V4, REFUSED_V4, ALLOWED_V6, REFUSED_V6];
    let pair = Pair::new(&extra);
    let daemon = Daemon::start(
        &pair,
        &format!("[services.hooks]\nports = [\"udp/{PORT}\"]\nallow = [\"{ALLOWED_V4}/32\", \"{ALLOWED_V6}/128\"]\n"),
    );

    let receiver = Pair::run_in(&pair.server, || {
        let socket = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::DGRAM, None)
            .unwrap_or_else(|e| panic!("socket: {e}"));
        socket
            .set_only_v6(false)
            .unwrap_or_else(|e| panic!("dual stack: {e}"));
        let addr: SocketAddr =
            SocketAddr::new("::".parse().unwrap_or_else(|e| panic!("{e}")), PORT);
        socket
            .bind(&addr.into())
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let socket = UdpSocket::from(socket);
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap_or_else(|e| panic!("timeout: {e}"));
        socket
    });

    let mut script = String::from(PRELUDE);
    for (marker, frames, _) in cases() {
        let frames = frames.replace("PAYLOAD", &format!("Raw(b\"MARK:{marker};\")"));
        script.push_str(&format!("send('{marker}', {frames})\n"));
    }
    let script_path = daemon.instance.dir.path().join("send.py");
    std::fs::write(&script_path, &script).unwrap_or_else(|e| panic!("write script: {e}"));

    let server_mac = mac_of(&pair.server, &pair.server_if);
    let out = Command::new("ip")
        .args(["netns", "exec", &pair.client, "/usr/bin/python3"])
        .arg(&script_path)
        .args([
            &pair.client_if,
            &server_mac,
            "198.51.100.1",
            "2001:db8:1::1",
        ])
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run scapy (cargo xtask setup installs python3-scapy): {e}")
        });
    assert!(
        out.status.success(),
        "scapy failed: {}\nscript:\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut received = BTreeSet::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if let Ok(n) = receiver.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]);
            if let Some(rest) = text.strip_prefix("MARK:") {
                if let Some((marker, _)) = rest.split_once(';') {
                    received.insert(marker.to_owned());
                }
            }
        }
    }

    let mut wrong = Vec::new();
    for (marker, _, should_arrive) in cases() {
        if received.contains(marker) != should_arrive {
            wrong.push(format!("{marker}: arrived={}", received.contains(marker)));
        }
    }
    assert!(
        wrong.is_empty(),
        "wrong outcomes: {wrong:#?}\nreceived: {received:?}\nstatus: {}",
        daemon.instance.status()
    );
}

fn mac_of(ns: &str, ifname: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", ns, "-j", "link", "show", "dev", ifname])
        .output()
        .unwrap_or_else(|e| panic!("ip link: {e}"));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    value[0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no MAC for {ifname}: {value}"))
        .to_owned()
}
