//! `cargo xtask bench`: what our filter costs, per packet and end to end,
//! against a bare XDP_DROP (the floor), xdp-filter, nftables and ipset.
//!
//! Stages, in the issue's order of priority:
//!
//! 1. [`per_packet`]: BPF_PROG_TEST_RUN on each path of our program.
//! 2. [`sizes`]: hit and miss cost, apply time and memory from 1 to 1M
//!    prefixes.
//! 3. [`e2e`]: live frames over a veth pair into each receiver, including a
//!    flood of distinct spoofed sources with per-source tracking and events
//!    on, off, and tracking off; then [`daemon_memory`]: the real daemon's
//!    peak memory under a million distinct sources.
//! 4. [`sizes`] again: reload times.
//!
//! Stage 1 also times a naive-parser build of the filter next to the real
//! one (the parser hardening cost, issue #3).
//!
//! Every measurement is repeated in interleaved rounds (each configuration
//! once per round) and the median is reported. Results go to
//! `bench-results/` as Markdown, JSON and a PNG chart. Needs root; creates
//! only `xab-*` namespaces, interfaces and pins, and removes them on exit.

pub mod chart;
pub mod daemon_memory;
pub mod e2e;
pub mod ours;
pub mod packet;
pub mod per_packet;
pub mod receivers;
pub mod report;
mod report_issues;
pub mod sizes;
pub mod sys;

use std::path::PathBuf;

use anyhow::Context as _;

/// What to run, from the command line.
#[derive(Clone, Debug)]
pub struct Options {
    pub quick: bool,
    /// Interleaved rounds per measurement.
    pub rounds: usize,
    /// BPF_PROG_TEST_RUN repeats per measurement.
    pub repeat: u32,
    /// Allowlist sizes of stage 2.
    pub sizes: Vec<usize>,
    /// Sizes whose reload is timed (stage 4).
    pub reload_sizes: Vec<usize>,
    /// Largest list whose parse time is measured: the parser's duplicate
    /// check is quadratic, so larger lists would take minutes to hours.
    pub parse_limit: usize,
    /// Frames per flood in stage 3.
    pub flood_frames: u32,
    /// Prefixes loaded into each receiver in stage 3.
    pub e2e_prefixes: usize,
    pub out_dir: PathBuf,
    pub stages: Vec<u8>,
}

impl Options {
    pub fn full(out_dir: PathBuf) -> Self {
        Self {
            quick: false,
            rounds: 5,
            repeat: 2_000_000,
            sizes: vec![1, 100, 10_000, 100_000, 1_000_000],
            reload_sizes: vec![100_000, 1_000_000],
            parse_limit: 100_000,
            flood_frames: 4_000_000,
            e2e_prefixes: 100_000,
            out_dir,
            stages: vec![1, 2, 3],
        }
    }

    pub fn quick(out_dir: PathBuf) -> Self {
        Self {
            quick: true,
            rounds: 3,
            repeat: 1_000_000,
            sizes: vec![1, 100, 10_000, 100_000],
            reload_sizes: vec![100_000],
            parse_limit: 10_000,
            flood_frames: 1_000_000,
            e2e_prefixes: 100_000,
            out_dir,
            stages: vec![1, 2, 3],
        }
    }
}

/// Repeated measurements of one configuration.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub samples: Vec<f64>,
    pub median: f64,
}

impl Series {
    pub fn min(&self) -> f64 {
        self.samples.iter().copied().fold(f64::INFINITY, f64::min)
    }

    pub fn max(&self) -> f64 {
        self.samples
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
    }
}

/// Median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

/// Everything measured, for the report.
#[derive(Default)]
pub struct Results {
    pub installed: Vec<String>,
    pub per_packet: Vec<Series>,
    /// The real parser against the naive one (stage 1).
    pub parser: Vec<per_packet::ParserCost>,
    pub sizes: Vec<sizes::SizeResult>,
    pub e2e: Vec<e2e::FloodSeries>,
    /// The daemon under a million distinct sources (stage 3), or why that
    /// failed.
    pub daemon_memory: Option<Result<daemon_memory::DaemonMemory, String>>,
    pub elapsed_s: f64,
    /// `/proc/loadavg` when the run started.
    pub load_start: String,
}

/// Runs the stages `opts` asks for and writes the report.
///
/// # Errors
///
/// When a stage fails; what it created is removed first.
pub fn run(opts: &Options) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let mut results = Results {
        load_start: report::load_average(),
        installed: sys::ensure_packages(&[
            ("xdp-filter", "xdp-tools"),
            ("nft", "nftables"),
            ("ipset", "ipset"),
            ("iptables", "iptables"),
            ("bpftool", "bpftool"),
            ("ethtool", "ethtool"),
        ])?,
        ..Results::default()
    };

    let scratch = tempfile::Builder::new()
        .prefix("xab-bench-")
        .tempdir()
        .context("cannot create a scratch directory")?;
    let topo = e2e::Topology::create().context("cannot create the veth pair")?;

    if opts.stages.contains(&1) {
        eprintln!(
            "stage 1: per packet ({} rounds × {} repeats)",
            opts.rounds, opts.repeat
        );
        let measured = per_packet::run(opts, &topo, scratch.path())?;
        results.per_packet = measured.series;
        results.parser = measured.parser;
    }
    if opts.stages.contains(&2) {
        eprintln!("stage 2 and 4: allowlist sizes {:?}", opts.sizes);
        results.sizes = sizes::run(opts)?;
    }
    if opts.stages.contains(&3) {
        eprintln!(
            "stage 3: end to end ({} rounds × {} frames)",
            opts.rounds, opts.flood_frames
        );
        let prefixes = ours::mixed_prefixes(opts.e2e_prefixes, 0xe2e);
        let v6 = ours::v6_prefixes(opts.e2e_prefixes, 0xe2e);
        results.e2e = e2e::run(opts, &topo, &prefixes, &v6, scratch.path())?;
        eprintln!(
            "  the daemon under {} distinct sources",
            daemon_memory::DISTINCT_TARGET
        );
        results.daemon_memory = Some(daemon_memory::run(&topo).map_err(|err| {
            eprintln!("  the daemon measurement failed: {err:#}");
            format!("{err:#}")
        }));
    }
    drop(topo);

    results.elapsed_s = started.elapsed().as_secs_f64();
    report::write(opts, &results)?;
    // A failed daemon measurement is in the report; the run still fails.
    if let Some(Err(err)) = &results.daemon_memory {
        anyhow::bail!("the daemon measurement failed: {err}");
    }
    Ok(())
}
