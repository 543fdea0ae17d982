//! Probing alerts end to end, as root: nmap scans a server whose protected
//! ports allow only another address; the real daemon must raise one `scan`
//! alert for the episode, write it to the `[alerts] file`, show it through
//! `xdp-allowlist events`, count it in the metrics, and record an allowed
//! source's connection as access.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use xdp_allowlist_tests::{
    daemon::Daemon,
    netns::{Pair, CLIENT_V4, SERVER_V4},
};

/// The only address the protected ports allow.
const ALLOWED: &str = "198.51.100.3";

const SCANNED: [u16; 6] = [22, 8443, 9000, 9001, 9002, 9003];

const METRICS: &str = "198.51.100.1:9725";

fn config(events_file: &Path) -> String {
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
window = "60s"
scan_ports = 3
source_drops = 4
summary_interval = "500ms"
file = "{}"
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
    assert!(
        out.status.success(),
        "nmap failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
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
