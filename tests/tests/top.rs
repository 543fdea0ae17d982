//! `stats` and `top` end to end, as root: the real daemon protecting two
//! services in a server namespace, a refused client sending a known number
//! of datagrams and connection attempts, then the CLI reading the pinned
//! maps, `top` in a real terminal (tmux).

use std::{
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use xdp_allowlist_tests::{
    daemon::{assert_success, binary, Daemon},
    netns::{Pair, CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6},
};

const CONFIG: &str = r#"
[services.dns]
ports = ["udp/5353"]
allow = ["198.51.100.64/26"]

[services.admin]
ports = ["tcp/8443"]
allow = ["203.0.113.0/24"]
"#;

/// An allowed client address (in dns's allowlist).
const ALLOWED_V4: &str = "198.51.100.77";

const REFUSED_UDP_V4: usize = 37;
const REFUSED_UDP_V6: usize = 11;
const ALLOWED_UDP: usize = 4;
const TCP_ATTEMPTS: usize = 5;

/// Sends the traffic every test here expects; returns the daemon.
fn daemon_with_traffic(pair: &Pair) -> Daemon {
    let daemon = Daemon::start(pair, CONFIG);

    assert_eq!(
        pair.udp_received(CLIENT_V4, SERVER_V4, 5353, REFUSED_UDP_V4),
        0,
        "refused UDP over IPv4 reached the protected port"
    );
    assert_eq!(
        pair.udp_received(CLIENT_V6, SERVER_V6, 5353, REFUSED_UDP_V6),
        0,
        "refused UDP over IPv6 reached the protected port"
    );
    assert_eq!(
        pair.udp_received(ALLOWED_V4, SERVER_V4, 5353, ALLOWED_UDP),
        ALLOWED_UDP,
        "the allowed source's datagrams must arrive"
    );
    pair.serve_tcp(8443);
    for _ in 0..TCP_ATTEMPTS {
        assert!(
            !pair.tcp_connects(CLIENT_V4, SERVER_V4, 8443, Duration::from_millis(300)),
            "a refused source connected to tcp/8443"
        );
    }
    daemon
}

fn stats_json(daemon: &Daemon, extra: &[&str]) -> Value {
    let mut args = vec!["stats", "--json"];
    args.extend_from_slice(extra);
    let out = daemon.instance.cli(&args);
    assert_success(&out, "stats --json");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stats --json is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The row of `list` for (source, service).
fn row<'a>(list: &'a Value, source: &str, service: &str) -> &'a Value {
    list.as_array()
        .and_then(|rows| {
            rows.iter()
                .find(|r| r["source"] == source && r["service"] == service)
        })
        .unwrap_or_else(|| panic!("no row for {source} {service} in {list:#}"))
}

fn packets(value: &Value) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("not a count: {value}"))
}

#[test]
fn stats_counts_every_refused_datagram_and_names_the_ports() {
    let pair = Pair::new(&[ALLOWED_V4]);
    let daemon = daemon_with_traffic(&pair);

    let stats = stats_json(&daemon, &[]);

    let sources = &stats["sources"];
    let dns_v4 = row(sources, CLIENT_V4, "dns");
    assert_eq!(dns_v4["kind"], "drop");
    assert_eq!(
        packets(&dns_v4["packets"]),
        REFUSED_UDP_V4 as u64,
        "{dns_v4}"
    );
    assert_eq!(dns_v4["ports"], serde_json::json!(["udp/5353"]));
    let dns_v6 = row(sources, CLIENT_V6, "dns");
    assert_eq!(
        packets(&dns_v6["packets"]),
        REFUSED_UDP_V6 as u64,
        "{dns_v6}"
    );
    let admin = row(sources, CLIENT_V4, "admin");
    assert_eq!(admin["kind"], "drop");
    assert_eq!(admin["ports"], serde_json::json!(["tcp/8443"]));
    let syns = packets(&admin["packets"]);
    assert!(
        (TCP_ATTEMPTS as u64..=3 * TCP_ATTEMPTS as u64).contains(&syns),
        "{TCP_ATTEMPTS} connection attempts counted as {syns} SYNs"
    );
    assert!(
        admin["first_seen"].as_str().unwrap_or("") <= admin["last_seen"].as_str().unwrap_or(""),
        "{admin}"
    );

    // Per-service totals agree with the per-source rows.
    let services = &stats["services"];
    assert_eq!(
        packets(&services["dns"]["dropped"]),
        (REFUSED_UDP_V4 + REFUSED_UDP_V6) as u64,
        "{services:#}"
    );
    assert_eq!(
        packets(&services["dns"]["protocols"]["udp"]["dropped"]),
        (REFUSED_UDP_V4 + REFUSED_UDP_V6) as u64
    );
    assert_eq!(packets(&services["admin"]["dropped"]), syns);
    assert_eq!(
        packets(&services["admin"]["protocols"]["tcp"]["dropped"]),
        syns
    );
    assert_eq!(stats["sources_matched"], 3, "{stats:#}");

    // The allowed source is an access record, not a refusal.
    let access = row(&stats["access"], ALLOWED_V4, "dns");
    assert_eq!(access["kind"], "access");
    assert_eq!(packets(&access["packets"]), ALLOWED_UDP as u64);
    assert!(sources
        .as_array()
        .is_some_and(|rows| rows.iter().all(|r| r["source"] != ALLOWED_V4)));

    // --limit keeps the largest, and says how many matched.
    let limited = stats_json(&daemon, &["--limit", "1"]);
    assert_eq!(limited["sources"].as_array().map(Vec::len), Some(1));
    assert_eq!(limited["sources"][0]["source"], CLIENT_V4);
    assert_eq!(limited["sources"][0]["service"], "dns");
    assert_eq!(limited["sources_matched"], 3);

    // --since leaves out what was not seen lately.
    thread::sleep(Duration::from_secs(3));
    let recent = stats_json(&daemon, &["--since", "2s"]);
    assert_eq!(recent["sources_matched"], 0, "{recent:#}");
    assert_eq!(recent["since_seconds"], 2);
    let hour = stats_json(&daemon, &["--since", "1h"]);
    assert_eq!(hour["sources_matched"], 3);

    // The table form shows the same.
    let out = daemon.instance.cli(&["stats"]);
    assert_success(&out, "stats");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with(CLIENT_V4) && l.contains("dns"))
        .unwrap_or_else(|| panic!("no {CLIENT_V4} dns line in:\n{text}"));
    assert!(
        line.split_whitespace()
            .any(|w| w == REFUSED_UDP_V4.to_string()),
        "{line}"
    );

    // A bad --since is a usage error.
    let bad = daemon.instance.cli(&["stats", "--since", "soon"]);
    assert_eq!(bad.status.code(), Some(2));
}

static SESSIONS: AtomicU32 = AtomicU32::new(0);

/// A tmux server on a socket of its own; killed on drop, even on panic.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new() -> Self {
        let n = SESSIONS.fetch_add(1, Ordering::Relaxed);
        Tmux {
            socket: format!("xa-top-{}-{n}", std::process::id()),
        }
    }

    fn command(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run tmux: {e}"))
    }

    fn screen(&self) -> String {
        let out = self.command(&["capture-pane", "-p", "-t", "top"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn alive(&self) -> bool {
        self.command(&["has-session", "-t", "top"]).status.success()
    }

    /// Waits until the screen satisfies `check`; returns the last screen.
    fn wait_for(&self, limit: Duration, check: impl Fn(&str) -> bool) -> Result<String, String> {
        let deadline = Instant::now() + limit;
        let mut screen = String::new();
        while Instant::now() < deadline {
            screen = self.screen();
            if check(&screen) {
                return Ok(screen);
            }
            thread::sleep(Duration::from_millis(100));
        }
        Err(screen)
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .arg("kill-server")
            .output();
    }
}

/// The screen line of the table row for (source, service).
fn screen_row<'a>(screen: &'a str, source: &str, service: &str) -> Option<&'a str> {
    screen.lines().find(|line| {
        let words: Vec<&str> = line
            .split(|c: char| c.is_whitespace() || c == '│')
            .filter(|w| !w.is_empty())
            .collect();
        words.first() == Some(&source) && words.get(1) == Some(&service)
    })
}

fn words(line: &str) -> Vec<&str> {
    line.split(|c: char| c.is_whitespace() || c == '│')
        .filter(|w| !w.is_empty())
        .collect()
}

#[test]
fn top_shows_the_refused_sources_sorts_and_quits() {
    let pair = Pair::new(&[ALLOWED_V4]);
    let daemon = daemon_with_traffic(&pair);
    let tmux = Tmux::new();
    let err = daemon.instance.dir.path().join("top.err");

    // After top, the shell reports its exit code and whether the terminal is
    // back in canonical (cooked) mode, then the session ends.
    let command = format!(
        "{} --pin-dir {} top --interval 500ms 2>{}; echo \"top exited $?\"; \
         stty -a | tr ' ;' '\\n\\n' | grep -x -e icanon -e -icanon; sleep 2",
        binary().display(),
        daemon.instance.pin_dir.display(),
        err.display(),
    );
    let out = tmux.command(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "200",
        "-y",
        "50",
        &command,
    ]);
    assert_success(&out, "tmux new-session");

    let screen = tmux
        .wait_for(Duration::from_secs(10), |s| {
            screen_row(s, CLIENT_V4, "dns").is_some() && screen_row(s, CLIENT_V6, "dns").is_some()
        })
        .unwrap_or_else(|screen| {
            panic!(
                "top did not show the refused sources; screen:\n{screen}\nstderr: {}",
                std::fs::read_to_string(&err).unwrap_or_default()
            )
        });
    let dns_v4 = screen_row(&screen, CLIENT_V4, "dns").unwrap_or_default();
    let cells = words(dns_v4);
    assert_eq!(cells.get(2), Some(&"drop"), "{dns_v4}");
    assert_eq!(
        cells.get(3),
        Some(&REFUSED_UDP_V4.to_string().as_str()),
        "the drop count: {dns_v4}"
    );
    assert!(dns_v4.contains("udp/5353"), "{dns_v4}");
    let dns_v6 = screen_row(&screen, CLIENT_V6, "dns").unwrap_or_default();
    assert_eq!(
        words(dns_v6).get(3),
        Some(&REFUSED_UDP_V6.to_string().as_str()),
        "{dns_v6}"
    );
    assert!(
        screen_row(&screen, CLIENT_V4, "admin").is_some(),
        "{screen}"
    );
    assert!(
        !screen.contains(ALLOWED_V4),
        "access records are not refusals:\n{screen}"
    );
    assert!(screen.contains("sort: drops"), "{screen}");
    // The services pane.
    assert!(
        screen.lines().any(|l| {
            let w = words(l);
            w.first() == Some(&"dns")
                && w.get(2) == Some(&"udp")
                && w.get(4) == Some(&(REFUSED_UDP_V4 + REFUSED_UDP_V6).to_string().as_str())
        }),
        "the services pane shows dns's udp drops:\n{screen}"
    );
    // The first row by drops is the source with the most.
    let first_row = screen
        .lines()
        .find(|l| {
            let w = words(l);
            w.first() == Some(&CLIENT_V4) || w.first() == Some(&CLIENT_V6)
        })
        .unwrap_or_default();
    assert!(
        first_row.contains(&REFUSED_UDP_V4.to_string()),
        "{first_row}"
    );

    // While the source keeps sending, its rate and rate bar show it.
    let stream = pair.udp_stream(CLIENT_V4, SERVER_V4, 5353, 200, Duration::from_millis(10));
    tmux.wait_for(Duration::from_secs(5), |s| {
        screen_row(s, CLIENT_V4, "dns").is_some_and(|line| {
            let rate: f64 = words(line)
                .get(4)
                .and_then(|r| r.parse().ok())
                .unwrap_or(0.0);
            rate > 0.0 && line.contains(['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'])
        })
    })
    .unwrap_or_else(|screen| panic!("no rate for an ongoing source:\n{screen}"));
    let (sent, received) = stream.finish();
    assert_eq!(received, 0, "{sent} refused datagrams sent, some arrived");

    assert_success(
        &tmux.command(&["send-keys", "-t", "top", "s"]),
        "send-keys s",
    );
    tmux.wait_for(Duration::from_secs(3), |s| {
        s.contains("sort: rate") && !s.contains("sort: drops")
    })
    .unwrap_or_else(|screen| panic!("`s` did not change the sort:\n{screen}"));
    assert_success(
        &tmux.command(&["send-keys", "-t", "top", "s"]),
        "send-keys s",
    );
    tmux.wait_for(Duration::from_secs(3), |s| s.contains("sort: last seen"))
        .unwrap_or_else(|screen| panic!("`s` did not change the sort again:\n{screen}"));

    assert_success(
        &tmux.command(&["send-keys", "-t", "top", "q"]),
        "send-keys q",
    );
    let screen = tmux
        .wait_for(Duration::from_secs(3), |s| s.contains("top exited"))
        .unwrap_or_else(|screen| panic!("top did not exit within 3 s of `q`:\n{screen}"));
    assert!(
        screen.contains("top exited 0"),
        "{screen}\nstderr: {}",
        std::fs::read_to_string(&err).unwrap_or_default()
    );
    assert!(
        !screen.contains("refused sources:"),
        "top's view is still on screen (the alternate screen was not left):\n{screen}"
    );
    let screen = tmux
        .wait_for(Duration::from_secs(3), |s| {
            s.lines().any(|l| l.trim().ends_with("icanon"))
        })
        .unwrap_or_else(|screen| panic!("stty did not report:\n{screen}"));
    assert!(
        screen.lines().any(|l| l.trim() == "icanon"),
        "raw mode was not turned off:\n{screen}"
    );
    let deadline = Instant::now() + Duration::from_secs(6);
    while tmux.alive() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert!(!tmux.alive(), "the session did not end");
}

#[test]
fn top_without_a_terminal_or_a_filter_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let pin_dir = dir.path().join("nothing-pinned");

    // Not a terminal: standard output is a pipe here.
    let out = Command::new(binary())
        .arg("--pin-dir")
        .arg(&pin_dir)
        .arg("top")
        .output()
        .unwrap_or_else(|e| panic!("cannot run xdp-allowlist: {e}"));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("stats"));

    let out = Command::new(binary())
        .arg("--pin-dir")
        .arg(&pin_dir)
        .args(["top", "--interval", "1ms"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run xdp-allowlist: {e}"));
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    let out = Command::new(binary())
        .arg("--pin-dir")
        .arg(&pin_dir)
        .args(["stats", "--json"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run xdp-allowlist: {e}"));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is the filter loaded"),
        "{out:?}"
    );
}

/// Fills the daemon's pinned SOURCES map from userspace with values set per
/// CPU, so that the merge is checked against the kernel's real per-CPU
/// layout, and a full map is read by `stats` within a bounded time.
#[test]
fn stats_merges_per_cpu_values_of_a_full_map() {
    use aya::maps::{MapData, PerCpuArray, PerCpuValues};
    use xdp_allowlist::sources::Clock;
    use xdp_allowlist_common::{
        SourceKey, SourceSlot, SourceStats, EVENT_DROP, FAMILY_V4, PROTO_UDP, SOURCES_CAPACITY,
        SOURCES_MAP,
    };

    let pair = Pair::new(&[]);
    let daemon = Daemon::start(&pair, CONFIG);
    let mut sources: PerCpuArray<MapData, SourceSlot> =
        xdp_allowlist::bpf::open_map(&daemon.instance.pin_dir, SOURCES_MAP)
            .unwrap_or_else(|e| panic!("open SOURCES: {e:#}"));
    let cpus = aya::util::nr_cpus().unwrap_or_else(|(_, e)| panic!("nr_cpus: {e}"));
    let now = Clock::now().monotonic_ns;
    let dns = daemon.instance.status()["services"]["dns"]["id"]
        .as_u64()
        .and_then(|id| u16::try_from(id).ok())
        .unwrap_or_else(|| panic!("no id for dns"));
    let key = |i: u32| {
        let mut addr = [0; 16];
        // Map keys only (from 203.0.113.0 up): no packet comes from them.
        addr[..4].copy_from_slice(&(0xcb00_7100_u32 + i).to_be_bytes());
        SourceKey {
            service: dns,
            kind: EVENT_DROP,
            family: FAMILY_V4,
            addr,
        }
    };
    let stats = |packets: u64, first: u64, last: u64, port: u16| {
        let mut s = SourceStats {
            packets,
            bytes: packets * 10,
            first_seen_ns: first,
            last_seen_ns: last,
            port_count: 1,
            proto: PROTO_UDP,
            ..SourceStats::default()
        };
        s.ports[0] = port;
        s
    };

    // One source seen by every CPU, on a port each; the others by CPU 0 only.
    let mut spread = vec![SourceStats::default(); cpus];
    for (cpu, value) in spread.iter_mut().enumerate() {
        let c = cpu as u64;
        *value = stats(
            100 + c,
            now - 5_000_000_000 + c,
            now - 1_000_000_000 - c,
            5353 + cpu as u16,
        );
    }
    // Slot 0 of every CPU's table holds the spread source; the other slots
    // hold a source each on CPU 0 only: a full table.
    let slot = |key: SourceKey, stats: SourceStats| SourceSlot {
        key,
        _pad: 0,
        stats,
    };
    for i in 1..SOURCES_CAPACITY {
        let mut values = vec![SourceSlot::default(); cpus];
        values[0] = slot(
            key(i),
            stats(1, now - 9_000_000_000, now - 9_000_000_000, 5353),
        );
        let values = PerCpuValues::try_from(values).unwrap_or_else(|e| panic!("values: {e}"));
        sources
            .set(i, values, 0)
            .unwrap_or_else(|e| panic!("write slot {i}: {e}"));
    }
    let spread: Vec<SourceSlot> = spread.into_iter().map(|s| slot(key(0), s)).collect();
    let spread = PerCpuValues::try_from(spread).unwrap_or_else(|e| panic!("per-CPU values: {e}"));
    sources
        .set(0, spread, 0)
        .unwrap_or_else(|e| panic!("write slot 0: {e}"));

    let started = Instant::now();
    let all = stats_json(&daemon, &["--limit", "3"]);
    let took = started.elapsed();
    let matched = packets(&all["sources_matched"]);
    eprintln!("stats --json read {matched} tracked sources in {took:?}");

    assert_eq!(
        matched,
        u64::from(SOURCES_CAPACITY),
        "{matched} of {SOURCES_CAPACITY} entries read"
    );
    assert!(
        took < Duration::from_secs(10),
        "stats took {took:?} over a full map"
    );
    let top = &all["sources"][0];
    assert_eq!(top["source"], "203.0.113.0", "{all:#}");
    let cpu_count = cpus as u64;
    assert_eq!(
        packets(&top["packets"]),
        100 * cpu_count + cpu_count * (cpu_count - 1) / 2,
        "packets summed over the CPUs: {top}"
    );
    // The most recent CPU's ports first; every port is udp: 5353 because
    // dns protects it, the others because the source's packets were udp.
    let ports: Vec<String> = (0..cpus).map(|c| format!("udp/{}", 5353 + c)).collect();
    assert_eq!(top["ports"], serde_json::json!(ports), "{top}");
    assert!(
        top["first_seen"].as_str().unwrap_or("") < top["last_seen"].as_str().unwrap_or(""),
        "{top}"
    );

    // --since 3s keeps only the source seen a second ago.
    let recent = stats_json(&daemon, &["--since", "3s"]);
    assert_eq!(recent["sources_matched"], 1, "{recent:#}");
}
