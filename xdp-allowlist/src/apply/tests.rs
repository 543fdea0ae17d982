use std::{collections::BTreeSet, net::IpAddr, path::Path};

use super::{fake::FakeVerdict, *};
use crate::config::parse_str;

fn config(text: &str) -> Config {
    parse_str(text, Path::new("test.toml"))
        .expect("valid test config")
        .config
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("address")
}

const TCP: u32 = 0;
const UDP: u32 = 1;

const BEFORE: &str = r#"
[services.admin]
ports = ["tcp/8443"]
allow = ["203.0.113.0/24", "2001:db8:100::/48"]
[services.api]
ports = ["tcp/443", "udp/443"]
allow = ["198.51.100.0/24"]
"#;

const AFTER: &str = r#"
[services.admin]
ports = ["tcp/8443", "tcp/22"]
allow = ["203.0.113.0/24", "198.51.100.7/32"]
[services.webhooks]
ports = ["tcp/9000"]
mode = "monitor"
allow = ["198.51.100.64/26"]
"#;

fn applied(text: &str) -> Applier<FakeMaps> {
    let mut applier = Applier::adopt(FakeMaps::default()).expect("adopt");
    applier.apply(&config(text)).expect("apply");
    applier
}

#[test]
fn first_apply_enforces_the_configuration() {
    let applier = applied(BEFORE);
    let maps = applier.maps();
    assert_eq!(applier.generation(), 1);
    assert_eq!(maps.judge(TCP, 8443, ip("203.0.113.9")), FakeVerdict::Pass);
    assert_eq!(
        maps.judge(TCP, 8443, ip("2001:db8:100::5")),
        FakeVerdict::Pass
    );
    assert_eq!(maps.judge(TCP, 8443, ip("198.51.100.9")), FakeVerdict::Drop);
    assert_eq!(maps.judge(TCP, 443, ip("198.51.100.9")), FakeVerdict::Pass);
    assert_eq!(maps.judge(UDP, 443, ip("203.0.113.9")), FakeVerdict::Drop);
    assert_eq!(
        maps.judge(TCP, 80, ip("203.0.113.9")),
        FakeVerdict::Unprotected
    );
}

#[test]
fn a_reload_writes_only_the_idle_slot_then_flips_once() {
    let mut applier = applied(BEFORE);
    let active_before = applier.active_slot();
    applier.maps_mut().log.clear();

    let report = applier.apply(&config(AFTER)).expect("reload");
    assert_eq!(report.generation, 2);
    assert_ne!(report.slot, active_before);

    let log = &applier.maps().log;
    let flip = log
        .iter()
        .position(|w| w.starts_with("flip"))
        .expect("a flip");
    assert_eq!(flip, log.len() - 1, "the flip is the last write: {log:?}");
    assert_eq!(log.iter().filter(|w| w.starts_with("flip")).count(), 1);
    let idle = format!(" {} ", 1 - active_before);
    for write in &log[..flip] {
        assert!(
            write.contains(&idle),
            "write to the active slot before the flip: {write}"
        );
    }
}

#[test]
fn a_source_allowed_before_and_after_is_never_refused_mid_reload() {
    // Judge after every single write of the reload, by failing the apply
    // at each step in turn and judging what the kernel would see.
    let total = {
        let mut probe = applied(BEFORE);
        probe.maps_mut().log.clear();
        probe.apply(&config(AFTER)).expect("reload");
        probe.maps().log.len()
    };
    for step in 0..=total {
        let mut applier = applied(BEFORE);
        let done_so_far = applier.maps().log.len();
        applier.maps_mut().fail_after = Some(done_so_far + step);
        let _ = applier.apply(&config(AFTER));
        let verdict = applier.maps().judge(TCP, 8443, ip("203.0.113.77"));
        assert_eq!(verdict, FakeVerdict::Pass, "after {step} writes");
        // Not yet allowed before the flip, allowed after it: never a mix.
        let newcomer = applier.maps().judge(TCP, 22, ip("198.51.100.7"));
        if step < total {
            assert_eq!(newcomer, FakeVerdict::Unprotected, "after {step} writes");
        } else {
            assert_eq!(newcomer, FakeVerdict::Pass);
        }
    }
}

#[test]
fn a_failed_apply_leaves_the_active_generation_and_the_next_one_recovers() {
    let mut applier = applied(BEFORE);
    let writes = applier.maps().log.len();
    applier.maps_mut().fail_after = Some(writes + 2);
    let err = applier.apply(&config(AFTER)).expect_err("injected failure");
    assert!(
        err.to_string()
            .contains("the active generation 1 is unchanged"),
        "{err}"
    );
    assert_eq!(applier.generation(), 1);
    assert_eq!(
        applier.maps().judge(TCP, 443, ip("198.51.100.9")),
        FakeVerdict::Pass
    );

    applier.maps_mut().fail_after = None;
    let report = applier.apply(&config(AFTER)).expect("retry");
    assert_eq!(report.generation, 2);
    assert_eq!(
        applier.maps().judge(TCP, 443, ip("198.51.100.9")),
        FakeVerdict::Unprotected
    );
    assert_eq!(
        applier.maps().judge(TCP, 22, ip("198.51.100.7")),
        FakeVerdict::Pass
    );
    assert_eq!(
        applier.maps().judge(TCP, 9000, ip("203.0.113.1")),
        FakeVerdict::WouldDrop
    );
}

#[test]
fn unchanged_configurations_cost_nothing() {
    let mut applier = applied(BEFORE);
    let report = applier.apply(&config(BEFORE)).expect("same again");
    assert!(report.unchanged);
    assert_eq!(report.generation, 1);
}

#[test]
fn alert_settings_reach_the_kernel_control_and_count_as_a_change() {
    let mut applier = applied(BEFORE);
    let control = applier.maps().control().expect("control");
    assert_eq!(control.summary_interval_ms, 2_000);
    assert_eq!(control.new_sources_per_sec, 20_000);

    let tuned =
        format!("{BEFORE}[alerts]\nsummary_interval = \"500ms\"\nnew_sources_per_second = 7\n");
    let report = applier.apply(&config(&tuned)).expect("apply tuned");
    assert!(!report.unchanged, "new kernel settings must be applied");
    let control = applier.maps().control().expect("control");
    assert_eq!(control.summary_interval_ms, 500);
    assert_eq!(control.new_sources_per_sec, 7);
    assert!(applier.apply(&config(&tuned)).expect("again").unchanged);

    let untracked = format!("{tuned}track_sources = false\n");
    assert!(
        !applier
            .apply(&config(&untracked))
            .expect("untracked")
            .unchanged
    );
    let control = applier.maps().control().expect("control");
    assert_ne!(control.flags & CONTROL_TRACKING_OFF, 0);
}

#[test]
fn small_changes_cost_small_writes() {
    let mut applier = applied(BEFORE);
    let changed = BEFORE.replace(
        "\"198.51.100.0/24\"",
        "\"198.51.100.0/24\", \"203.0.113.200/32\"",
    );
    // The idle slot is empty before the second apply, so it is filled once;
    // from then on each reload only replays the last two differences.
    applier.apply(&config(&changed)).expect("second");
    let report = applier.apply(&config(BEFORE)).expect("third");
    assert!(report.writes <= 2, "{report:?}");
}

#[test]
fn service_ids_survive_reloads_and_new_services_start_from_zero() {
    let mut applier = applied(BEFORE);
    let admin = applier.ids()["admin"];
    applier.apply(&config(AFTER)).expect("reload");
    assert_eq!(applier.ids()["admin"], admin);
    assert!(!applier.ids().contains_key("api"));
    let webhooks = applier.ids()["webhooks"];
    assert!(applier.maps().counters_reset.contains(&webhooks));
    assert_eq!(
        applier.maps().sources_forgotten.last(),
        Some(&BTreeSet::from([webhooks])),
        "the per-source entries of a new service's id are cleared, once"
    );
    assert_eq!(
        applier.maps().names.get(&webhooks).map(String::as_str),
        Some("webhooks")
    );
    assert!(
        !applier.maps().names.values().any(|n| n == "api"),
        "a removed service's name is cleared"
    );
}

#[test]
fn a_restarted_daemon_adopts_what_the_kernel_holds() {
    let first = applied(AFTER);
    let maps = FakeMaps {
        slots: first.maps().slots.clone(),
        control: first.maps().control,
        names: first.maps().names.clone(),
        ..FakeMaps::default()
    };
    let mut adopted = Applier::adopt(maps).expect("adopt");
    assert_eq!(adopted.generation(), 1);
    assert_eq!(adopted.ids(), first.ids());
    let report = adopted.apply(&config(AFTER)).expect("same config");
    assert!(
        report.unchanged,
        "adopting must not rewrite an identical policy"
    );
}

#[test]
fn tunnel_drop_stores_the_union_under_service_zero() {
    let text = format!("tunnel_policy = \"drop\"\n{BEFORE}");
    let applier = applied(&text);
    let state = applier.active_state();
    assert!(state.v4.iter().any(
        |(id, net)| *id == crate::policy::UNION_SERVICE && net.to_string() == "198.51.100.0/24"
    ));
    assert!(state
        .v6
        .iter()
        .any(|(id, _)| *id == crate::policy::UNION_SERVICE));
    assert_eq!(
        applier.maps().control.flags & xdp_allowlist_common::CONTROL_TUNNEL_DROP,
        1
    );
}
