//! The filter's promises across daemon crashes, restarts, reloads under
//! traffic and interfaces that come and go: nothing allowed is dropped,
//! nothing refused passes.

use std::{fs, process::Command, thread, time::Duration};

use aya::maps::{Array, Map, MapData};
use xdp_allowlist_common::{Meta, META_MAP};
use xdp_allowlist_tests::{
    daemon::{Daemon, Instance},
    netns::{sh, Pair, CLIENT_V4, SERVER_V4},
};

const REFUSED: &str = "198.51.100.5";
const PORT: u16 = 7000;

fn config(extra: &str) -> String {
    format!(
        "[services.feed]\nports = [\"udp/{PORT}-{}\"]\nallow = [\"{CLIENT_V4}/32\"{extra}]\n",
        PORT + 1
    )
}

#[test]
fn kill_9_and_restart_drop_nothing_allowed_and_pass_nothing_refused() {
    let pair = Pair::new(&[REFUSED]);
    let mut first = Daemon::start(&pair, &config(""));

    let allowed = pair.udp_stream(CLIENT_V4, SERVER_V4, PORT, 1500, Duration::from_millis(2));
    thread::sleep(Duration::from_millis(800));

    // SIGKILL: no chance to clean up anything.
    first.kill();
    thread::sleep(Duration::from_millis(500));
    let attacker = pair.udp_received(REFUSED, SERVER_V4, PORT + 1, 50);
    assert_eq!(
        attacker, 0,
        "a refused source got through while no daemon ran"
    );

    // A second daemon on the same files adopts the pinned state.
    let instance = Instance {
        dir: tempfile::tempdir().unwrap_or_else(|e| panic!("{e}")),
        config: first.instance.config.clone(),
        pin_dir: first.instance.pin_dir.clone(),
    };
    let second = Daemon::start_instance(&pair, instance);
    let (sent, received) = allowed.finish();
    assert_eq!(sent, 1500);
    assert_eq!(
        received, sent,
        "allowed datagrams were lost across kill -9 and restart"
    );
    assert!(
        second.log_text().contains("adopted the pinned filter"),
        "{}",
        second.log_text()
    );
    assert!(
        second.log_text().contains("no gap"),
        "the link was kept, not re-attached"
    );

    let status = second.instance.status();
    assert_eq!(
        status["generation"], 1,
        "adopting an identical configuration is not a new generation"
    );
}

#[test]
fn refused_sources_stay_refused_while_no_daemon_runs() {
    let pair = Pair::new(&[REFUSED]);
    let mut daemon = Daemon::start(&pair, &config(""));
    daemon.kill();
    let got = pair.udp_received(REFUSED, SERVER_V4, PORT, 50);
    assert_eq!(
        got, 0,
        "the pinned filter must keep refusing with no daemon"
    );
    let got = pair.udp_received(CLIENT_V4, SERVER_V4, PORT, 50);
    assert!(got >= 45, "and keep admitting ({got} of 50)");
}

#[test]
fn reloads_under_traffic_lose_no_allowed_packet() {
    let pair = Pair::new(&[]);
    let daemon = Daemon::start(&pair, &config(""));
    let base = fs::read_to_string(&daemon.instance.config).unwrap_or_default();

    let stream = pair.udp_stream(CLIENT_V4, SERVER_V4, PORT, 3000, Duration::from_millis(1));
    for i in 0..20u32 {
        // Alternate between configurations that both allow the client.
        let text = if i % 2 == 0 {
            base.replace(
                &format!("\"{CLIENT_V4}/32\""),
                &format!("\"{CLIENT_V4}/32\", \"203.0.113.{i}/32\", \"2001:db8:9::/48\""),
            )
        } else {
            base.replace(&format!("\"{CLIENT_V4}/32\""), "\"198.51.100.0/24\"")
        };
        xdp_allowlist::edit::write_atomically(&daemon.instance.config, &text)
            .unwrap_or_else(|e| panic!("write: {e:#}"));
        let _ = Command::new("kill")
            .args(["-HUP", &daemon.pid().to_string()])
            .status();
        thread::sleep(Duration::from_millis(150));
    }
    let (sent, received) = stream.finish();
    assert_eq!(sent, 3000);
    assert_eq!(
        received, sent,
        "an allowed source lost packets during reloads"
    );
    let generation = daemon.instance.status()["generation"].as_u64().unwrap_or(0);
    assert!(
        generation >= 15,
        "the reloads were applied (generation {generation})"
    );
}

#[test]
fn an_interface_deleted_and_created_again_gets_the_filter_back() {
    let pair = Pair::new(&[]);
    let daemon = Daemon::start(&pair, &config("").replace(CLIENT_V4, "203.0.113.9"));
    assert_eq!(pair.udp_received(CLIENT_V4, SERVER_V4, PORT, 10), 0);

    // Deleting one end of a veth deletes both; make the pair again.
    sh(Command::new("ip").args(["-n", &pair.server, "link", "del", &pair.server_if]));
    sh(Command::new("ip").args([
        "link",
        "add",
        &pair.server_if,
        "netns",
        &pair.server,
        "type",
        "veth",
        "peer",
        "name",
        &pair.client_if,
        "netns",
        &pair.client,
    ]));
    for (ns, ifname, addr) in [
        (&pair.server, &pair.server_if, SERVER_V4),
        (&pair.client, &pair.client_if, CLIENT_V4),
    ] {
        sh(Command::new("ip").args([
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            ifname,
        ]));
        sh(Command::new("ip").args(["-n", ns, "link", "set", ifname, "up"]));
    }
    daemon.wait_for_log("filter attached again", Duration::from_secs(6));
    assert_eq!(
        pair.udp_received(CLIENT_V4, SERVER_V4, PORT, 10),
        0,
        "refused again after re-attach"
    );
}

#[test]
fn pinned_maps_of_another_layout_are_refused() {
    let pair = Pair::new(&[]);
    let mut daemon = Daemon::start(&pair, &config(""));
    daemon.stop();

    let path = daemon.instance.pin_dir.join("maps").join(META_MAP);
    let data = MapData::from_pin(&path).unwrap_or_else(|e| panic!("{e}"));
    let mut meta: Array<MapData, Meta> =
        Array::try_from(Map::Array(data)).unwrap_or_else(|e| panic!("{e}"));
    let mut record = meta.get(&0, 0).unwrap_or_else(|e| panic!("{e}"));
    record.layout += 1000;
    meta.set(0, record, 0).unwrap_or_else(|e| panic!("{e}"));

    let out = daemon.instance.run_expecting_exit(&pair);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot be adopted") && stderr.contains("detach"),
        "{stderr}"
    );
}
