//! The report's sections for two issue criteria: what the hardened parser
//! costs next to a naive one (issue #3), and a flood of distinct spoofed
//! sources with per-source tracking and events on and off, plus the daemon's
//! memory under it (issue #5).

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::{
    daemon_memory::DaemonMemory,
    e2e::{
        FloodSeries, SPOOFED_BUDGET, SPOOFED_DEFAULT, SPOOFED_EVENTS_OFF, SPOOFED_FLOOR,
        SPOOFED_TRACKING_OFF,
    },
    per_packet::{ParserCost, PARSER_BUDGET_NS},
    report::{bytes, flood, verdict, Target},
    Results,
};

/// The target rows of issues #3 and #5.
pub(super) fn targets(results: &Results) -> Vec<Target> {
    let mut out = Vec::new();
    for (family, what) in [
        (
            "IPv4",
            "#3 hardened parser ≤ naive + 10 ns, plain IPv4 TCP (worst of 3 paths)",
        ),
        (
            "IPv6",
            "#3 the same bound on plain IPv6 TCP (worst of 3 paths; not in the issue)",
        ),
    ] {
        let rows: Vec<&ParserCost> = results
            .parser
            .iter()
            .filter(|p| p.case.starts_with(family))
            .collect();
        let worst = rows
            .iter()
            .copied()
            .max_by(|a, b| a.added_ns().total_cmp(&b.added_ns()));
        if let Some(worst) = worst {
            out.push(Target {
                what,
                measured: format!(
                    "{:+.0} ns paired ({}; medians {:.0} vs {:.0})",
                    worst.added_ns(),
                    worst.case,
                    worst.hardened.median,
                    worst.naive.median
                ),
                met: Some(rows.iter().all(|p| p.added_ns() <= PARSER_BUDGET_NS)),
            });
        }
    }

    let e2e = &results.e2e;
    if let Some(on) = flood(e2e, SPOOFED_DEFAULT) {
        for (other, what) in [
            (
                SPOOFED_EVENTS_OFF,
                "#5 spoofed-source flood: events on ÷ events off ≤ 1.15 (ns per frame)",
            ),
            (
                SPOOFED_TRACKING_OFF,
                "#5 the same bound against per-source tracking off (not in the issue)",
            ),
        ] {
            if let Some(off) = flood(e2e, other) {
                let ratio = on.series.median / off.series.median;
                out.push(Target {
                    what,
                    measured: format!(
                        "{ratio:.2} × ({:.0} vs {:.0} ns/frame, {:.2} M distinct sources/s)",
                        on.series.median,
                        off.series.median,
                        on.frames_per_sec() / 1e6
                    ),
                    met: Some(ratio <= SPOOFED_BUDGET),
                });
            }
        }
    }
    if let Some(Ok(d)) = &results.daemon_memory {
        out.push(Target {
            what: "#5 daemon's peak resident memory under ≥ 1M distinct sources (reported)",
            measured: format!(
                "VmHWM {} before, {} after {} distinct sources",
                kib(d.hwm_before_kib),
                kib(d.hwm_after_kib),
                d.distinct_sources
            ),
            met: None,
        });
    }
    out
}

fn kib(n: u64) -> String {
    bytes(n * 1024)
}

/// The "Parser hardening cost" section.
pub(super) fn parser_markdown(md: &mut String, results: &Results) {
    if results.parser.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\n## 1b. Parser hardening cost (issue #3)\n\n| frame | hardened ns | naive ns | difference ns (paired) | target | verdict |\n|---|---:|---:|---:|---:|---|"
    );
    for p in &results.parser {
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.0} | {:+.0} | ≤ {PARSER_BUDGET_NS:.0} | {} |",
            p.case,
            p.hardened.median,
            p.naive.median,
            p.added_ns(),
            verdict(Some(p.added_ns() <= PARSER_BUDGET_NS))
        );
    }
    let _ = writeln!(
        md,
        "\n*hardened*: the real program (the same medians as the table above). *naive*: `xdp_naive`, a build of the same policy code and maps behind a parser that assumes a 20-byte IPv4 header and a bare 40-byte IPv6 header and follows no VLAN tag, IPv4 option, IPv6 extension header or fragment (`xdp-allowlist-ebpf/src/naive.rs`; for this benchmark only, never attached). Both are loaded with their own maps through the same loader, given the same configuration through `Applier` (their control records are checked to be equal), and timed through BPF_PROG_TEST_RUN on the same frame in the same rounds, back to back (the naive one second in odd rounds, first in even ones). *difference*: the median over the rounds of hardened minus naive within each round (the two run back to back, so a round slowed by other work on the machine slows both; this is why it can differ from the difference of the two medians, which drifts with the load). The verdict is on this paired difference. The issue's criterion is plain IPv4 TCP; IPv6 is held to the same bound here. BPF_PROG_TEST_RUN reports whole nanoseconds, so differences of a few ns are at the edge of what it resolves."
    );
}

fn spoofed_rows(results: &Results) -> Vec<&FloodSeries> {
    [
        SPOOFED_FLOOR,
        SPOOFED_DEFAULT,
        SPOOFED_EVENTS_OFF,
        SPOOFED_TRACKING_OFF,
    ]
    .iter()
    .filter_map(|name| flood(&results.e2e, name))
    .collect()
}

/// The "Flood of distinct spoofed sources" section, with the daemon's memory.
pub(super) fn spoofed_markdown(md: &mut String, results: &Results) {
    let rows = spoofed_rows(results);
    if let Some(frames) = rows.first().map(|f| f.frames) {
        let on = flood(&results.e2e, SPOOFED_DEFAULT).map(|f| f.series.median);
        let _ = writeln!(
            md,
            "\n## 3b. Flood of distinct spoofed sources (issue #5)\n\n| receiver | ns per frame | distinct sources/s | events-on ÷ this | events sent | rate limited | ring full | untracked |\n|---|---:|---:|---:|---:|---:|---:|---:|"
        );
        for f in rows {
            let ratio = on
                .map(|on| format!("{:.2}", on / f.series.median))
                .unwrap_or_default();
            let counters = match f.events_median() {
                Some([sent, limited, full, untracked]) => {
                    format!("{sent:.0} | {limited:.0} | {full:.0} | {untracked:.0}")
                }
                None => "– | – | – | –".to_owned(),
            };
            let _ = writeln!(
                md,
                "| {} | {:.0} | {:.2} M | {ratio} | {counters} |",
                f.series.name,
                f.series.median,
                f.frames_per_sec() / 1e6
            );
        }
        let _ = writeln!(
            md,
            "\nThe same flood as the many-sources rows above: TCP SYNs to the protected port from 2001:db8:ffff::/96 with a random 32-bit suffix per frame, so nearly every frame comes from a source not seen before (a run of {} frames repeats about {:.0} suffixes). Each row is its own instance of our filter with the same 100k+100k-prefix policy: *tracking + events* is the default (per-source accounting in the `SOURCES` table, events at 100 per second and CPU, {} new sources tracked per second and CPU); *events off* sets `CONTROL_EVENTS_OFF`; *tracking off* sets `CONTROL_TRACKING_OFF`, which also stops every event. *distinct sources/s*: frames the receiver saw per second of generator time. *events-on ÷ this*: the default row's ns per frame over this row's; issue #5 asks for at most {SPOOFED_BUDGET:.2} against events off. The counters are the kernel's (`EVENT_LIMITER`, summed over CPUs), per flood, median over the rounds: *untracked* drops came from sources the kernel did not start tracking because the per-CPU budget of new sources per second was spent. The ring buffer is emptied before each flood and not read during it (a daemon's reader would compete for the same two CPUs).",
            frames,
            f64::from(frames) - super::daemon_memory::expected_distinct(u64::from(frames)),
            xdp_allowlist_common::DEFAULT_NEW_SOURCES_PER_SEC,
        );
    }

    match &results.daemon_memory {
        None => {}
        Some(Err(err)) => {
            let _ = writeln!(
                md,
                "\n### The daemon under a million distinct sources\n\nNot measured: {err}"
            );
        }
        Some(Ok(d)) => daemon_markdown(md, d),
    }
}

fn daemon_markdown(md: &mut String, d: &DaemonMemory) {
    let _ = writeln!(
        md,
        "\n### The daemon under a million distinct sources\n\n| daemon | VmHWM (peak resident) | VmRSS |\n|---|---:|---:|\n| started, before the flood | {} | {} |\n| after the flood | {} | {} |",
        kib(d.hwm_before_kib),
        kib(d.rss_before_kib),
        kib(d.hwm_after_kib),
        kib(d.rss_after_kib)
    );
    let _ = writeln!(
        md,
        "\nThe release `xdp-allowlist` binary (`{}`) runs `run` in the receiving namespace, attached to the receiving veth with one service on tcp/8443 and events at their defaults. The generator sent {} frames from random sources in 2001:db8:ffff::/96; the filter saw {} of them at {:.2} M per second, about {} distinct sources, and dropped {}. Kernel counters over the flood: {} events sent, {} rate limited, {} lost to a full ring, {} packets from untracked sources. *VmHWM* is the peak resident set since the daemon started (`/proc/PID/status`), read once start-up settled and again 3 s after the flood; the daemon was stopped by its pid afterwards.",
        d.binary.display(),
        d.frames_sent,
        d.frames_seen,
        d.sources_per_sec / 1e6,
        d.distinct_sources,
        d.dropped,
        d.events.sent,
        d.events.rate_limited,
        d.events.ring_full,
        d.events.untracked
    );
}

/// `parser_hardening` in `results.json`.
pub(super) fn parser_json(results: &Results) -> Value {
    Value::Array(
        results
            .parser
            .iter()
            .map(|p| {
                json!({
                    "case": p.case,
                    "hardened_median_ns": p.hardened.median,
                    "naive_median_ns": p.naive.median,
                    "difference_ns": p.added_ns(),
                    "difference_of_medians_ns": p.hardened.median - p.naive.median,
                    "target_ns": PARSER_BUDGET_NS,
                    "met": p.added_ns() <= PARSER_BUDGET_NS,
                    "hardened_samples_ns": p.hardened.samples,
                    "naive_samples_ns": p.naive.samples,
                })
            })
            .collect(),
    )
}

/// `spoofed_flood` in `results.json`.
pub(super) fn spoofed_json(results: &Results) -> Value {
    let median = |name| flood(&results.e2e, name).map(|f| f.series.median);
    let ratio = |other| match (median(SPOOFED_DEFAULT), median(other)) {
        (Some(on), Some(off)) => json!(on / off),
        _ => Value::Null,
    };
    json!({
        "rows": spoofed_rows(results).iter().map(|f| {
            let events = f.events_median().map(|[sent, limited, full, untracked]| json!({
                "sent": sent, "rate_limited": limited, "ring_full": full, "untracked": untracked,
            }));
            json!({
                "receiver": f.series.name,
                "median_ns_per_frame": f.series.median,
                "distinct_sources_per_sec": f.frames_per_sec(),
                "events_median_per_flood": events,
            })
        }).collect::<Vec<_>>(),
        "events_on_over_events_off": ratio(SPOOFED_EVENTS_OFF),
        "events_on_over_tracking_off": ratio(SPOOFED_TRACKING_OFF),
        "target_ratio": SPOOFED_BUDGET,
    })
}

/// `daemon_memory` in `results.json`.
pub(super) fn daemon_json(results: &Results) -> Value {
    match &results.daemon_memory {
        None => Value::Null,
        Some(Err(err)) => json!({ "error": err }),
        Some(Ok(d)) => json!({
            "binary": d.binary.display().to_string(),
            "frames_sent": d.frames_sent,
            "frames_seen": d.frames_seen,
            "distinct_sources": d.distinct_sources,
            "sources_per_sec": d.sources_per_sec,
            "vm_hwm_kib_before": d.hwm_before_kib,
            "vm_rss_kib_before": d.rss_before_kib,
            "vm_hwm_kib_after": d.hwm_after_kib,
            "vm_rss_kib_after": d.rss_after_kib,
            "dropped": d.dropped,
            "events": {
                "sent": d.events.sent, "rate_limited": d.events.rate_limited,
                "ring_full": d.events.ring_full, "untracked": d.events.untracked,
            },
        }),
    }
}
