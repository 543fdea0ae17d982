//! Stage 3: real frames over a veth pair between two namespaces.
//!
//! The generator is BPF_PROG_TEST_RUN in live-frame mode: a two-instruction
//! XDP_TX program on the sending end turns the syscall into a packet source
//! (about ten times what an AF_PACKET generator reaches here). The frames
//! cross the veth pair and meet the receiver under test on the other end.
//! Generator and receiver share one CPU (the receiver's NAPI poll runs when
//! the generator's batch re-enables softirqs), so the time per frame is the
//! sum of both; the floor's time is the same sum with the cheapest receiver.
//!
//! The many-sources rows rewrite the source of every frame with a random
//! value (issue #5): our filter with per-source tracking and events on, with
//! events off, and with tracking off, each with its event counters per flood.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::OwnedFd,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _};
use ipnet::{IpNet, Ipv4Net};
use xdp_allowlist::status::EventStatus;
use xdp_allowlist_common::{CONTROL_EVENTS_OFF, CONTROL_TRACKING_OFF};

use super::{
    median,
    ours::{self, OurFilter},
    packet,
    receivers::{Floor, Ipset, Nft, XdpFilter},
    sys::{self, NetnsGuard, RawProgram, XDP_PASS, XDP_TX},
    Options, Series,
};

/// Two namespaces joined by a veth pair; both removed on drop.
pub struct Topology {
    pub gen_ns: String,
    pub rcv_ns: String,
    pub gen_if: String,
    pub rcv_if: String,
    pub gen_mac: [u8; 6],
    pub rcv_mac: [u8; 6],
}

impl Topology {
    /// # Errors
    ///
    /// When a namespace or the veth pair cannot be created.
    pub fn create() -> anyhow::Result<Self> {
        let pid = std::process::id();
        let mut topo = Self {
            gen_ns: format!("xab-gen-{pid}"),
            rcv_ns: format!("xab-rcv-{pid}"),
            gen_if: format!("xabg{pid}"),
            rcv_if: format!("xabr{pid}"),
            gen_mac: [0; 6],
            rcv_mac: [0; 6],
        };
        sys::run("ip", &["netns", "add", &topo.gen_ns])?;
        // From here on `topo` removes what exists when it goes out of scope.
        sys::run("ip", &["netns", "add", &topo.rcv_ns])?;
        #[rustfmt::skip]
        sys::run("ip", &["-n", &topo.gen_ns, "link", "add", &topo.gen_if, "type", "veth",
            "peer", "name", &topo.rcv_if, "netns", &topo.rcv_ns])?;
        for (ns, iface, v4, v6) in [
            (
                &topo.gen_ns,
                &topo.gen_if,
                "198.51.100.1/24",
                "2001:db8::1/64",
            ),
            (
                &topo.rcv_ns,
                &topo.rcv_if,
                "198.51.100.2/24",
                "2001:db8::2/64",
            ),
        ] {
            sys::run("ip", &["-n", ns, "addr", "add", v4, "dev", iface])?;
            sys::run(
                "ip",
                &["-n", ns, "-6", "addr", "add", v6, "dev", iface, "nodad"],
            )?;
            sys::run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
            sys::run("ip", &["-n", ns, "link", "set", iface, "up"])?;
        }
        topo.gen_mac = mac(&topo.gen_ns, &topo.gen_if)?;
        topo.rcv_mac = mac(&topo.rcv_ns, &topo.rcv_if)?;
        Ok(topo)
    }

    /// The flood frame: TCP SYN from 203.0.113.9 to the receiver's tcp/8443.
    pub fn v4_frame(&self) -> Vec<u8> {
        let (src, dst) = (
            Ipv4Addr::new(203, 0, 113, 9),
            Ipv4Addr::new(198, 51, 100, 2),
        );
        packet::tcp_v4_macs(self.gen_mac, self.rcv_mac, src, dst, 8443)
    }

    /// The many-sources frame: from 2001:db8:ffff::/96, its last 32 bits
    /// rewritten per frame by the generator.
    pub fn v6_frame(&self) -> Vec<u8> {
        let src = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 9);
        let dst = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
        packet::tcp_v6_macs(self.gen_mac, self.rcv_mac, src, dst, 8443)
    }

    /// Name of the XDP program attached to the receiving end, if any.
    pub(super) fn xdp_program(&self) -> anyhow::Result<Option<String>> {
        let out = sys::run(
            "ip",
            &[
                "-n",
                &self.rcv_ns,
                "-j",
                "link",
                "show",
                "dev",
                &self.rcv_if,
            ],
        )?;
        let value: serde_json::Value =
            serde_json::from_str(&out).context("`ip -j` printed no JSON")?;
        Ok(value[0]["xdp"]["prog"]["name"].as_str().map(str::to_owned))
    }

    /// Receiver-side veth counters (summed over queues).
    pub(super) fn rx_stats(&self) -> anyhow::Result<VethStats> {
        let out = sys::run_in(&self.rcv_ns, "ethtool", &["-S", &self.rcv_if])?;
        let mut stats = VethStats::default();
        for line in out.lines() {
            let Some((name, value)) = line.trim().split_once(':') else {
                continue;
            };
            let Ok(value) = value.trim().parse::<u64>() else {
                continue;
            };
            if name.ends_with("_xdp_packets") && name.starts_with("rx_") {
                stats.xdp_packets += value;
            } else if name.ends_with("_xdp_drops") && name.starts_with("rx_") {
                stats.xdp_drops += value;
            }
        }
        Ok(stats)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in [&self.gen_ns, &self.rcv_ns] {
            if Path::new("/var/run/netns").join(ns).exists() {
                if let Err(err) = sys::run("ip", &["netns", "del", ns]) {
                    eprintln!("cannot remove network namespace {ns}: {err:#}");
                }
            }
        }
    }
}

fn mac(ns: &str, iface: &str) -> anyhow::Result<[u8; 6]> {
    let out = sys::run("ip", &["-n", ns, "-j", "link", "show", "dev", iface])?;
    let value: serde_json::Value = serde_json::from_str(&out).context("`ip -j` printed no JSON")?;
    value[0]["address"]
        .as_str()
        .and_then(packet::parse_mac)
        .ok_or_else(|| anyhow!("no MAC address for {iface}"))
}

#[derive(Clone, Copy, Debug, Default)]
pub(super) struct VethStats {
    pub xdp_packets: u64,
    pub xdp_drops: u64,
}

/// One receiver configuration of the flood.
enum Receiver<'a> {
    Floor(&'a mut Floor),
    Ours(&'a mut OurFilter),
    XdpFilter,
    Nft(&'a Nft, &'a RawProgram),
    Ipset(&'a Ipset, &'a RawProgram),
}

/// What one flood measured.
struct Flood {
    ns_per_frame: f64,
    processed: u64,
    dropped: u64,
    /// Our filter's event counters over the flood.
    events: Option<EventDelta>,
}

/// What the kernel's event counters (`EVENT_LIMITER`, summed over CPUs)
/// moved by during one flood.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventDelta {
    /// Events written into the ring buffer.
    pub sent: u64,
    /// Events not sent: the per-CPU rate limit was reached.
    pub rate_limited: u64,
    /// Events not sent: the ring buffer was full.
    pub ring_full: u64,
    /// Drops from sources not tracked: the per-CPU budget of new sources per
    /// second was spent.
    pub untracked: u64,
}

impl EventDelta {
    fn between(before: &EventStatus, after: &EventStatus) -> Self {
        Self {
            sent: after.sent.saturating_sub(before.sent),
            rate_limited: after.rate_limited.saturating_sub(before.rate_limited),
            ring_full: after.ring_full.saturating_sub(before.ring_full),
            untracked: after.untracked.saturating_sub(before.untracked),
        }
    }
}

fn flood(
    topo: &Topology,
    generator: &RawProgram,
    frame: &[u8],
    frames: u32,
    receiver: &mut Receiver<'_>,
) -> anyhow::Result<Flood> {
    // Attach the receiver inside its namespace; what holds the attachment
    // lives until the end of this function.
    let mut _pass_link: Option<OwnedFd> = None;
    let mut _xdp_filter: Option<XdpFilter> = None;
    let mut counter_before = 0;
    let mut events_before = None;
    if let Receiver::Ours(ours) = receiver {
        // Every flood starts with an empty ring, as under a daemon that
        // reads it; nothing reads it during the flood (the daemon's reader
        // would compete for the same two CPUs).
        ours.drain_events()?;
        events_before = Some(ours.event_counts()?);
    }
    {
        let _ns = NetnsGuard::enter(&topo.rcv_ns)?;
        match receiver {
            Receiver::Floor(floor) => floor.attach(&topo.rcv_if)?,
            Receiver::Ours(ours) => ours.attach(&topo.rcv_if)?,
            Receiver::XdpFilter => {}
            Receiver::Nft(nft, pass) => {
                _pass_link = Some(attach_raw(pass, &topo.rcv_if)?);
                nft.activate()?;
                counter_before = nft.dropped()?;
            }
            Receiver::Ipset(ipset, pass) => {
                _pass_link = Some(attach_raw(pass, &topo.rcv_if)?);
                ipset.activate()?;
                counter_before = ipset.dropped()?;
            }
        }
    }
    if let Receiver::XdpFilter = receiver {
        _xdp_filter = Some(XdpFilter::load(topo, &["203.0.113.9".to_owned()])?);
    }

    let before = topo.rx_stats()?;
    let elapsed = {
        let _ns = NetnsGuard::enter(&topo.gen_ns)?;
        let ifindex = sys::ifindex(&topo.gen_if)?;
        let started = Instant::now();
        generator.send_live(frame, ifindex, frames, 64)?;
        started.elapsed()
    };
    // Frames still in the veth ring are handled by the next NAPI poll.
    std::thread::sleep(Duration::from_millis(20));
    let after = topo.rx_stats()?;
    let processed = after.xdp_packets - before.xdp_packets;

    let dropped = match receiver {
        Receiver::Floor(floor) => {
            floor.detach()?;
            after.xdp_drops - before.xdp_drops
        }
        Receiver::Ours(ours) => {
            ours.detach(&topo.rcv_if)?;
            after.xdp_drops - before.xdp_drops
        }
        Receiver::XdpFilter => after.xdp_drops - before.xdp_drops,
        Receiver::Nft(nft, _) => {
            let dropped = nft.dropped()? - counter_before;
            nft.deactivate()?;
            dropped
        }
        Receiver::Ipset(ipset, _) => {
            let dropped = ipset.dropped()? - counter_before;
            ipset.deactivate()?;
            dropped
        }
    };
    let events = match (receiver, events_before) {
        (Receiver::Ours(ours), Some(before)) => {
            Some(EventDelta::between(&before, &ours.event_counts()?))
        }
        _ => None,
    };
    drop(_xdp_filter);
    drop(_pass_link);
    if let Some(left) = topo.xdp_program()? {
        bail!(
            "`{left}` is still attached to {} after its flood",
            topo.rcv_if
        );
    }

    if processed == 0 {
        bail!("the receiver saw none of the {frames} frames; is the generator's frame addressed to it?");
    }
    Ok(Flood {
        ns_per_frame: elapsed.as_nanos() as f64 / processed as f64,
        processed,
        dropped,
        events,
    })
}

fn attach_raw(program: &RawProgram, iface: &str) -> anyhow::Result<OwnedFd> {
    let ifindex = sys::ifindex(iface)?;
    // The previous receiver's link may still be on its way out.
    for _ in 0..20 {
        if let Ok(link) = program.attach(ifindex) {
            return Ok(link);
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    program.attach(ifindex)
}

/// One configuration's floods: ns per frame and the share of frames the
/// receiver itself dropped.
pub struct FloodSeries {
    pub series: Series,
    pub frames: u32,
    pub processed_median: f64,
    pub dropped_share: f64,
    /// Our filter's event counters over each flood (empty for the others).
    pub events: Vec<EventDelta>,
}

impl FloodSeries {
    /// Frames the receiver saw per second of generator time (median).
    pub fn frames_per_sec(&self) -> f64 {
        1e9 / self.series.median
    }

    /// Median over the floods of each event counter.
    pub fn events_median(&self) -> Option<[f64; 4]> {
        if self.events.is_empty() {
            return None;
        }
        let of = |f: fn(&EventDelta) -> u64| {
            median(&self.events.iter().map(|e| f(e) as f64).collect::<Vec<_>>())
        };
        Some([
            of(|e| e.sent),
            of(|e| e.rate_limited),
            of(|e| e.ring_full),
            of(|e| e.untracked),
        ])
    }
}

/// The many-sources rows (issue #5): the same flood of random IPv6 sources
/// into our filter with per-source tracking and events on (the default),
/// with events off, and with per-source tracking off.
pub const SPOOFED_DEFAULT: &str = "ours, random v6 sources: tracking + events (default)";
pub const SPOOFED_EVENTS_OFF: &str = "ours, random v6 sources: events off";
pub const SPOOFED_TRACKING_OFF: &str = "ours, random v6 sources: tracking off";
pub const SPOOFED_FLOOR: &str = "floor, random v6 sources";

/// Issue #5: a flood of distinct spoofed sources with events on must keep
/// the drop rate within 15 % of the same flood with events off.
pub const SPOOFED_BUDGET: f64 = 1.15;

/// Runs stage 3.
///
/// # Errors
///
/// When a receiver cannot be set up or a flood fails.
pub fn run(
    opts: &Options,
    topo: &Topology,
    prefixes: &[Ipv4Net],
    v6_prefixes: &[IpNet],
    scratch: &Path,
) -> anyhow::Result<Vec<FloodSeries>> {
    let generator = RawProgram::constant(XDP_TX)?;
    let random_generator = RawProgram::random_at(packet::V6_SRC_LOW_OFFSET)?;
    let pass = RawProgram::constant(XDP_PASS)?;

    eprintln!("  loading the receivers ({} prefixes each)", prefixes.len());
    let mut floor = Floor::load()?;
    let all: Vec<IpNet> = prefixes.iter().copied().map(IpNet::V4).collect();
    let config = ours::large_config(&all, v6_prefixes, 100)?;
    let mut ours = OurFilter::load(xdp_allowlist_common::DEFAULT_CAPACITY)?;
    ours.apply(&config)?;
    // The three many-sources receivers: one each, with the same policy, so
    // that no row inherits another's tracked sources or spent budgets.
    let mut spoofed_default = OurFilter::load(xdp_allowlist_common::DEFAULT_CAPACITY)?;
    spoofed_default.apply(&config)?;
    let mut spoofed_quiet = OurFilter::load(xdp_allowlist_common::DEFAULT_CAPACITY)?;
    spoofed_quiet.apply(&config)?;
    spoofed_quiet.set_control_flags(CONTROL_EVENTS_OFF)?;
    let mut spoofed_untracked = OurFilter::load(xdp_allowlist_common::DEFAULT_CAPACITY)?;
    spoofed_untracked.apply(&config)?;
    spoofed_untracked.set_control_flags(CONTROL_TRACKING_OFF)?;
    let started = Instant::now();
    let nft = Nft::create(topo, prefixes, scratch)?;
    eprintln!(
        "  nft set loaded in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let ipset = Ipset::create(topo, prefixes, scratch)?;
    eprintln!(
        "  ipset loaded in {:.1} s ({})",
        started.elapsed().as_secs_f64(),
        ipset.iptables
    );

    let v4 = topo.v4_frame();
    let v6 = topo.v6_frame();
    let names = [
        "floor: bare XDP_DROP",
        "ours: 100k prefixes",
        "xdp-filter",
        "nftables netdev ingress, 100k set",
        "iptables raw + ipset hash:net, 100k",
        SPOOFED_FLOOR,
        SPOOFED_DEFAULT,
        SPOOFED_EVENTS_OFF,
        SPOOFED_TRACKING_OFF,
    ];
    // The slow receivers get fewer frames so that a round stays short.
    let frames_for = |index: usize| {
        if matches!(index, 3 | 4) {
            opts.flood_frames / 4
        } else {
            opts.flood_frames
        }
    };
    let mut results: Vec<Vec<Flood>> = (0..names.len()).map(|_| Vec::new()).collect();
    for round in 0..opts.rounds {
        // The three spoofed-source rows are compared with each other to
        // within 15 %: rotate their order from round to round so that none
        // always runs right after the floor or right after another.
        let mut order: Vec<usize> = (0..names.len()).collect();
        order[6..].rotate_left(round % 3);
        for index in order {
            let out = &mut results[index];
            let (generator, frame, mut receiver) = match index {
                0 => (&generator, &v4, Receiver::Floor(&mut floor)),
                1 => (&generator, &v4, Receiver::Ours(&mut ours)),
                2 => (&generator, &v4, Receiver::XdpFilter),
                3 => (&generator, &v4, Receiver::Nft(&nft, &pass)),
                4 => (&generator, &v4, Receiver::Ipset(&ipset, &pass)),
                5 => (&random_generator, &v6, Receiver::Floor(&mut floor)),
                6 => (&random_generator, &v6, Receiver::Ours(&mut spoofed_default)),
                7 => (&random_generator, &v6, Receiver::Ours(&mut spoofed_quiet)),
                _ => (
                    &random_generator,
                    &v6,
                    Receiver::Ours(&mut spoofed_untracked),
                ),
            };
            out.push(flood(
                topo,
                generator,
                frame,
                frames_for(index),
                &mut receiver,
            )?);
        }
        eprintln!("  end-to-end round {}/{} done", round + 1, opts.rounds);
    }

    Ok(names
        .iter()
        .zip(results)
        .enumerate()
        .map(|(index, (name, floods))| {
            let samples: Vec<f64> = floods.iter().map(|f| f.ns_per_frame).collect();
            let processed: Vec<f64> = floods.iter().map(|f| f.processed as f64).collect();
            let shares: Vec<f64> = floods
                .iter()
                .map(|f| f.dropped as f64 / f.processed.max(1) as f64)
                .collect();
            FloodSeries {
                series: Series {
                    name: (*name).to_owned(),
                    median: median(&samples),
                    samples,
                },
                frames: frames_for(index),
                processed_median: median(&processed),
                dropped_share: median(&shares),
                events: floods.iter().filter_map(|f| f.events).collect(),
            }
        })
        .collect())
}
