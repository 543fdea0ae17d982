use std::path::Path;

use super::*;

const EXAMPLE: &str = r#"interfaces = ["eth0"]            # where the filter attaches
# xdp_mode = "auto"              # auto | native | skb

[services.admin]
ports = ["tcp/8443", "tcp/22"]
allow = ["203.0.113.0/24", "2001:db8:100::/48"]

[services.api]
ports = ["tcp/443", "udp/443"]
allow = ["198.51.100.0/24"]
"#;

fn parse(text: &str) -> Result<Loaded, ConfigError> {
    parse_str(text, Path::new("test.toml"))
}

/// The single problem of a refused file.
fn only_problem(text: &str) -> Problem {
    let err = parse(text).expect_err("the configuration should be refused");
    assert_eq!(
        err.problems.len(),
        1,
        "expected one problem, got {:#?}",
        err.problems
    );
    err.problems[0].clone()
}

#[test]
fn the_documented_example_parses() {
    let loaded = parse(EXAMPLE).expect("the README example must parse");
    let Config {
        interfaces,
        xdp_mode,
        tunnel_policy,
        capacity,
        events_per_second,
        services,
        audit_log,
        metrics_listen,
        alerts,
    } = loaded.config;
    assert_eq!(alerts, AlertSettings::default());
    assert_eq!(metrics_listen, None);
    assert_eq!(audit_log.as_deref(), Some(Path::new(DEFAULT_AUDIT_LOG)));
    assert_eq!(interfaces, vec!["eth0".to_owned()]);
    assert_eq!(xdp_mode, XdpModeSetting::Auto);
    assert_eq!(tunnel_policy, TunnelPolicy::Pass);
    assert_eq!(capacity, DEFAULT_CAPACITY);
    assert_eq!(events_per_second, DEFAULT_EVENTS_PER_SECOND);
    assert_eq!(services.len(), 2);

    let admin = &services["admin"];
    assert_eq!(admin.mode, ServiceMode::Enforce);
    assert_eq!(
        admin.ports,
        vec![
            PortRange {
                protocol: Protocol::Tcp,
                first: 8443,
                last: 8443
            },
            PortRange {
                protocol: Protocol::Tcp,
                first: 22,
                last: 22
            },
        ]
    );
    let nets: Vec<String> = admin.allow.iter().map(|e| e.net.to_string()).collect();
    assert_eq!(nets, ["203.0.113.0/24", "2001:db8:100::/48"]);

    let api = &services["api"];
    assert!(api.ports.iter().any(|p| p.contains(Protocol::Udp, 443)));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn extensions_parse() {
    let text = r#"
interfaces = ["eth0", "eth1"]
xdp_mode = "skb"
tunnel_policy = "drop"
capacity = 1000
events_per_second = 5

[services.webhooks]
ports = ["tcp/9000-9010", "sctp/3868"]
mode = "monitor"
allow = [
    "198.51.100.7",
    { cidr = "203.0.113.0/25", note = "provider range" },
]
"#;
    let config = parse(text).expect("valid").config;
    assert_eq!(config.xdp_mode, XdpModeSetting::Skb);
    assert_eq!(config.tunnel_policy, TunnelPolicy::Drop);
    assert_eq!(config.capacity, 1000);
    assert_eq!(config.events_per_second, 5);
    let service = &config.services["webhooks"];
    assert_eq!(service.mode, ServiceMode::Monitor);
    assert_eq!(service.ports[0].ports().count(), 11);
    assert_eq!(service.allow[0].net.to_string(), "198.51.100.7/32");
    assert_eq!(service.allow[1].note.as_deref(), Some("provider range"));
}

#[test]
fn unknown_keys_are_refused_with_their_line() {
    let problem = only_problem("interfaces = [\"eth0\"]\nintrefaces = []\n");
    assert_eq!((problem.line, problem.column), (2, 1));
    assert!(
        problem.message.contains("unknown key `intrefaces`"),
        "{}",
        problem.message
    );

    let problem = only_problem("[services.admin]\nports = [\"tcp/22\"]\nalow = []\n");
    assert_eq!(problem.line, 3);
    assert!(
        problem
            .message
            .contains("unknown key `alow` in service `admin`"),
        "{}",
        problem.message
    );

    let problem = only_problem("[services.admin]\nports = [\"tcp/22\"]\nallow = [{ cidr = \"198.51.100.0/24\", nite = \"x\" }]\n");
    assert_eq!(problem.line, 3);
    assert!(
        problem.message.contains("unknown key `nite`"),
        "{}",
        problem.message
    );
}

#[test]
fn bad_cidrs_are_refused() {
    let problem =
        only_problem("[services.a]\nports = [\"tcp/22\"]\nallow = [\"198.51.100.300/24\"]\n");
    assert_eq!((problem.line, problem.column), (3, 10));
    assert!(
        problem.message.contains("is not a CIDR"),
        "{}",
        problem.message
    );

    let problem =
        only_problem("[services.a]\nports = [\"tcp/22\"]\nallow = [\"198.51.100.0/33\"]\n");
    assert!(
        problem.message.contains("is not a CIDR"),
        "{}",
        problem.message
    );

    let problem = only_problem("[services.a]\nports = [\"tcp/22\"]\nallow = [\"office\"]\n");
    assert!(
        problem.message.contains("`office` is not a CIDR"),
        "{}",
        problem.message
    );
}

#[test]
fn host_bits_are_refused_with_the_network_named() {
    let problem =
        only_problem("[services.a]\nports = [\"tcp/22\"]\nallow = [\"203.0.113.7/24\"]\n");
    assert_eq!(problem.line, 3);
    assert!(
        problem.message.contains("host bits set"),
        "{}",
        problem.message
    );
    assert!(
        problem.message.contains("`203.0.113.0/24`"),
        "{}",
        problem.message
    );

    let problem =
        only_problem("[services.a]\nports = [\"tcp/22\"]\nallow = [\"2001:db8::1/64\"]\n");
    assert!(
        problem.message.contains("`2001:db8::/64`"),
        "{}",
        problem.message
    );
}

#[test]
fn zone_ids_are_refused() {
    let problem =
        only_problem("[services.a]\nports = [\"tcp/22\"]\nallow = [\"fe80::1%eth0/128\"]\n");
    assert!(problem.message.contains("zone id"), "{}", problem.message);
}

#[test]
fn mapped_ipv6_ranges_are_refused() {
    for cidr in [
        "::ffff:203.0.113.0/120",
        "::ffff:0:0/96",
        "::203.0.113.0/120",
    ] {
        let problem = only_problem(&format!(
            "[services.a]\nports = [\"tcp/22\"]\nallow = [\"{cidr}\"]\n"
        ));
        assert!(
            problem.message.contains("IPv4-mapped"),
            "{cidr}: {}",
            problem.message
        );
    }
    // A wider range merely contains them: the kernel refuses such sources.
    assert!(parse("[services.a]\nports = [\"tcp/22\"]\nallow = [\"::/8\"]\n").is_ok());
}

#[test]
fn ports_outside_the_range_are_refused() {
    for spec in [
        "tcp/0",
        "tcp/65536",
        "udp/-1",
        "tcp/http",
        "tcp/",
        "tcp/20-10",
    ] {
        let problem = only_problem(&format!("[services.a]\nports = [\"{spec}\"]\nallow = []\n"));
        assert_eq!(problem.line, 2, "{spec}");
        assert!(
            problem.message.contains("1-65535") || problem.message.contains("backwards"),
            "{spec}: {}",
            problem.message
        );
    }
}

#[test]
fn unknown_protocols_are_refused() {
    let problem = only_problem("[services.a]\nports = [\"icmp/1\"]\nallow = []\n");
    assert!(
        problem.message.contains("unknown protocol `icmp`"),
        "{}",
        problem.message
    );
    let problem = only_problem("[services.a]\nports = [\"8443\"]\nallow = []\n");
    assert!(
        problem.message.contains("PROTOCOL/PORT"),
        "{}",
        problem.message
    );
}

#[test]
fn a_port_claimed_twice_is_refused_naming_both_places() {
    let text = "[services.a]\nports = [\"tcp/22\"]\nallow = []\n\n[services.b]\nports = [\"tcp/22\"]\nallow = []\n";
    let problem = only_problem(text);
    assert_eq!(problem.line, 6);
    assert!(
        problem.message.contains("tcp/22 is claimed twice"),
        "{}",
        problem.message
    );
    assert!(
        problem.message.contains("service `a`"),
        "{}",
        problem.message
    );
    assert!(problem.message.contains("line 2"), "{}", problem.message);

    // Overlapping ranges count too, and so does the same service twice.
    let problem =
        only_problem("[services.a]\nports = [\"udp/1000-2000\", \"udp/1500\"]\nallow = []\n");
    assert!(
        problem.message.contains("udp/1500 is claimed twice"),
        "{}",
        problem.message
    );

    // The same number in another protocol is another port.
    assert!(
        parse("[services.a]\nports = [\"tcp/443\"]\n[services.b]\nports = [\"udp/443\"]\n").is_ok()
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let text =
        "bogus = 1\n[services.a]\nports = [\"tcp/0\"]\nallow = [\"203.0.113.7/24\", \"x\"]\n";
    let err = parse(text).expect_err("refused");
    assert_eq!(err.problems.len(), 4, "{:#?}", err.problems);
    let shown = err.to_string();
    assert!(
        shown.starts_with("test.toml has 4 problems; nothing was changed"),
        "{shown}"
    );
    assert!(
        shown.contains("test.toml:1:1: unknown key `bogus`"),
        "{shown}"
    );
}

#[test]
fn invalid_toml_reports_its_line() {
    let problem = only_problem("interfaces = [\"eth0\"]\n[services.a\n");
    assert_eq!(problem.line, 2);
    assert!(
        problem.message.starts_with("not valid TOML"),
        "{}",
        problem.message
    );
}

#[test]
fn bad_choices_and_types_are_refused() {
    assert!(only_problem("xdp_mode = \"fast\"\n")
        .message
        .contains("use one of auto, native, skb"));
    assert!(only_problem("tunnel_policy = 1\n")
        .message
        .contains("must be a string"));
    assert!(only_problem("capacity = 0\n").message.contains("from 1 to"));
    assert!(only_problem("interfaces = \"eth0\"\n")
        .message
        .contains("must be a list"));
    assert!(only_problem("interfaces = [\"a/b\"]\n")
        .message
        .contains("not an interface name"));
    assert!(only_problem("[services.Admin]\nports = [\"tcp/22\"]\n")
        .message
        .contains("service name `Admin`"));
    assert!(only_problem("[services.a]\nallow = []\n")
        .message
        .contains("has no `ports`"));
    assert!(
        only_problem("[services.a]\nports = [\"tcp/22\"]\nmode = \"audit\"\n")
            .message
            .contains("enforce, monitor")
    );
}

#[test]
fn capacity_is_enforced_before_anything_changes() {
    let text = "capacity = 2\n[services.a]\nports = [\"tcp/22\"]\nallow = [\"198.51.100.1\", \"198.51.100.2\", \"198.51.100.3\"]\n";
    let problem = only_problem(text);
    assert!(
        problem
            .message
            .contains("3 IPv4 entries exceed `capacity` = 2"),
        "{}",
        problem.message
    );
}

#[test]
fn harmless_oddities_are_warnings() {
    let loaded = parse(
        "[services.a]\nports = [\"tcp/22\"]\nallow = [\"198.51.100.0/24\", \"198.51.100.0/24\"]\n",
    )
    .expect("duplicates are legal");
    assert_eq!(loaded.config.services["a"].allow.len(), 1);
    assert!(loaded.warnings[0].message.contains("listed twice"));

    let loaded = parse("[services.a]\nports = [\"tcp/22\"]\n").expect("an empty list is legal");
    assert!(loaded.warnings[0].message.contains("allows no source"));
}

#[test]
fn cidr_parsing_is_shared_with_the_cli() {
    assert_eq!(
        parse_cidr(" 198.51.100.0/24 ").map(|n| n.to_string()),
        Ok("198.51.100.0/24".to_owned())
    );
    assert_eq!(
        parse_cidr("2001:db8::1").map(|n| n.to_string()),
        Ok("2001:db8::1/128".to_owned())
    );
    assert!(matches!(
        parse_cidr("198.51.100.1/24"),
        Err(CidrError::HostBits { .. })
    ));
}

#[test]
fn an_alerts_section_sets_every_key() {
    let text = r#"
[alerts]
window = "5m"
source_drops = 10
prefix_drops = 50
scan_ports = 3
summary_interval = "1s"
new_sources_per_second = 500
file = "/var/log/xdp-allowlist/events.jsonl"
command = ["/usr/local/bin/notify", "--team", "net"]
command_timeout = "3s"
access_records = false
track_sources = false
"#;
    let alerts = parse(text).expect("valid [alerts]").config.alerts;
    let AlertSettings {
        window,
        source_drops,
        prefix_drops,
        scan_ports,
        summary_interval,
        new_sources_per_second,
        file,
        command,
        command_timeout,
        access_records,
        track_sources,
    } = alerts;
    assert_eq!(window, std::time::Duration::from_secs(300));
    assert_eq!(source_drops, 10);
    assert_eq!(prefix_drops, 50);
    assert_eq!(scan_ports, 3);
    assert_eq!(summary_interval, std::time::Duration::from_secs(1));
    assert_eq!(new_sources_per_second, 500);
    assert_eq!(
        file.as_deref(),
        Some(Path::new("/var/log/xdp-allowlist/events.jsonl"))
    );
    assert_eq!(command, ["/usr/local/bin/notify", "--team", "net"]);
    assert_eq!(command_timeout, std::time::Duration::from_secs(3));
    assert!(!access_records);
    assert!(!track_sources);
}

#[test]
fn alert_defaults_match_the_kernel_defaults() {
    let alerts = AlertSettings::default();
    assert_eq!(alerts.window, std::time::Duration::from_secs(60));
    assert_eq!(
        alerts.summary_interval_ms(),
        xdp_allowlist_common::DEFAULT_SUMMARY_INTERVAL_MS
    );
    assert_eq!(
        alerts.new_sources_per_second,
        xdp_allowlist_common::DEFAULT_NEW_SOURCES_PER_SEC
    );
    assert!(alerts.access_records && alerts.track_sources);
    assert!(alerts.file.is_none() && alerts.command.is_empty());
}

#[test]
fn bad_alert_values_are_refused_with_their_line() {
    for (text, needle) in [
        ("[alerts]\nwindow = \"0s\"\n", "`window` is `0s`"),
        ("[alerts]\nwindow = \"soon\"\n", "not a duration"),
        ("[alerts]\nwindow = 60\n", "duration string"),
        (
            "[alerts]\nsource_drops = 0\n",
            "`source_drops` must be a whole number from 1",
        ),
        ("[alerts]\nprefix_drops = -3\n", "`prefix_drops`"),
        ("[alerts]\nscan_ports = 0\n", "`scan_ports`"),
        ("[alerts]\nscan_ports = 257\n", "`scan_ports`"),
        ("[alerts]\ncommand = []\n", "it is empty"),
        ("[alerts]\ncommand = [\"\", \"x\"]\n", "first element"),
        ("[alerts]\ncommand = \"notify --all\"\n", "no shell"),
        ("[alerts]\nfile = \"\"\n", "`file` in [alerts]"),
        ("[alerts]\naccess_records = \"yes\"\n", "true or false"),
        ("[alerts]\ntrack_sources = 1\n", "true or false"),
        (
            "[alerts]\nsummary_interval = \"10ms\"\n",
            "`summary_interval`",
        ),
        ("[alerts]\ncommand_timeout = \"2h\"\n", "`command_timeout`"),
        (
            "[alerts]\nwindow = \"60s\"\nthreshold = 3\n",
            "unknown key `threshold` in [alerts]",
        ),
        ("alerts = 3\n", "must be a table"),
    ] {
        let problem = only_problem(text);
        assert!(
            problem.message.contains(needle),
            "{text:?}: expected `{needle}` in `{}`",
            problem.message
        );
        let expected_line = if text.starts_with("alerts") {
            1
        } else {
            text.lines().count()
        };
        assert_eq!(problem.line, expected_line, "{text:?}: {problem:?}");
    }
}
