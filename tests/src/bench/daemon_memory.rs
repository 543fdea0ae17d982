//! Stage 3, last step: the real daemon under a flood of distinct spoofed
//! sources (issue #5). The `xdp-allowlist` binary runs `run` in the
//! receiving namespace, attached to the receiving veth end with events on at
//! their defaults; the live-frame generator then sends TCP SYNs from random
//! IPv6 sources (2001:db8:ffff::/96, a fresh random 32-bit suffix per frame)
//! to a protected port until at least a million distinct sources reached the
//! filter. The report shows the daemon's peak resident memory (`VmHWM`)
//! before and after, and what the kernel counted.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _};
use xdp_allowlist::status::{self, EventStatus};

use super::{
    e2e::Topology,
    packet,
    sys::{self, NetnsGuard, RawProgram},
};
use crate::daemon::{self, Daemon, Instance};

/// Distinct sources the flood must reach at least.
pub const DISTINCT_TARGET: u64 = 1_000_000;

/// Frames per live-frame run; runs repeat until the target is reached.
const CHUNK: u32 = 250_000;

/// Most runs before giving up (a receiver that sees few of the frames).
const MAX_CHUNKS: u32 = 40;

/// What the daemon run measured.
pub struct DaemonMemory {
    pub binary: PathBuf,
    /// Frames the generator sent.
    pub frames_sent: u64,
    /// Frames the receiving veth's XDP hook saw.
    pub frames_seen: u64,
    /// Expected distinct sources among `frames_seen` random 32-bit suffixes.
    pub distinct_sources: u64,
    /// Frames seen per second of generator time.
    pub sources_per_sec: f64,
    /// `VmHWM` and `VmRSS` in KiB once the daemon settled after starting.
    pub hwm_before_kib: u64,
    pub rss_before_kib: u64,
    /// The same after the flood and a pause for the daemon to read what the
    /// kernel queued.
    pub hwm_after_kib: u64,
    pub rss_after_kib: u64,
    /// Drops the daemon's filter counted over the flood.
    pub dropped: u64,
    /// The kernel's event counters over the flood.
    pub events: EventStatus,
}

const CONFIG: &str = r#"
[services.bench]
ports = ["tcp/8443"]
allow = ["198.51.100.0/24", "2001:db8:1::/48"]
"#;

/// Runs the daemon, floods it, stops it.
///
/// # Errors
///
/// When the binary is missing, the daemon does not start or attach, or the
/// flood does not reach it.
pub fn run(topo: &Topology) -> anyhow::Result<DaemonMemory> {
    let binary = daemon::binary_path();
    if !binary.exists() {
        bail!(
            "{} is missing: run through `cargo xtask bench`, which builds it, or set XDP_ALLOWLIST_BIN",
            binary.display()
        );
    }
    let mut instance = Instance::new(&format!("interfaces = [\"{}\"]\n{CONFIG}", topo.rcv_if));
    // The benchmark's pins all start with `xab-`.
    instance.pin_dir = PathBuf::from(format!("/sys/fs/bpf/xab-{}-daemon", std::process::id()));
    let pin_dir = instance.pin_dir.clone();
    let ns = topo.rcv_ns.clone();
    // The helper panics with the daemon's log when it does not attach; turn
    // that into an error so that the rest of the report is still written.
    let started = std::panic::catch_unwind(move || Daemon::start_in(&ns, instance))
        .map_err(|panic| anyhow!("the daemon did not start: {}", panic_text(&panic)))?;
    let result = measure(topo, &started, binary);
    // Dropping stops the daemon (SIGTERM to its pid) and detaches it.
    drop(started);
    if pin_dir.exists() {
        xdp_allowlist::bpf::remove_all_pins(&pin_dir)?;
    }
    if let Some(left) = topo.xdp_program()? {
        bail!(
            "`{left}` is still attached to {} after the daemon stopped",
            topo.rcv_if
        );
    }
    result
}

fn measure(topo: &Topology, daemon: &Daemon, binary: PathBuf) -> anyhow::Result<DaemonMemory> {
    let pid = daemon.pid();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() != "xdp-allowlist" {
        bail!("process {pid} is `{}`, not the daemon", comm.trim());
    }
    match topo.xdp_program()? {
        Some(name) if name == xdp_allowlist_common::PROGRAM_NAME => {}
        other => bail!("the daemon's program is not on {}: {other:?}", topo.rcv_if),
    }
    // Let start-up finish (the first generation, the reader's first drain).
    std::thread::sleep(Duration::from_secs(1));
    let (hwm_before_kib, rss_before_kib) = memory_kib(pid)?;
    let before = status::read(&daemon.instance.pin_dir)?;

    let generator = RawProgram::random_at(packet::V6_SRC_LOW_OFFSET)?;
    let frame = topo.v6_frame();
    let seen_before = topo.rx_stats()?.xdp_packets;
    let (mut frames_sent, mut frames_seen, mut elapsed) = (0u64, 0u64, Duration::ZERO);
    for _ in 0..MAX_CHUNKS {
        if expected_distinct(frames_seen) >= DISTINCT_TARGET as f64 {
            break;
        }
        let in_generator = NetnsGuard::enter(&topo.gen_ns)?;
        let ifindex = sys::ifindex(&topo.gen_if)?;
        let started = Instant::now();
        generator.send_live(&frame, ifindex, CHUNK, 64)?;
        elapsed += started.elapsed();
        frames_sent += u64::from(CHUNK);
        drop(in_generator);
        std::thread::sleep(Duration::from_millis(20));
        frames_seen = topo.rx_stats()?.xdp_packets - seen_before;
    }
    let distinct = expected_distinct(frames_seen);
    if distinct < DISTINCT_TARGET as f64 {
        bail!("the filter saw only {frames_seen} of {frames_sent} frames; fewer than {DISTINCT_TARGET} distinct sources");
    }

    // The daemon drains the ring on a timer and sends summaries per
    // interval: give it time to read everything the flood queued.
    std::thread::sleep(Duration::from_secs(3));
    let (hwm_after_kib, rss_after_kib) = memory_kib(pid)?;
    let after = status::read(&daemon.instance.pin_dir)?;
    let dropped = |s: &status::Status| s.services.values().map(|v| v.dropped).sum::<u64>();

    Ok(DaemonMemory {
        binary,
        frames_sent,
        frames_seen,
        distinct_sources: distinct as u64,
        sources_per_sec: frames_seen as f64 / elapsed.as_secs_f64(),
        hwm_before_kib,
        rss_before_kib,
        hwm_after_kib,
        rss_after_kib,
        dropped: dropped(&after) - dropped(&before),
        events: EventStatus {
            sent: after.events.sent - before.events.sent,
            rate_limited: after.events.rate_limited - before.events.rate_limited,
            ring_full: after.events.ring_full - before.events.ring_full,
            untracked: after.events.untracked - before.events.untracked,
        },
    })
}

/// Expected distinct values among `n` uniform random 32-bit values:
/// `m (1 - (1 - 1/m)^n)` with `m = 2^32`.
pub fn expected_distinct(n: u64) -> f64 {
    let m = 4_294_967_296.0_f64;
    -(n as f64 * (-1.0 / m).ln_1p()).exp_m1() * m
}

/// `VmHWM` and `VmRSS` of `pid`, in KiB.
fn memory_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .ok_or_else(|| anyhow!("no {name} in {path}"))
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "unknown panic".to_owned())
}

#[cfg(test)]
mod tests {
    use super::expected_distinct;

    #[test]
    fn distinct_estimate_matches_the_birthday_bound() {
        // n - n^2 / 2m to first order: 1M draws lose about 116 to collisions.
        let lost = 1_000_000.0 - expected_distinct(1_000_000);
        assert!((lost - 116.4).abs() < 1.0, "{lost}");
        assert_eq!(expected_distinct(0), 0.0);
    }
}
