//! Probing alerts end to end, as root: nmap scans a server whose protected
//! ports allow only another address; the real daemon must raise one `scan`
//! alert for the episode, write it to the `[alerts] file`, show it through
//! `xdp-allowlist events`, count it in the metrics, and record an allowed
//! source's connection as access. A burst too short for the kernel's
//! summaries must still raise a `source` alert, through the daemon's sweep
//! of the source map.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use xdp_allowlist_tests::{
    daemon::{assert_success, Daemon, Instance},
    netns::{Pair, CLIENT_V4, SERVER_V4},
};

/// The only address the protected ports allow.
const ALLOWED: &str = "198.51.100.3";

const SCANNED: [u16; 6] = [22, 8443, 9000, 9001, 9002, 9003];

const METRICS: &str = "198.51.100.1:9725";

fn config(events_file: &Path) -> String {
    config_with(
        events_file,
        "window = \"60s\"\nscan_ports = 3\nsource_drops = 4\nsummary_interval = \"500ms\"\n",
    )
}

/// The services every test here protects, with `alerts` as the body of the
/// `[alerts]` section (and the file).
fn config_with(events_file: &Path, alerts: &str) -> String {
    format!(
        r#"
metrics_listen = "{METRICS}"

[services.admin]
ports = ["tcp/22", "tcp/8443"]
allow = ["{ALLOWED}/32"]

[services.jobs]
ports = ["tcp/9000-9003"]
allow = ["{ALLOWED}/32"]

[alerts]
{alerts}file = "{}"
"#,
        events_file.display()
    )
}

/// Lines of the events file, parsed.
fn records(path: &Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

/// Waits until some record satisfies `wanted`; returns it.
fn wait_for_record(
    path: &Path,
    daemon: &Daemon,
    limit: Duration,
    wanted: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(found) = records(path).into_iter().find(|r| wanted(r)) {
            return found;
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "no such record within {limit:?}; file:\n{}\nlog:\n{}",
        fs::read_to_string(path).unwrap_or_default(),
        daemon.log_text()
    );
}

fn is_scan_firing(record: &Value) -> bool {
    record["type"] == "alert"
        && record["alert"] == "scan"
        && record["state"] == "firing"
        && record["source"] == CLIENT_V4
}

/// A SYN scan from the client's main address, bounded by nmap's own host
/// timeout and by `timeout`.
fn nmap(pair: &Pair) {
    let ports: Vec<String> = SCANNED.iter().map(u16::to_string).collect();
    let out = Command::new("timeout")
        .args(["60", "ip", "netns", "exec", &pair.client])
        .args(["nmap", "-n", "-Pn", "-sS", "--max-retries", "1"])
        .args([
            "--host-timeout",
            "30s",
            "-S",
            CLIENT_V4,
            "-e",
            &pair.client_if,
        ])
        .args(["-p", &ports.join(","), SERVER_V4])
        .output()
        .unwrap_or_else(|e| panic!("cannot run nmap: {e}"));
    assert_success(&out, "nmap");
    let report = String::from_utf8_lossy(&out.stdout);
    // The filter drops the SYNs: nmap must not see any port open.
    assert!(
        !report.contains(" open "),
        "a refused scanner saw an open port:\n{report}"
    );
}

/// The metrics page, fetched from the client namespace.
fn metrics(pair: &Pair) -> String {
    Pair::run_in(&pair.client, || {
        let addr: SocketAddr = METRICS.parse().unwrap_or_else(|e| panic!("{METRICS}: {e}"));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n")
            .unwrap_or_else(|e| panic!("write: {e}"));
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        text
    })
}

#[test]
fn an_nmap_scan_raises_one_scan_alert_and_allowed_access_is_recorded() {
    let pair = Pair::new(&[ALLOWED]);
    for port in SCANNED {
        pair.serve_tcp(port);
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let events_file = dir.path().join("events.jsonl");
    let daemon = Daemon::start(&pair, &config(&events_file));

    nmap(&pair);
    let alert = wait_for_record(
        &events_file,
        &daemon,
        Duration::from_secs(10),
        is_scan_firing,
    );
    let ports: Vec<&str> = alert["ports"]
        .as_array()
        .unwrap_or_else(|| panic!("ports is a list: {alert}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let scanned: Vec<String> = SCANNED.iter().map(|p| format!("tcp/{p}")).collect();
    assert!(
        ports.len() >= 3 && ports.iter().all(|p| scanned.iter().any(|s| s == p)),
        "the alert names at least 3 of the scanned ports: {alert}"
    );
    assert_eq!(alert["window_seconds"], 60, "{alert}");
    assert!(alert["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    daemon.wait_for_log("probing alert firing", Duration::from_secs(2));

    // The same scanner again, within the window: the same episode.
    nmap(&pair);
    thread::sleep(Duration::from_secs(3));
    let firing = records(&events_file)
        .iter()
        .filter(|r| is_scan_firing(r))
        .count();
    assert_eq!(
        firing,
        1,
        "one scan alert per episode; file:\n{}",
        fs::read_to_string(&events_file).unwrap_or_default()
    );

    let page = metrics(&pair);
    assert!(
        page.contains("xdp_allowlist_alerts_active{alert=\"scan\"} 1"),
        "metrics:\n{page}"
    );
    assert!(!page.contains(CLIENT_V4), "no per-source label:\n{page}");

    // An allowed source reaching a protected port is recorded as access.
    assert!(
        pair.tcp_connects(ALLOWED, SERVER_V4, 22, Duration::from_secs(2)),
        "the allowed source must reach tcp/22"
    );
    let access = wait_for_record(&events_file, &daemon, Duration::from_secs(10), |r| {
        r["type"] == "access" && r["source"] == ALLOWED
    });
    assert_eq!(access["service"], "admin", "{access}");
    assert_eq!(access["protocol"], "tcp", "{access}");
    assert_eq!(access["port"], 22, "{access}");
    assert!(
        access["connections"].as_u64().is_some_and(|n| n >= 1),
        "{access}"
    );

    // The CLI shows the same records.
    let out = daemon.instance.cli(&["events", "--json"]);
    assert!(
        out.status.success(),
        "events --json failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    assert!(
        shown.iter().any(is_scan_firing),
        "events --json: {shown:#?}"
    );
    let out = daemon.instance.cli(&["events"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.contains("ALERT scan firing") && l.contains(CLIENT_V4)),
        "events:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("ACCESS admin") && l.contains(ALLOWED)),
        "events:\n{text}"
    );
}

/// `xdp-allowlist events --follow --json`, killed (by its pid) on drop.
struct Follower(Child);

impl Follower {
    /// Stops the follower and returns what it printed.
    fn finish(mut self) -> String {
        let _ = self.0.kill();
        let mut text = String::new();
        if let Some(mut stdout) = self.0.stdout.take() {
            let _ = stdout.read_to_string(&mut text);
        }
        let _ = self.0.wait();
        text
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_scan_alert_ends_after_a_quiet_window_and_runs_the_command_twice() {
    let pair = Pair::new(&[ALLOWED]);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let events_file = dir.path().join("events.jsonl");
    let command_file = dir.path().join("command.jsonl");
    let alerts = format!(
        "window = \"2s\"\nscan_ports = 3\nsummary_interval = \"500ms\"\ncommand = [\"/bin/sh\", \"-c\", \"cat >> {}\"]\n",
        command_file.display()
    );
    let daemon = Daemon::start(&pair, &config_with(&events_file, &alerts));

    // Started before the file exists: it waits for it.
    let follower = Follower(
        Command::new(xdp_allowlist_tests::daemon::binary())
            .arg("--config")
            .arg(&daemon.instance.config)
            .args(["events", "--follow", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start events --follow: {e}")),
    );

    nmap(&pair);
    wait_for_record(
        &events_file,
        &daemon,
        Duration::from_secs(10),
        is_scan_firing,
    );
    // Counts leave the 2 s window, then the condition stays false for
    // another window: the end comes within seconds, not minutes.
    let ended = wait_for_record(&events_file, &daemon, Duration::from_secs(15), |r| {
        r["alert"] == "scan" && r["state"] == "ended" && r["source"] == CLIENT_V4
    });
    assert!(
        ended["episode_drops"].as_u64().is_some_and(|n| n >= 3),
        "{ended}"
    );
    daemon.wait_for_log("probing alert ended", Duration::from_secs(2));
    let page = metrics(&pair);
    assert!(
        page.contains("xdp_allowlist_alerts_active{alert=\"scan\"} 0"),
        "metrics:\n{page}"
    );

    // The command ran once for each, with the alert on its standard input.
    let deadline = Instant::now() + Duration::from_secs(5);
    let given = loop {
        let given = records(&command_file);
        if given.len() >= 2 || Instant::now() > deadline {
            break given;
        }
        thread::sleep(Duration::from_millis(100));
    };
    let states: Vec<&str> = given
        .iter()
        .filter(|r| r["alert"] == "scan")
        .filter_map(|r| r["state"].as_str())
        .collect();
    assert_eq!(states, ["firing", "ended"], "command input: {given:#?}");

    thread::sleep(Duration::from_secs(1));
    let followed = follower.finish();
    let followed: Vec<Value> = followed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    assert!(
        followed.iter().any(is_scan_firing)
            && followed
                .iter()
                .any(|r| r["alert"] == "scan" && r["state"] == "ended"),
        "events --follow printed: {followed:#?}"
    );
}

#[test]
fn alert_thresholds_follow_a_reloaded_configuration() {
    let pair = Pair::new(&[ALLOWED]);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let events_file = dir.path().join("events.jsonl");
    let strict = "scan_ports = 50\n";
    let daemon = Daemon::start(&pair, &config_with(&events_file, strict));

    nmap(&pair);
    thread::sleep(Duration::from_secs(2));
    assert!(
        !records(&events_file).iter().any(is_scan_firing),
        "6 ports cannot reach scan_ports = 50"
    );

    // A new threshold and a new kernel summary interval: the interval is a
    // kernel setting, so it makes a new generation.
    let text = format!(
        "interfaces = [\"{}\"]\n{}",
        pair.server_if,
        config_with(&events_file, "scan_ports = 3\nsummary_interval = \"1s\"\n")
    );
    fs::write(&daemon.instance.config, text).unwrap_or_else(|e| panic!("write config: {e}"));
    daemon.wait_for_log("new generation applied", Duration::from_secs(5));
    let status = daemon.instance.status();
    assert_eq!(status["generation"], 2, "{status}");

    nmap(&pair);
    wait_for_record(
        &events_file,
        &daemon,
        Duration::from_secs(10),
        is_scan_firing,
    );
}

/// A burst that ends within one summary interval: the kernel reports only
/// its first packet, and nothing more unless the source sends again. The
/// daemon's sweep of the source map must count the rest, once.
#[test]
fn a_short_burst_raises_a_source_alert_from_the_sweep() {
    let pair = Pair::new(&[ALLOWED]);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let events_file = dir.path().join("events.jsonl");
    let config = format!(
        r#"
[services.dns]
ports = ["udp/5353"]
allow = ["{ALLOWED}/32"]

[alerts]
window = "4s"
source_drops = 20
prefix_drops = 1000
scan_ports = 50
summary_interval = "2s"
file = "{}"
"#,
        events_file.display()
    );
    let instance = Instance::new(&format!("interfaces = [\"{}\"]\n{config}", pair.server_if));
    // Debug level for the stream: each sweep logs what it read.
    let daemon = Daemon::start_with_env(
        &pair.server,
        instance,
        &[("XDP_ALLOWLIST_LOG", "info,xdp_allowlist::stream=debug")],
    );

    // 40 datagrams 2 ms apart: well within one 2 s interval, then silence.
    let started = Instant::now();
    let received = pair.udp_received(CLIENT_V4, SERVER_V4, 5353, 40);
    assert_eq!(received, 0, "a refused source must not reach udp/5353");
    let burst = started.elapsed();

    let is_source = |r: &Value, state: &str| {
        r["type"] == "alert"
            && r["alert"] == "source"
            && r["state"] == state
            && r["source"] == CLIENT_V4
    };
    let alert = wait_for_record(&events_file, &daemon, Duration::from_secs(6), |r| {
        is_source(r, "firing")
    });
    eprintln!(
        "source alert {:?} after the burst started",
        started.elapsed()
    );
    // It fires on the observation that crosses the threshold: with the
    // packets spread over two CPUs, before the other CPU's share is added.
    assert!(
        alert["drops"]
            .as_u64()
            .is_some_and(|n| (20..=40).contains(&n)),
        "burst took {burst:?}: {alert}"
    );
    assert_eq!(alert["services"][0], "dns", "{alert}");
    assert_eq!(alert["ports"][0], "udp/5353", "{alert}");

    // Once the burst left the window and a quiet window passed, the episode
    // ends with every datagram counted, none twice: the first by its event,
    // the rest by a sweep.
    let ended = wait_for_record(&events_file, &daemon, Duration::from_secs(15), |r| {
        is_source(r, "ended")
    });
    assert_eq!(
        ended["episode_drops"],
        40,
        "burst took {burst:?}: {ended}\n{}\n{:#}",
        daemon.log_text(),
        daemon.instance.status(),
    );
    let firing = records(&events_file)
        .into_iter()
        .filter(|r| is_source(r, "firing"))
        .count();
    assert_eq!(firing, 1, "one episode");

    // The sweep after the burst read the table; those after it, with no
    // packet accounted since, read nothing.
    let log = daemon.log_text();
    let sweeps: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("swept the source map"))
        .collect();
    assert!(
        sweeps.iter().any(|l| l.contains("entries=Some(")),
        "no sweep read the table:\n{log}"
    );
    assert!(
        sweeps.last().is_some_and(|l| l.contains("entries=None")),
        "a sweep with nothing new read the table anyway:\n{log}"
    );
}
