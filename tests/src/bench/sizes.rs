//! Stages 2 and 4: how the allowlist's size changes the cost of a hit and a
//! miss, the time to apply it, its memory, and the time to reload it.

use std::{net::Ipv4Addr, time::Instant};

use anyhow::bail;
use ipnet::{IpNet, Ipv4Net};

use super::{
    median,
    ours::{self, OurFilter},
    packet, Options,
};

const DST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const FAR_MISS: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);

/// Prefix shapes measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Mixed prefix lengths, spread over the address space.
    Mixed,
    /// Consecutive /32s.
    Dense,
}

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Shape::Mixed => "mixed lengths",
            Shape::Dense => "dense /32s",
        }
    }
}

/// Results for one (shape, size).
pub struct SizeResult {
    pub shape: Shape,
    pub size: usize,
    pub apply_ms: f64,
    /// Time `config::parse_str` takes for a file with this list, when
    /// measured (see [`Options::parse_limit`]).
    pub parse_ms: Option<f64>,
    pub trie_bytes: u64,
    pub hit_ns: f64,
    pub near_miss_ns: f64,
    pub far_miss_ns: f64,
    /// Reload: (what, milliseconds, map writes).
    pub reloads: Vec<(String, f64, usize)>,
}

struct Loaded {
    shape: Shape,
    list: Vec<Ipv4Net>,
    filter: OurFilter,
    apply_ms: f64,
    parse_ms: Option<f64>,
    trie_bytes: u64,
    frames: [Vec<u8>; 3],
    samples: [Vec<f64>; 3],
}

/// Runs stage 2 (and stage 4 on the sizes in `opts.reload_sizes`).
///
/// # Errors
///
/// When loading or a test run fails, or a verdict is not what the list says.
pub fn run(opts: &Options) -> anyhow::Result<Vec<SizeResult>> {
    let mut loaded = Vec::new();
    for &shape in &[Shape::Mixed, Shape::Dense] {
        for &size in &opts.sizes {
            let mut entry = load(shape, size)?;
            if shape == Shape::Mixed && size <= opts.parse_limit {
                entry.parse_ms = Some(parse_time(&entry.list)?);
            }
            loaded.push(entry);
        }
    }

    for round in 0..opts.rounds {
        for entry in &mut loaded {
            let program = entry.filter.program()?;
            for (index, expected) in [(0, 2u32), (1, 1), (2, 1)] {
                let (verdict, duration) =
                    ours::time_program(program, &entry.frames[index], opts.repeat)?;
                if verdict != expected {
                    bail!(
                        "{} × {}: lookup {index} returned verdict {verdict}, expected {expected}",
                        entry.size(),
                        entry.shape.name()
                    );
                }
                entry.samples[index].push(duration.as_nanos() as f64);
            }
        }
        eprintln!("  size round {}/{} done", round + 1, opts.rounds);
    }

    let mut results = Vec::new();
    for mut entry in loaded {
        let reloads = if opts.reload_sizes.contains(&entry.size()) && entry.shape == Shape::Mixed {
            reload(&mut entry)?
        } else {
            Vec::new()
        };
        results.push(SizeResult {
            shape: entry.shape,
            size: entry.size(),
            apply_ms: entry.apply_ms,
            parse_ms: entry.parse_ms,
            trie_bytes: entry.trie_bytes,
            hit_ns: median(&entry.samples[0]),
            near_miss_ns: median(&entry.samples[1]),
            far_miss_ns: median(&entry.samples[2]),
            reloads,
        });
    }
    Ok(results)
}

impl Loaded {
    fn size(&self) -> usize {
        self.list.len()
    }
}

fn load(shape: Shape, size: usize) -> anyhow::Result<Loaded> {
    let list = match shape {
        Shape::Mixed => ours::mixed_prefixes(size, 0x5eed),
        Shape::Dense => ours::dense_prefixes(size),
    };
    let (hit, near_miss) = match shape {
        Shape::Mixed => ours::hit_and_near_miss(&list),
        Shape::Dense => (
            Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + size as u32 / 2),
            Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + size as u32),
        ),
    };
    let config = ours::large_config(&as_nets(&list), &[], 100)?;

    let mut filter = OurFilter::load(xdp_allowlist_common::DEFAULT_CAPACITY)?;
    let before = filter.v4_trie_bytes()?;
    let started = Instant::now();
    let report = filter.apply(&config)?;
    let apply_ms = started.elapsed().as_secs_f64() * 1e3;
    let trie_bytes = filter.v4_trie_bytes()?.saturating_sub(before);
    eprintln!(
        "  {size} prefixes ({}): applied in {apply_ms:.0} ms ({} writes), trie {:.1} MiB",
        shape.name(),
        report.writes,
        trie_bytes as f64 / 1048576.0
    );

    let frames = [
        packet::tcp_v4(hit, DST, 8443),
        packet::tcp_v4(near_miss, DST, 8443),
        packet::tcp_v4(FAR_MISS, DST, 8443),
    ];
    Ok(Loaded {
        shape,
        list,
        filter,
        apply_ms,
        parse_ms: None,
        trie_bytes,
        frames,
        samples: Default::default(),
    })
}

/// How long the daemon's parser takes to read a file listing `list`.
fn parse_time(list: &[Ipv4Net]) -> anyhow::Result<f64> {
    let mut text = String::from("[services.bench]\nports = [\"tcp/8443\"]\nallow = [\n");
    for net in list {
        text.push_str(&format!("  \"{net}\",\n"));
    }
    text.push_str("]\n");
    let started = Instant::now();
    let config = ours::parse(&text)?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let parsed = config
        .services
        .values()
        .map(|s| s.allow.len())
        .sum::<usize>();
    if parsed != list.len() {
        bail!("the parser kept {parsed} of {} CIDRs", list.len());
    }
    eprintln!("  {} prefixes: parse_str took {ms:.0} ms", list.len());
    Ok(ms)
}

fn as_nets(list: &[Ipv4Net]) -> Vec<IpNet> {
    list.iter().copied().map(IpNet::V4).collect()
}

/// Stage 4. The first apply filled one slot; a reload with 1 % of the list
/// replaced fills the other (a full write, as every second generation after
/// a fresh start); a further 1 % change then writes only the difference to
/// the generation before last, which is the steady state of a daemon.
fn reload(entry: &mut Loaded) -> anyhow::Result<Vec<(String, f64, usize)>> {
    let size = entry.size();
    let replacement = ours::mixed_prefixes(size / 50 + 1, 0xfeed);
    let changed = |step: usize| -> Vec<IpNet> {
        let swap = size / 100 * step;
        let mut list = as_nets(&entry.list[swap..]);
        list.extend(replacement.iter().take(swap).copied().map(IpNet::V4));
        list
    };
    let mut out = Vec::new();
    for (step, what) in [
        (1, "reload, 1 % changed (fills the idle slot)"),
        (2, "reload, 1 % more changed (diff only)"),
    ] {
        let config = ours::large_config(&changed(step), &[], 100)?;
        let started = Instant::now();
        let report = entry.filter.apply(&config)?;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        eprintln!(
            "  {size} prefixes, {what}: {ms:.0} ms, {} writes",
            report.writes
        );
        out.push((what.to_owned(), ms, report.writes));
    }
    Ok(out)
}
