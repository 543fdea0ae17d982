//! End to end, as root: the real daemon and CLI, real clients, in network
//! namespaces of the test's own.

use std::{fs, time::Duration};

use xdp_allowlist_tests::{
    daemon::{assert_success, Daemon, Instance},
    netns::{Pair, CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6},
};

const SHORT: Duration = Duration::from_millis(700);

/// `allow add` and `allow remove` must take effect within this long.
const RELOAD_LIMIT: Duration = Duration::from_secs(1);

const ADMIN_ONLY: &str = r#"
[services.admin]
ports = ["tcp/8443"]
allow = ["203.0.113.0/24", "2001:db8:100::/48"]  # office, VPN
"#;

fn edit_cycle(pair: &Pair, daemon: &Daemon, client: &str, server: &str, cidr: &str) {
    assert!(
        !pair.tcp_connects(client, server, 8443, SHORT),
        "a refused source reached the protected port"
    );
    assert!(
        pair.tcp_connects(client, server, 8080, SHORT),
        "an unprotected port on the same host must answer"
    );

    assert_success(
        &daemon
            .instance
            .cli(&["allow", "add", "admin", cidr, "--note", "e2e"]),
        "allow add",
    );
    let took = pair.tcp_until(true, client, server, 8443, Duration::from_secs(3));
    let took = took.unwrap_or_else(|| {
        panic!(
            "{client} still refused after allow add; log:\n{}",
            daemon.log_text()
        )
    });
    assert!(took <= RELOAD_LIMIT, "allow add took {took:?} to apply");

    assert_success(
        &daemon.instance.cli(&["allow", "remove", "admin", cidr]),
        "allow remove",
    );
    let took = pair.tcp_until(false, client, server, 8443, Duration::from_secs(3));
    let took = took.unwrap_or_else(|| panic!("{client} still allowed after allow remove"));
    assert!(took <= RELOAD_LIMIT, "allow remove took {took:?} to apply");

    // Nothing restarted: one daemon, generations 1 (start), 2 (add), 3 (remove).
    assert_eq!(daemon.log_count("filter attached"), 1);
    let status = daemon.instance.status();
    assert_eq!(status["generation"], 3, "{status}");
}

#[test]
fn tcp_over_ipv4_refused_allowed_refused_without_restart() {
    let pair = Pair::new(&[]);
    pair.serve_tcp(8443);
    pair.serve_tcp(8080);
    let daemon = Daemon::start(&pair, ADMIN_ONLY);
    edit_cycle(
        &pair,
        &daemon,
        CLIENT_V4,
        SERVER_V4,
        &format!("{CLIENT_V4}/32"),
    );
}

#[test]
fn tcp_over_ipv6_refused_allowed_refused_without_restart() {
    let pair = Pair::new(&[]);
    pair.serve_tcp(8443);
    pair.serve_tcp(8080);
    let daemon = Daemon::start(&pair, ADMIN_ONLY);
    edit_cycle(&pair, &daemon, CLIENT_V6, SERVER_V6, "2001:db8:1::/64");
}

#[test]
fn an_allowed_source_connects_and_is_counted() {
    let pair = Pair::new(&["198.51.100.77"]);
    pair.serve_tcp(8443);
    let daemon = Daemon::start(
        &pair,
        "[services.admin]\nports = [\"tcp/8443\"]\nallow = [\"198.51.100.64/26\"]\n",
    );
    assert!(pair.tcp_connects("198.51.100.77", SERVER_V4, 8443, SHORT));
    assert!(!pair.tcp_connects(CLIENT_V4, SERVER_V4, 8443, SHORT));
    let status = daemon.instance.status();
    let admin = &status["services"]["admin"];
    assert!(
        admin["passed"].as_u64().unwrap_or(0) >= 3,
        "handshake packets counted as passed: {status}"
    );
    assert!(admin["dropped"].as_u64().unwrap_or(0) >= 1, "{status}");
}

#[test]
fn udp_to_a_protected_port_is_dropped_and_counted() {
    let pair = Pair::new(&[]);
    let daemon = Daemon::start(
        &pair,
        // Drop events are logged at debug level; an alert at the first
        // drop shows at the default level that the daemon saw them.
        "[services.dns]\nports = [\"udp/5353\"]\nallow = [\"203.0.113.0/24\"]\n[alerts]\nsource_drops = 1\n",
    );
    let protected = pair.udp_received(CLIENT_V4, SERVER_V4, 5353, 20);
    assert_eq!(
        protected, 0,
        "UDP from a refused source reached a protected port"
    );
    let unprotected = pair.udp_received(CLIENT_V4, SERVER_V4, 5354, 20);
    assert!(
        unprotected >= 15,
        "UDP to an unprotected port must pass ({unprotected} of 20)"
    );
    let protected_v6 = pair.udp_received(CLIENT_V6, SERVER_V6, 5353, 10);
    assert_eq!(
        protected_v6, 0,
        "UDP over IPv6 from a refused source reached a protected port"
    );

    let status = daemon.instance.status();
    let dns = &status["services"]["dns"];
    assert!(
        dns["dropped"].as_u64().unwrap_or(0) >= 30,
        "status --json must show the drops: {status}"
    );
    assert_eq!(dns["mode"], "enforce");
    let attachment = &status["attachments"][0];
    assert_eq!(attachment["interface"], pair.server_if.as_str());
    assert_eq!(
        attachment["mode"], "native",
        "veth supports native XDP: {status}"
    );
    assert!(
        status["events"]["sent"].as_u64().unwrap_or(0) >= 1,
        "a drop event was sent: {status}"
    );
    daemon.wait_for_log("probing alert firing", Duration::from_secs(3));
    assert!(
        daemon
            .log_text()
            .lines()
            .any(|l| l.contains("probing alert firing") && l.contains("src=198.51.100.2")),
        "the alert names the source: {}",
        daemon.log_text()
    );
}

#[test]
fn a_bad_edit_is_refused_and_the_last_good_allowlist_stays() {
    let pair = Pair::new(&[]);
    pair.serve_tcp(8443);
    let daemon = Daemon::start(
        &pair,
        "[services.admin]\nports = [\"tcp/8443\"]\nallow = [\"198.51.100.0/24\"]\n",
    );
    assert!(pair.tcp_connects(CLIENT_V4, SERVER_V4, 8443, SHORT));

    let good = fs::read_to_string(&daemon.instance.config).unwrap_or_default();
    let broken = good.replace("198.51.100.0/24", "198.51.100.9/24");
    fs::write(&daemon.instance.config, broken).unwrap_or_else(|e| panic!("write: {e}"));
    daemon.wait_for_log("configuration refused", Duration::from_secs(3));
    assert!(
        daemon.log_text().contains("host bits set"),
        "the log says why"
    );
    assert!(
        pair.tcp_connects(CLIENT_V4, SERVER_V4, 8443, SHORT),
        "the last good allowlist must stay in force"
    );
    assert_eq!(daemon.instance.status()["generation"], 1);

    let check = daemon.instance.cli(&["check"]);
    assert_eq!(check.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&check.stderr).contains(":4:"),
        "check names the line"
    );
}

#[test]
fn sighup_reloads_and_sigterm_leaves_the_filter_enforcing() {
    let pair = Pair::new(&[]);
    pair.serve_tcp(8443);
    let mut daemon = Daemon::start(&pair, ADMIN_ONLY);

    // An edit the watcher might miss is still applied on SIGHUP.
    let text = fs::read_to_string(&daemon.instance.config).unwrap_or_default();
    fs::write(
        &daemon.instance.config,
        text.replace("\"203.0.113.0/24\"", "\"198.51.100.0/24\""),
    )
    .unwrap_or_else(|e| panic!("write: {e}"));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    );
    assert!(pair
        .tcp_until(true, CLIENT_V4, SERVER_V4, 8443, Duration::from_secs(3))
        .is_some());

    let status = daemon.stop();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "clean shutdown; log:\n{}",
        daemon.log_text()
    );
    assert!(daemon.log_text().contains("the filter stays attached"));
    // With no daemon, the pinned filter still enforces the last generation.
    assert!(pair.tcp_connects(CLIENT_V4, SERVER_V4, 8443, SHORT));
    assert!(!pair.tcp_connects("2001:db8:1::2", SERVER_V6, 8443, SHORT));
    let status = daemon.instance.status();
    assert_eq!(
        status["attachments"][0]["interface"],
        pair.server_if.as_str()
    );
}

#[test]
fn a_second_daemon_for_the_same_pin_dir_is_refused() {
    let pair = Pair::new(&[]);
    let daemon = Daemon::start(&pair, ADMIN_ONLY);
    let out = daemon.instance.cli(&["run"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another xdp-allowlist daemon already runs")
    );
}

#[test]
fn detach_removes_the_filter() {
    let pair = Pair::new(&[]);
    pair.serve_tcp(8443);
    let mut daemon = Daemon::start(&pair, ADMIN_ONLY);
    daemon.stop();
    assert!(!pair.tcp_connects(CLIENT_V4, SERVER_V4, 8443, SHORT));
    let out = daemon.instance.cli(&["detach"]);
    assert_success(&out, "detach");
    assert!(
        pair.tcp_connects(CLIENT_V4, SERVER_V4, 8443, SHORT),
        "after detach nothing filters"
    );
    assert!(!daemon.instance.pin_dir.exists());
}

#[test]
fn bad_input_exits_2_and_changes_nothing() {
    let instance = Instance::new(ADMIN_ONLY);
    let before = fs::read_to_string(&instance.config).unwrap_or_default();
    for args in [
        &["allow", "add", "admin", "203.0.113.7/24"][..],
        &["allow", "add", "nosuch", "203.0.113.0/24"][..],
        &["allow", "remove", "admin", "198.51.100.0/24"][..],
        &["allow", "add", "admin", "fe80::1%eth0"][..],
    ] {
        let out = instance.cli(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.stderr.is_empty(), "{args:?} must say what was wrong");
        assert_eq!(
            fs::read_to_string(&instance.config).unwrap_or_default(),
            before
        );
    }
    let out = instance.cli(&["allow", "list", "--json"]);
    assert_success(&out, "allow list");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(list["admin"]["allow"][0]["cidr"], "203.0.113.0/24");
}

#[test]
fn explain_agrees_with_the_kernel_and_the_wire() {
    let pair = Pair::new(&["198.51.100.77"]);
    pair.serve_tcp(8443);
    let daemon = Daemon::start(
        &pair,
        "[services.admin]\nports = [\"tcp/8443\"]\nallow = [\"198.51.100.64/26\", { cidr = \"198.51.100.77/32\", note = \"bastion\" }, \"2001:db8:1::/64\"]\n\
         [services.hooks]\nports = [\"udp/9000\"]\nmode = \"monitor\"\nallow = []\n",
    );
    let cases = [
        ("198.51.100.77", "tcp/8443", "pass"),
        ("198.51.100.70", "tcp/8443", "pass"),
        ("198.51.100.2", "tcp/8443", "drop"),
        ("2001:db8:1::2", "tcp/8443", "pass"),
        ("2001:db8:2::2", "tcp/8443", "drop"),
        ("::ffff:198.51.100.77", "tcp/8443", "drop"),
        ("198.51.100.2", "udp/8443", "unprotected"),
        ("198.51.100.2", "udp/9000", "would_drop"),
    ];
    for (address, port, expected) in cases {
        let out = daemon.instance.cli(&["explain", address, port, "--json"]);
        assert_success(&out, "explain");
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        assert_eq!(
            answer["config"]["verdict"], expected,
            "{address} {port}: {answer}"
        );
        assert_eq!(
            answer["kernel"]["verdict"], expected,
            "the kernel disagrees for {address} {port}: {answer}"
        );
    }
    let out = daemon
        .instance
        .cli(&["explain", "198.51.100.77", "tcp/8443"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("note: bastion"));

    // And the wire says the same.
    assert!(pair.tcp_connects("198.51.100.77", SERVER_V4, 8443, SHORT));
    assert!(!pair.tcp_connects(CLIENT_V4, SERVER_V4, 8443, SHORT));
    assert!(pair.tcp_connects(CLIENT_V6, SERVER_V6, 8443, SHORT));
}

#[test]
fn an_entry_with_a_ttl_stops_admitting_on_time() {
    let pair = Pair::new(&[]);
    pair.serve_tcp(8443);
    let daemon = Daemon::start(&pair, ADMIN_ONLY);
    let cidr = format!("{CLIENT_V4}/32");
    let out = daemon.instance.cli(&[
        "allow",
        "add",
        "admin",
        &cidr,
        "--ttl",
        "3s",
        "--note",
        "temporary",
    ]);
    assert_success(&out, "allow add --ttl");
    assert!(
        pair.tcp_until(true, CLIENT_V4, SERVER_V4, 8443, Duration::from_secs(2))
            .is_some(),
        "admitted while the entry lives"
    );
    let list = daemon.instance.cli(&["allow", "list", "admin"]);
    assert!(
        String::from_utf8_lossy(&list.stdout).contains("expires "),
        "allow list shows the expiry"
    );

    // Expiry is checked on the daemon's 2-second poll.
    let refused = pair.tcp_until(false, CLIENT_V4, SERVER_V4, 8443, Duration::from_secs(8));
    assert!(
        refused.is_some(),
        "still admitted after the entry expired; log:\n{}",
        daemon.log_text()
    );
    daemon.wait_for_log("allowlist entry expired", Duration::from_secs(1));
    assert!(daemon.log_text().contains(&format!("cidr={cidr}")));
}

#[test]
fn every_change_and_refusal_is_in_the_audit_log() {
    let pair = Pair::new(&[]);
    let audit_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let audit = audit_dir.path().join("audit.jsonl");
    let daemon = Daemon::start(
        &pair,
        &format!("audit_log = \"{}\"\n{ADMIN_ONLY}", audit.display()),
    );

    let out = daemon
        .instance
        .cli(&["allow", "add", "admin", "198.51.100.9/32"]);
    assert_success(&out, "allow add");
    daemon.wait_for_log("new generation applied", Duration::from_secs(3));
    let out = daemon.instance.cli(&["allow", "add", "admin", "0.0.0.0/0"]);
    assert_eq!(out.status.code(), Some(2), "a /0 needs --force");
    let good = fs::read_to_string(&daemon.instance.config).unwrap_or_default();
    fs::write(
        &daemon.instance.config,
        good.replace("198.51.100.9/32", "198.51.100.9/24"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    daemon.wait_for_log("configuration refused", Duration::from_secs(3));

    let text = fs::read_to_string(&audit).unwrap_or_default();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    let find = |process: &str, outcome: &str| {
        lines
            .iter()
            .find(|l| l["actor"]["process"] == process && l["outcome"] == outcome)
            .unwrap_or_else(|| panic!("no {process} {outcome} record in:\n{text}"))
    };
    assert_eq!(find("daemon", "applied")["generation"], 1);
    let edit = find("cli", "written");
    assert_eq!(edit["changes"]["admin"]["added"][0], "198.51.100.9/32");
    assert_eq!(edit["actor"]["uid"], 0);
    let refused = find("cli", "refused");
    assert!(refused["reason"]
        .as_str()
        .unwrap_or("")
        .contains("every address"));
    let applied = lines
        .iter()
        .find(|l| l["actor"]["process"] == "daemon" && l["generation"] == 2)
        .unwrap_or_else(|| panic!("no generation 2 record:\n{text}"));
    assert_eq!(applied["changes"]["admin"]["added"][0], "198.51.100.9/32");
    let rejected = find("daemon", "rejected");
    assert!(rejected["reason"]
        .as_str()
        .unwrap_or("")
        .contains("host bits"));
}

#[test]
fn apply_with_confirm_rolls_back_unless_confirmed() {
    let pair = Pair::new(&[]);
    pair.serve_tcp(8443);
    let daemon = Daemon::start(
        &pair,
        "[services.admin]\nports = [\"tcp/8443\"]\nallow = [\"198.51.100.0/24\"]\n",
    );
    assert!(pair.tcp_connects(CLIENT_V4, SERVER_V4, 8443, SHORT));
    let original = fs::read_to_string(&daemon.instance.config).unwrap_or_default();

    // A candidate that cuts the client off, on a 3-second probation.
    let candidate = daemon.instance.dir.path().join("candidate.toml");
    fs::write(
        &candidate,
        original.replace("198.51.100.0/24", "203.0.113.0/24"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = daemon
        .instance
        .cli(&["apply", &candidate.display().to_string(), "--confirm", "3s"]);
    assert_success(&out, "apply --confirm");
    assert!(String::from_utf8_lossy(&out.stdout).contains("xdp-allowlist confirm"));
    assert!(
        !pair.tcp_connects(CLIENT_V4, SERVER_V4, 8443, SHORT),
        "the candidate is in force"
    );

    // Nobody confirms: the daemon puts the old configuration back.
    let back = pair.tcp_until(true, CLIENT_V4, SERVER_V4, 8443, Duration::from_secs(8));
    assert!(
        back.is_some(),
        "not rolled back; log:\n{}",
        daemon.log_text()
    );
    daemon.wait_for_log("not confirmed in time", Duration::from_secs(1));
    assert_eq!(
        fs::read_to_string(&daemon.instance.config).unwrap_or_default(),
        original
    );

    // Confirmed in time, the change stays.
    let out = daemon
        .instance
        .cli(&["apply", &candidate.display().to_string(), "--confirm", "3s"]);
    assert_success(&out, "apply --confirm");
    assert_success(&daemon.instance.cli(&["confirm"]), "confirm");
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        !pair.tcp_connects(CLIENT_V4, SERVER_V4, 8443, SHORT),
        "a confirmed change stays"
    );
    assert_eq!(
        daemon.instance.cli(&["confirm"]).status.code(),
        Some(2),
        "nothing left to confirm"
    );
}

#[test]
fn the_watch_survives_renames_and_configmap_symlink_swaps() {
    let pair = Pair::new(&[]);
    pair.serve_tcp(8443);
    // Lay the file out like a Kubernetes ConfigMap volume:
    // config.toml -> ..data/config.toml, ..data -> ..v1
    let instance = Instance::new("");
    let dir = instance.dir.path().to_path_buf();
    let refused = format!(
        "interfaces = [\"{}\"]\n[services.admin]\nports = [\"tcp/8443\"]\nallow = [\"203.0.113.0/24\"]\n",
        pair.server_if
    );
    let write_version = |name: &str, text: &str| {
        fs::create_dir_all(dir.join(name)).unwrap_or_else(|e| panic!("{e}"));
        fs::write(dir.join(name).join("config.toml"), text).unwrap_or_else(|e| panic!("{e}"));
    };
    write_version("..v1", &refused);
    fs::remove_file(&instance.config).unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::symlink("..v1", dir.join("..data")).unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::symlink("..data/config.toml", &instance.config)
        .unwrap_or_else(|e| panic!("{e}"));
    let daemon = Daemon::start_instance(&pair, instance);
    assert!(!pair.tcp_connects(CLIENT_V4, SERVER_V4, 8443, SHORT));

    // The kubelet's swap: a new directory, then one atomic rename of ..data.
    write_version(
        "..v2",
        &refused.replace("203.0.113.0/24", "198.51.100.0/24"),
    );
    std::os::unix::fs::symlink("..v2", dir.join("..data_tmp")).unwrap_or_else(|e| panic!("{e}"));
    fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap_or_else(|e| panic!("{e}"));
    let took = pair.tcp_until(true, CLIENT_V4, SERVER_V4, 8443, Duration::from_secs(3));
    let took =
        took.unwrap_or_else(|| panic!("ConfigMap swap not applied; log:\n{}", daemon.log_text()));
    assert!(took <= RELOAD_LIMIT, "took {took:?}");

    // An editor that writes a new file and renames it over the old one.
    let target = dir.join("..v2").join("config.toml");
    let temp = dir.join("..v2").join(".config.toml.swp");
    fs::write(&temp, &refused).unwrap_or_else(|e| panic!("{e}"));
    fs::rename(&temp, &target).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        pair.tcp_until(false, CLIENT_V4, SERVER_V4, 8443, Duration::from_secs(4))
            .is_some(),
        "a rename inside the data directory is applied too (watch or poll)"
    );
}

#[test]
fn jumbo_frames_get_generic_xdp_or_a_clear_refusal() {
    let pair = Pair::new(&[]);
    // veth needs multi-buffer XDP once its peer's MTU exceeds a page.
    for (ns, ifname) in [
        (&pair.server, &pair.server_if),
        (&pair.client, &pair.client_if),
    ] {
        xdp_allowlist_tests::netns::sh(
            std::process::Command::new("ip").args(["-n", ns, "link", "set", ifname, "mtu", "9000"]),
        );
    }

    // Asked for native XDP, the daemon refuses and says why.
    let instance = Instance::new(&format!(
        "interfaces = [\"{}\"]\nxdp_mode = \"native\"\n{ADMIN_ONLY}",
        pair.server_if
    ));
    let out = instance.run_expecting_exit(&pair);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("MTU is 9000") && stderr.contains("multi-buffer"),
        "{stderr}"
    );
    let _ = instance.cli(&["detach"]);

    // In auto mode it falls back to generic XDP, which sees whole frames.
    pair.serve_tcp(8443);
    let daemon = Daemon::start(&pair, ADMIN_ONLY);
    assert_eq!(daemon.instance.status()["attachments"][0]["mode"], "skb");
    assert!(!pair.tcp_connects(CLIENT_V4, SERVER_V4, 8443, SHORT));
}

#[test]
fn an_edit_over_ssh_that_would_lock_the_caller_out_is_refused() {
    let instance = Instance::new(
        "[services.ssh]\nports = [\"tcp/22\"]\nallow = [\"203.0.113.0/24\", \"198.51.100.0/24\"]\n",
    );
    let before = fs::read_to_string(&instance.config).unwrap_or_default();
    let run = |args: &[&str]| {
        std::process::Command::new(xdp_allowlist_tests::daemon::binary())
            .arg("--config")
            .arg(&instance.config)
            .args(args)
            .env("SSH_CONNECTION", "203.0.113.50 50022 198.51.100.1 22")
            .output()
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let out = run(&["allow", "remove", "ssh", "203.0.113.0/24"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("lock yourself out"));
    assert_eq!(
        fs::read_to_string(&instance.config).unwrap_or_default(),
        before
    );

    let candidate = instance.dir.path().join("candidate.toml");
    fs::write(&candidate, before.replace("\"203.0.113.0/24\", ", ""))
        .unwrap_or_else(|e| panic!("{e}"));
    let out = run(&["apply", &candidate.display().to_string()]);
    assert_eq!(out.status.code(), Some(2), "apply runs the same check");
    assert_eq!(
        fs::read_to_string(&instance.config).unwrap_or_default(),
        before
    );

    let out = run(&["allow", "remove", "ssh", "203.0.113.0/24", "--force"]);
    assert_success(&out, "forced");
}

#[test]
fn allow_import_loads_a_provider_list_and_refuses_a_truncated_one() {
    let instance =
        Instance::new("[services.hooks]\nports = [\"tcp/9000\"]\nallow = [\"203.0.113.9\"]\n");
    let meta = instance.dir.path().join("meta.json");
    fs::write(
        &meta,
        r#"{"hooks": ["198.51.100.0/26", "198.51.100.64/26", "198.51.100.128/26", "2001:db8:77::/48"], "web": ["203.0.113.0/24"]}"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let path = meta.display().to_string();
    let out = instance.cli(&[
        "allow", "import", "hooks", &path, "--format", "github", "--key", "hooks",
    ]);
    assert_success(&out, "import");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("+ 198.51.100.0/26") && stdout.contains("4 added"),
        "{stdout}"
    );

    fs::write(&meta, r#"{"hooks": ["198.51.100.0/26"]}"#).unwrap_or_else(|e| panic!("{e}"));
    let out = instance.cli(&[
        "allow", "import", "hooks", &path, "--format", "github", "--key", "hooks",
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a list shrunk by more than half is refused"
    );

    let list = instance.cli(&["allow", "list", "hooks", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap_or_default();
    let entries = list["hooks"]["allow"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        entries.len(),
        5,
        "the manual entry and the 4 imported: {list}"
    );
    assert!(entries[1]["note"]
        .as_str()
        .unwrap_or("")
        .contains("imported from meta.json"));
}

#[test]
fn the_metrics_endpoint_counts_the_traffic_sent() {
    use std::io::{Read as _, Write as _};

    let pair = Pair::new(&[]);
    let daemon = Daemon::start(
        &pair,
        "metrics_listen = \"127.0.0.1:9725\"\n[services.dns]\nports = [\"udp/5353\"]\nallow = [\"203.0.113.0/24\"]\n",
    );
    assert_eq!(pair.udp_received(CLIENT_V4, SERVER_V4, 5353, 25), 0);

    let scrape = || {
        Pair::run_in(&pair.server, || {
            let mut stream = std::net::TcpStream::connect("127.0.0.1:9725")
                .unwrap_or_else(|e| panic!("metrics endpoint: {e}"));
            let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
            stream
                .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
                .unwrap_or_else(|e| panic!("{e}"));
            let mut text = String::new();
            let _ = stream.read_to_string(&mut text);
            text
        })
    };
    let text = scrape();
    assert!(
        text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"),
        "{text}"
    );
    let value = |series: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no `{series}` in:\n{text}"))
    };
    assert_eq!(
        value("xdp_allowlist_packets_total{service=\"dns\",protocol=\"udp\",verdict=\"dropped\"}"),
        25,
        "the metrics count exactly the datagrams sent"
    );
    assert_eq!(
        value("xdp_allowlist_packets_total{service=\"dns\",protocol=\"udp\",verdict=\"passed\"}"),
        0
    );
    assert_eq!(value("xdp_allowlist_generation"), 1);
    assert!(
        !text.contains("198.51.100.2"),
        "never a label per source address"
    );
    drop(daemon);
}

/// `--log-format json` (here through its environment variable) writes one
/// JSON object per line with the fields apart; under systemd
/// (`JOURNAL_STREAM` set) text lines carry no timestamp, journald adds one.
#[test]
fn logs_are_json_lines_on_request_and_plain_under_journald() {
    let pair = Pair::new(&[]);
    let config = format!(
        "interfaces = [\"{}\"]\n[services.dns]\nports = [\"udp/5353\"]\nallow = [\"203.0.113.0/24\"]\n",
        pair.server_if
    );

    let json = Daemon::start_with_env(
        &pair.server,
        Instance::new(&config),
        &[("XDP_ALLOWLIST_LOG_FORMAT", "json")],
    );
    let text = json.log_text();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let attached = lines
        .iter()
        .find(|l| l["fields"]["message"] == "filter attached")
        .unwrap_or_else(|| panic!("no `filter attached` object in:\n{text}"));
    assert_eq!(attached["fields"]["interface"], pair.server_if.as_str());
    assert_eq!(attached["level"], "INFO");
    drop(json);

    let journald = Daemon::start_with_env(
        &pair.server,
        Instance::new(&config),
        &[("JOURNAL_STREAM", "8:12345")],
    );
    let text = journald.log_text();
    let line = text
        .lines()
        .find(|l| l.contains("filter attached"))
        .unwrap_or_else(|| panic!("no `filter attached` line in:\n{text}"));
    assert!(
        line.trim_start().starts_with("INFO"),
        "under journald a line starts with its level, not a timestamp: {line}"
    );
}
