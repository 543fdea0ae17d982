//! Stage 1: the cost of one packet through BPF_PROG_TEST_RUN, for our
//! program on each path, the bare XDP_DROP floor, and xdp-filter dropping
//! the same packet.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use anyhow::{bail, Context as _};
use aya::programs::Xdp;
use xdp_allowlist_common::CONTROL_EVENTS_OFF;

use super::{
    e2e::Topology,
    median,
    ours::{self, OurFilter},
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
}

/// Runs stage 1 and returns one series per case, in nanoseconds per packet.
///
/// # Errors
///
/// When a program cannot be loaded or returns an unexpected verdict.
pub fn run(
    opts: &Options,
    topo: &Topology,
    scratch: &std::path::Path,
) -> anyhow::Result<Vec<Series>> {
    let mut ours = OurFilter::load(1024)?;
    ours.apply(&ours::parse(CONFIG)?)?;
    // The same policy with drop events switched off in the control record:
    // the difference to `ours` is what the event path costs a drop.
    let mut quiet = OurFilter::load(1024)?;
    quiet.apply(&ours::parse(CONFIG)?)?;
    quiet.set_control_flags(CONTROL_EVENTS_OFF)?;
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
        for (case, out) in cases.iter().zip(&mut samples) {
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

    Ok(cases
        .iter()
        .zip(samples)
        .map(|(case, samples)| Series {
            name: case.name.to_owned(),
            median: median(&samples),
            samples,
        })
        .collect())
}

fn case<'a>(name: &'static str, runner: Runner<'a>, frame: Vec<u8>, verdict: u32) -> Case<'a> {
    Case {
        name,
        runner,
        frame,
        verdict,
    }
}

/// The kernel reports whole nanoseconds, averaged over the repeats.
fn nanos(duration: Duration) -> f64 {
    duration.as_nanos() as f64
}
