//! Stage 1: the cost of one packet through BPF_PROG_TEST_RUN, for our
//! program on each path, the bare XDP_DROP floor, and xdp-filter dropping
//! the same packet.
//!
//! The same rounds time the naive-parser build ([`Object::Naive`]) on plain
//! IPv4 and IPv6 TCP, back to back with the real program on the same frame: the
//! difference is what the hardened parser (VLAN tags, IPv4 options, IPv6
//! extension headers, fragments) costs on the common path.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use anyhow::{anyhow, bail, Context as _};
use aya::programs::Xdp;
use xdp_allowlist_common::{CONTROL_EVENTS_OFF, CONTROL_TRACKING_OFF};

use super::{
    e2e::Topology,
    median,
    ours::{self, Object, OurFilter},
    packet, sys, Options, Series,
};

const CONFIG: &str = r#"
[services.web]
ports = ["tcp/8443"]
allow = ["198.51.100.0/24", "2001:db8:1::/48"]

[services.audit]
ports = ["tcp/9443"]
mode = "monitor"
allow = ["198.51.100.0/24", "2001:db8:1::/48"]
"#;

const ALLOWED_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const REFUSED_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
const DST_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const ALLOWED_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 7);
const REFUSED_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 9);
const DST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

/// Verdicts as BPF_PROG_TEST_RUN returns them.
const DROP: u32 = 1;
const PASS: u32 = 2;

enum Runner<'a> {
    Aya(&'a Xdp),
    Bpftool(u32, String),
}

struct Case<'a> {
    name: &'static str,
    runner: Runner<'a>,
    frame: Vec<u8>,
    verdict: u32,
    /// For a naive-parser case: the parser-comparison row it belongs to.
    naive_of: Option<&'static str>,
}

/// The real program and the naive-parser build on the same frame.
#[derive(Clone, Debug)]
pub struct ParserCost {
    /// What the frame is, e.g. "IPv4 TCP, unprotected port (pass)".
    pub case: &'static str,
    pub hardened: Series,
    pub naive: Series,
}

impl ParserCost {
    /// What the hardened parser adds, in nanoseconds: the median over the
    /// rounds of the difference within each round. The two cases run back
    /// to back in every round, so a round slowed down by other work on the
    /// machine slows both and cancels out, which the difference of the two
    /// medians does not.
    pub fn added_ns(&self) -> f64 {
        let paired: Vec<f64> = self
            .hardened
            .samples
            .iter()
            .zip(&self.naive.samples)
            .map(|(h, n)| h - n)
            .collect();
        median(&paired)
    }
}

/// Issue #3: the hardened parser may add at most this much per packet on
/// plain IPv4 TCP.
pub const PARSER_BUDGET_NS: f64 = 10.0;

/// What stage 1 measured.
#[derive(Default)]
pub struct PerPacket {
    /// One series per case, in nanoseconds per packet.
    pub series: Vec<Series>,
    /// The parser-hardening comparison.
    pub parser: Vec<ParserCost>,
}

/// The rows of the parser comparison: the hardened case it pairs with, its
/// label, the frame, the verdict.
fn parser_rows() -> [(&'static str, &'static str, Vec<u8>, u32); 6] {
    let v4 = |src, port| packet::tcp_v4(src, DST_V4, port);
    let v6 = |src, port| packet::tcp_v6(src, DST_V6, port);
    [
        (
            "ours v4: unprotected port",
            "IPv4 TCP, unprotected port (pass)",
            v4(REFUSED_V4, 80),
            PASS,
        ),
        (
            "ours v4: allowed source",
            "IPv4 TCP, protected port, allowed source (pass)",
            v4(ALLOWED_V4, 8443),
            PASS,
        ),
        (
            "ours v4: refused source (drop)",
            "IPv4 TCP, protected port, refused source (drop)",
            v4(REFUSED_V4, 8443),
            DROP,
        ),
        (
            "ours v6: unprotected port",
            "IPv6 TCP, unprotected port (pass)",
            v6(REFUSED_V6, 80),
            PASS,
        ),
        (
            "ours v6: allowed source",
            "IPv6 TCP, protected port, allowed source (pass)",
            v6(ALLOWED_V6, 8443),
            PASS,
        ),
        (
            "ours v6: refused source (drop)",
            "IPv6 TCP, protected port, refused source (drop)",
            v6(REFUSED_V6, 8443),
            DROP,
        ),
    ]
}

/// Loads the naive-parser build next to `hardened` with the same
/// configuration and control flags, and checks that both ended up with the
/// same control record and generation, so that the parser is the only
/// difference between them.
fn load_naive_twin(hardened: &OurFilter, config: &str) -> anyhow::Result<OurFilter> {
    let mut naive = OurFilter::load_object(Object::Naive, 1024)?;
    naive.apply(&ours::parse(config)?)?;
    let (ours, theirs) = (hardened.control()?, naive.control()?);
    if ours != theirs {
        bail!(
            "the naive build's control record differs from the real one's: {theirs:?} vs {ours:?}"
        );
    }
    Ok(naive)
}

/// Runs stage 1.
///
/// # Errors
///
/// When a program cannot be loaded or returns an unexpected verdict.
pub fn run(
    opts: &Options,
    topo: &Topology,
    scratch: &std::path::Path,
) -> anyhow::Result<PerPacket> {
    let mut ours = OurFilter::load(1024)?;
    ours.apply(&ours::parse(CONFIG)?)?;
    let naive = load_naive_twin(&ours, CONFIG)?;
    // The same policy with drop events switched off in the control record:
    // the difference to `ours` is what the event path costs a drop.
    let mut quiet = OurFilter::load(1024)?;
    quiet.apply(&ours::parse(CONFIG)?)?;
    quiet.set_control_flags(CONTROL_EVENTS_OFF)?;
    // And with per-source accounting off: what the SOURCES lookup and update
    // (and access records on the allowed path) cost.
    let mut untracked = OurFilter::load(1024)?;
    untracked.apply(&ours::parse(CONFIG)?)?;
    untracked.set_control_flags(CONTROL_TRACKING_OFF)?;
    let floor = super::receivers::Floor::load()?;

    // xdp-filter is loaded on the receiving veth end only to obtain a
    // program id that bpftool can run; no traffic flows in this stage.
    let xdp_filter =
        super::receivers::XdpFilter::load(topo, &[REFUSED_V4.to_string(), REFUSED_V6.to_string()])?;
    let xf_id = xdp_filter.program_id()?;

    let v4 = |src, port| packet::tcp_v4(src, DST_V4, port);
    let v6 = |src, port| packet::tcp_v6(src, DST_V6, port);
    let program = ours.program()?;
    let mut cases = vec![
        case(
            "floor: bare XDP_DROP (v4)",
            Runner::Aya(floor.program()?),
            v4(REFUSED_V4, 8443),
            DROP,
        ),
        case(
            "ours v4: unprotected port",
            Runner::Aya(program),
            v4(REFUSED_V4, 80),
            PASS,
        ),
        case(
            "ours v4: allowed source",
            Runner::Aya(program),
            v4(ALLOWED_V4, 8443),
            PASS,
        ),
        case(
            "ours v4: refused source (drop)",
            Runner::Aya(program),
            v4(REFUSED_V4, 8443),
            DROP,
        ),
        case(
            "ours v4: monitor (would drop)",
            Runner::Aya(program),
            v4(REFUSED_V4, 9443),
            PASS,
        ),
        case(
            "ours v4: refused, events off (diagnostic)",
            Runner::Aya(quiet.program()?),
            v4(REFUSED_V4, 8443),
            DROP,
        ),
        case(
            "ours v4: allowed, tracking off (diagnostic)",
            Runner::Aya(untracked.program()?),
            v4(ALLOWED_V4, 8443),
            PASS,
        ),
        case(
            "ours v4: refused, tracking off (diagnostic)",
            Runner::Aya(untracked.program()?),
            v4(REFUSED_V4, 8443),
            DROP,
        ),
        case(
            "ours v6: unprotected port",
            Runner::Aya(program),
            v6(REFUSED_V6, 80),
            PASS,
        ),
        case(
            "ours v6: allowed source",
            Runner::Aya(program),
            v6(ALLOWED_V6, 8443),
            PASS,
        ),
        case(
            "ours v6: refused source (drop)",
            Runner::Aya(program),
            v6(REFUSED_V6, 8443),
            DROP,
        ),
        case(
            "ours v6: monitor (would drop)",
            Runner::Aya(program),
            v6(REFUSED_V6, 9443),
            PASS,
        ),
    ];
    // Each naive case sits next to the real program's case on the same
    // frame, so that drift within a round hits both alike.
    let naive_program = naive.program()?;
    for (hardened_case, label, frame, verdict) in parser_rows() {
        let at = cases
            .iter()
            .position(|c| c.name == hardened_case)
            .ok_or_else(|| anyhow!("no case `{hardened_case}` to compare with"))?;
        if cases[at].frame != frame || cases[at].verdict != verdict {
            bail!("the parser comparison's frame for `{hardened_case}` differs from stage 1's");
        }
        let mut naive_case = case(label, Runner::Aya(naive_program), frame, verdict);
        naive_case.naive_of = Some(hardened_case);
        cases.insert(at + 1, naive_case);
    }
    for (name, frame) in [
        ("xdp-filter v4: denied source (drop)", v4(REFUSED_V4, 8443)),
        ("xdp-filter v6: denied source (drop)", v6(REFUSED_V6, 8443)),
    ] {
        let file = scratch.join(format!("frame-{}.bin", cases.len()));
        std::fs::write(&file, &frame)
            .with_context(|| format!("cannot write {}", file.display()))?;
        let file = file.to_string_lossy().into_owned();
        cases.push(case(name, Runner::Bpftool(xf_id, file), frame, DROP));
    }

    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for round in 0..opts.rounds {
        // Interleaved: every case once per round, so drift hits all alike.
        // Each naive case sits right after its hardened twin; every other
        // round runs the naive one first, so that neither always runs second.
        let mut order: Vec<usize> = (0..cases.len()).collect();
        if round % 2 == 1 {
            for (at, case) in cases.iter().enumerate().skip(1) {
                if case.naive_of.is_some() {
                    order.swap(at - 1, at);
                }
            }
        }
        for index in order {
            let (case, out) = (&cases[index], &mut samples[index]);
            let (verdict, ns) = match &case.runner {
                Runner::Aya(program) => {
                    let (verdict, duration) =
                        ours::time_program(program, &case.frame, opts.repeat)?;
                    (verdict, nanos(duration))
                }
                Runner::Bpftool(id, file) => sys::bpftool_run(*id, file, opts.repeat)?,
            };
            if verdict != case.verdict {
                bail!(
                    "`{}` returned verdict {verdict}, expected {}",
                    case.name,
                    case.verdict
                );
            }
            out.push(ns);
        }
        eprintln!("  per-packet round {}/{} done", round + 1, opts.rounds);
    }
    drop(xdp_filter);

    let mut out = PerPacket::default();
    let mut naive_series = Vec::new();
    for (case, samples) in cases.iter().zip(samples) {
        let series = Series {
            name: case.name.to_owned(),
            median: median(&samples),
            samples,
        };
        match case.naive_of {
            Some(hardened) => naive_series.push((hardened, case.name, series)),
            None => out.series.push(series),
        }
    }
    for (hardened, label, naive) in naive_series {
        let hardened = out
            .series
            .iter()
            .find(|s| s.name == hardened)
            .cloned()
            .ok_or_else(|| anyhow!("no series `{hardened}`"))?;
        out.parser.push(ParserCost {
            case: label,
            hardened,
            naive: Series {
                name: format!("naive parser: {label}"),
                ..naive
            },
        });
    }
    Ok(out)
}

fn case<'a>(name: &'static str, runner: Runner<'a>, frame: Vec<u8>, verdict: u32) -> Case<'a> {
    Case {
        name,
        runner,
        frame,
        verdict,
        naive_of: None,
    }
}

/// The kernel reports whole nanoseconds, averaged over the repeats.
fn nanos(duration: Duration) -> f64 {
    duration.as_nanos() as f64
}
