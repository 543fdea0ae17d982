use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;

fn settings() -> AlertSettings {
    AlertSettings {
        window: Duration::from_secs(60),
        source_drops: 100,
        prefix_drops: 1000,
        scan_ports: 3,
        ..AlertSettings::default()
    }
}

/// A fixed start, so that tests never depend on the clock.
fn at(seconds: f64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000) + Duration::from_secs_f64(seconds)
}

fn drop(source: &str, port: u16, packets: u64, time: SystemTime) -> Observation {
    Observation {
        time,
        kind: ObservationKind::Drop,
        service: "admin".to_owned(),
        source: source.parse().expect("address"),
        protocol: Protocol::Tcp,
        port,
        ports: vec![port],
        packets,
        first_seen: time,
    }
}

fn alerts(records: &[Record]) -> Vec<&AlertRecord> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Alert(a) => Some(a),
            Record::Access(_) => None,
        })
        .collect()
}

#[test]
fn a_scan_fires_once_per_episode() {
    let mut engine = Engine::new(settings());
    let mut fired = Vec::new();
    for (i, port) in [22, 8443, 9000, 9001, 9002, 22, 8443]
        .into_iter()
        .enumerate()
    {
        let records = engine.observe(&drop("198.51.100.2", port, 1, at(i as f64)));
        fired.extend(alerts(&records).into_iter().cloned());
    }

    assert_eq!(fired.len(), 1, "one alert for the whole scan: {fired:#?}");
    let alert = &fired[0];
    assert_eq!(alert.alert, AlertKind::Scan);
    assert_eq!(alert.state, AlertState::Firing);
    assert_eq!(alert.source, "198.51.100.2");
    assert_eq!(alert.ports, ["tcp/22", "tcp/8443", "tcp/9000"]);
    assert_eq!(alert.services, ["admin"]);
    assert_eq!(alert.window_seconds, 60);
    assert_eq!(engine.active(AlertKind::Scan), 1);
}

#[test]
fn ports_touched_longer_ago_than_the_window_do_not_make_a_scan() {
    let mut engine = Engine::new(settings());
    let mut fired = 0;
    for (i, port) in [22, 8443, 9000, 9001].into_iter().enumerate() {
        let mut obs = drop("198.51.100.2", port, 1, at((i + 1) as f64 * 61.0));
        // The kernel's list covers the whole life, which is long: ignored.
        obs.ports = vec![22, 8443, 9000, 9001];
        obs.first_seen = at(0.0);
        fired += alerts(&engine.observe(&obs)).len();
    }
    assert_eq!(fired, 0);
}

#[test]
fn the_kernel_port_list_counts_when_it_is_recent() {
    let mut engine = Engine::new(settings());
    let mut obs = drop("198.51.100.2", 9001, 1, at(5.0));
    obs.ports = vec![22, 8443, 9001];
    obs.first_seen = at(1.0);
    let records = engine.observe(&obs);
    let fired = alerts(&records);
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].alert, AlertKind::Scan);
    assert_eq!(fired[0].ports, ["tcp/22", "tcp/8443", "tcp/9001"]);
}

#[test]
fn a_source_alert_fires_at_the_threshold_and_not_before() {
    let mut engine = Engine::new(settings());
    let records = engine.observe(&drop("203.0.113.9", 22, 99, at(0.0)));
    assert!(alerts(&records).is_empty());

    let records = engine.observe(&drop("203.0.113.9", 22, 1, at(1.0)));
    let fired = alerts(&records);
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].alert, AlertKind::Source);
    assert_eq!(fired[0].drops, 100);

    let records = engine.observe(&drop("203.0.113.9", 22, 500, at(2.0)));
    assert!(alerts(&records).is_empty(), "already firing");
}

#[test]
fn drops_spread_over_more_than_a_window_do_not_add_up() {
    let mut engine = Engine::new(settings());
    let mut fired = 0;
    for i in 0..10 {
        // 30 drops every 40 s: never 100 within 60 s.
        fired += alerts(&engine.observe(&drop("203.0.113.9", 22, 30, at(i as f64 * 40.0)))).len();
        fired += alerts(&engine.tick(at(i as f64 * 40.0 + 1.0))).len();
    }
    assert_eq!(fired, 0);
}

#[test]
fn rotating_addresses_inside_a_prefix_raise_a_prefix_alert() {
    let mut engine = Engine::new(settings());
    let mut fired = Vec::new();
    for host in 1..=20u8 {
        let source = format!("203.0.113.{host}");
        let records = engine.observe(&drop(&source, 22, 60, at(f64::from(host))));
        fired.extend(alerts(&records).into_iter().cloned());
    }
    assert_eq!(fired.len(), 1, "{fired:#?}");
    assert_eq!(fired[0].alert, AlertKind::Prefix);
    assert_eq!(fired[0].source, "203.0.113.0/24");
    assert!(fired[0].drops >= 1000);
    assert_eq!(engine.active(AlertKind::Source), 0);
}

#[test]
fn ipv6_prefixes_are_slash_64() {
    assert_eq!(
        prefix_of("2001:db8:1:2:aaaa::1".parse().expect("address")).to_string(),
        "2001:db8:1:2::/64"
    );
    assert_eq!(
        prefix_of("198.51.100.77".parse().expect("address")).to_string(),
        "198.51.100.0/24"
    );
}

#[test]
fn an_alert_ends_after_a_whole_quiet_window_and_can_fire_again() {
    let mut engine = Engine::new(settings());
    let records = engine.observe(&drop("203.0.113.9", 22, 150, at(0.0)));
    assert_eq!(alerts(&records).len(), 1);

    // Still true within the window; false from about 60 s on, so it may end
    // only a whole window after that.
    for second in 1..=100 {
        let ended = engine.tick(at(f64::from(second)));
        assert!(
            ended.is_empty(),
            "ended too early at {second} s: {ended:#?}"
        );
    }
    let mut ended = Vec::new();
    for second in 101..=130 {
        ended.extend(engine.tick(at(f64::from(second))));
    }
    let ended = alerts(&ended);
    assert_eq!(ended.len(), 1, "{ended:#?}");
    assert_eq!(ended[0].alert, AlertKind::Source);
    assert_eq!(ended[0].state, AlertState::Ended);
    assert_eq!(ended[0].episode_drops, Some(150));
    assert_eq!(engine.active(AlertKind::Source), 0);

    let again = engine.observe(&drop("203.0.113.9", 22, 150, at(200.0)));
    let again = alerts(&again);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].state, AlertState::Firing);
}

/// Drops counted under one window leave a longer one on time: a reload
/// that changes `window` neither keeps old counts forever nor loses an
/// episode's end.
#[test]
fn a_reloaded_window_counts_old_drops_in_time_and_still_ends_alerts() {
    let mut engine = Engine::new(settings());
    assert_eq!(
        alerts(&engine.observe(&drop("203.0.113.9", 22, 150, at(0.0)))).len(),
        1
    );

    // Ten times the window: the drops at 0 s count until 600 s.
    engine.set_settings(AlertSettings {
        window: Duration::from_secs(600),
        ..settings()
    });
    // A trickle after the reload stays below the threshold with them
    // gone, and must not pile onto them.
    let mut records = Vec::new();
    for second in (10..1_300).step_by(10) {
        if second < 700 {
            records.extend(engine.observe(&drop("203.0.113.9", 22, 1, at(f64::from(second)))));
        }
        records.extend(engine.tick(at(f64::from(second) + 0.5)));
    }
    let seen = alerts(&records);
    assert_eq!(seen.len(), 1, "one end, no new episode: {seen:#?}");
    assert_eq!(seen[0].state, AlertState::Ended);
    assert_eq!(engine.active(AlertKind::Source), 0);
}

#[test]
fn continued_probing_keeps_one_episode_going() {
    let mut engine = Engine::new(settings());
    let mut records = Vec::new();
    for second in 0..300 {
        records.extend(engine.observe(&drop("203.0.113.9", 22, 5, at(f64::from(second)))));
        records.extend(engine.tick(at(f64::from(second) + 0.5)));
    }
    let seen = alerts(&records);
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(seen[0].state, AlertState::Firing);
}

#[test]
fn access_observations_become_access_records_unless_switched_off() {
    let mut obs = drop("198.51.100.3", 22, 2, at(3.0));
    obs.kind = ObservationKind::Access;
    obs.first_seen = at(1.0);

    let mut engine = Engine::new(settings());
    let records = engine.observe(&obs);
    let Some(Record::Access(access)) = records.first() else {
        panic!("expected an access record, got {records:#?}");
    };
    assert_eq!(access.source, "198.51.100.3");
    assert_eq!(access.port, 22);
    assert_eq!(access.packets, 2);
    assert_eq!(access.connections, Some(2));
    assert_eq!(engine.tracked(), (0, 0), "access is not probing");

    let mut quiet = Engine::new(AlertSettings {
        access_records: false,
        ..settings()
    });
    assert!(quiet.observe(&obs).is_empty());
}

#[test]
fn memory_stays_bounded_under_a_flood_of_sources() {
    let mut engine = Engine::with_capacity(settings(), 64);
    for i in 0..5000u32 {
        let [_, a, b, c] = i.to_be_bytes();
        let source = format!("10.{a}.{b}.{c}");
        engine.observe(&drop(&source, 22, 1, at(f64::from(i) / 1000.0)));
        let (sources, prefixes) = engine.tracked();
        assert!(sources <= 64 && prefixes <= 64, "{sources} {prefixes}");
    }
    assert!(engine.evicted() > 4000, "evicted {}", engine.evicted());
}

#[test]
fn firing_sources_are_evicted_last() {
    let mut engine = Engine::with_capacity(settings(), 16);
    engine.observe(&drop("203.0.113.9", 22, 500, at(0.0)));
    for i in 0..100u8 {
        engine.observe(&drop(
            &format!("198.51.100.{i}"),
            22,
            1,
            at(1.0 + f64::from(i)),
        ));
    }
    assert_eq!(engine.active(AlertKind::Source), 1);
}

#[test]
fn quiet_sources_are_forgotten_on_tick() {
    let mut engine = Engine::new(settings());
    engine.observe(&drop("198.51.100.2", 22, 1, at(0.0)));
    assert_eq!(engine.tracked(), (1, 1));
    engine.tick(at(30.0));
    assert_eq!(engine.tracked(), (1, 1));
    engine.tick(at(61.0));
    assert_eq!(engine.tracked(), (0, 0));
}

#[test]
fn records_serialise_as_documented() {
    let mut engine = Engine::new(settings());
    let records = engine.observe(&drop("198.51.100.2", 22, 100, at(0.0)));
    let line = serde_json::to_value(&records[0]).expect("json");
    assert_eq!(line["type"], "alert");
    assert_eq!(line["alert"], "source");
    assert_eq!(line["state"], "firing");
    assert_eq!(line["source"], "198.51.100.2");
    assert_eq!(line["services"][0], "admin");
    assert_eq!(line["ports"][0], "tcp/22");
    assert_eq!(line["drops"], 100);
    assert_eq!(line["window_seconds"], 60);
    assert_eq!(line["time"], "2027-01-15T08:00:00.000Z");
    assert!(line.get("episode_drops").is_none());

    let mut obs = drop("198.51.100.3", 53, 4, at(0.0));
    obs.kind = ObservationKind::Access;
    obs.protocol = Protocol::Udp;
    let line = serde_json::to_value(&engine.observe(&obs)[0]).expect("json");
    assert_eq!(line["type"], "access");
    assert_eq!(line["protocol"], "udp");
    assert_eq!(line["port"], 53);
    assert_eq!(line["packets"], 4);
    assert!(line.get("connections").is_none());
}

#[test]
fn active_counts_follow_firing_ending_and_eviction() {
    let mut engine = Engine::with_capacity(settings(), 16);
    for host in 1..=3u8 {
        engine.observe(&drop(&format!("198.51.100.{host}"), 22, 100, at(0.0)));
    }
    assert_eq!(engine.active(AlertKind::Source), 3);

    // Fill the table with firing sources: the oldest firing ones go.
    for host in 10..60u8 {
        engine.observe(&drop(&format!("203.0.113.{host}"), 22, 100, at(1.0)));
    }
    let (sources, _) = engine.tracked();
    assert_eq!(engine.active(AlertKind::Source), sources);

    engine.tick(at(200.0));
    assert_eq!(engine.active(AlertKind::Source), 0);
    assert_eq!(engine.tracked(), (0, 0));
}
