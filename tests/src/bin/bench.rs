//! `xdp-allowlist-bench`: the driver behind `cargo xtask bench`.

use std::path::{Path, PathBuf};

use xdp_allowlist_tests::bench::{self, Options};

const HELP: &str = "\
xdp-allowlist-bench: measure what the XDP allowlist costs

Measures, in interleaved rounds with medians reported:
  1. the cost of one packet on each path of the filter (BPF_PROG_TEST_RUN),
     against a bare XDP_DROP (the floor) and xdp-filter; and the same policy
     behind a naive parser, to show what the hardened parser costs;
  2. hit and miss cost, apply time and memory for 1 to 1M prefixes;
  3. a live-frame flood over a veth pair into the floor, our filter with
     100k prefixes, xdp-filter, nftables and iptables + ipset; a flood of
     random spoofed sources with per-source tracking and events on, events
     off, and tracking off; then the real daemon's peak memory while at
     least a million distinct sources reach it;
  4. reload time for 100k and 1M prefixes.
Writes results.md, results.json and chart.png into the output directory.

Needs root. Creates network namespaces xab-gen-PID and xab-rcv-PID and pins
under /sys/fs/bpf/xab-PID-*, and removes them when it ends. Stage 3 runs the
xdp-allowlist binary named by XDP_ALLOWLIST_BIN (cargo xtask bench builds
the release binary and sets it) and stops it by its pid. Installs xdp-tools,
nftables, ipset, iptables, bpftool and ethtool with apt-get when their
commands are missing.

USAGE:
    cargo xtask bench [--quick] [--out DIR] [--stages 1,2,3]

OPTIONS:
    --quick         fewer rounds, repeats and sizes (up to 100k); about 2 minutes
    --out DIR       where to write the results [default: bench-results/ in
                    the workspace]
    --stages LIST   run only these stages (1 per packet, 2 sizes and reload,
                    3 end to end) [default: 1,2,3]
    -h, --help      print this help

EXAMPLE:
    sudo cargo xtask bench --quick --out /tmp/bench
";

fn main() {
    let opts = match parse_args(std::env::args().skip(1)) {
        Ok(Some(opts)) => opts,
        Ok(None) => {
            print!("{HELP}");
            return;
        }
        Err(message) => {
            eprintln!("error: {message}\n\n{HELP}");
            std::process::exit(2);
        }
    };
    if !nix::unistd::geteuid().is_root() {
        eprintln!("error: the benchmark loads XDP programs and creates namespaces; run it as root");
        std::process::exit(2);
    }
    if let Err(err) = bench::run(&opts) {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Option<Options>, String> {
    let mut quick = false;
    // The workspace's bench-results/, wherever cargo was started from.
    let mut out = Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(
        || PathBuf::from("bench-results"),
        |root| root.join("bench-results"),
    );
    let mut stages = None;
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "-h" | "--help" => return Ok(None),
            "--out" => out = PathBuf::from(args.next().ok_or("--out needs a directory")?),
            "--stages" => {
                let list = args.next().ok_or("--stages needs a list like 1,3")?;
                let parsed: Result<Vec<u8>, _> =
                    list.split(',').map(|s| s.trim().parse::<u8>()).collect();
                match parsed {
                    Ok(v) if !v.is_empty() && v.iter().all(|s| (1..=3).contains(s)) => {
                        stages = Some(v)
                    }
                    _ => return Err(format!("`{list}` is not a list of stages 1, 2 and 3")),
                }
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    let mut opts = if quick {
        Options::quick(out)
    } else {
        Options::full(out)
    };
    if let Some(stages) = stages {
        opts.stages = stages;
    }
    Ok(Some(opts))
}
