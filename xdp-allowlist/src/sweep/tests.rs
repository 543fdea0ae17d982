use std::collections::{HashMap, VecDeque};

use xdp_allowlist_common::{EVENT_DROP, FAMILY_V4, WHY_FIRST, WHY_SUMMARY};

use super::*;

fn key(last: u8) -> SourceKey {
    let mut addr = [0; 16];
    addr[..4].copy_from_slice(&[198, 51, 100, last]);
    SourceKey {
        service: 1,
        kind: EVENT_DROP,
        family: FAMILY_V4,
        addr,
    }
}

/// An event about `key` on `cpu`: a life that started at `first`, `total`
/// packets so far, `delta` since the kernel's previous event.
fn event(key: SourceKey, cpu: u16, first: u64, total: u64, delta: u64) -> SourceEvent {
    SourceEvent {
        ts_ns: first + total,
        first_seen_ns: first,
        packets: delta,
        total_packets: total,
        service: u32::from(key.service),
        kind: key.kind,
        family: key.family,
        addr: key.addr,
        why: if total == 1 { WHY_FIRST } else { WHY_SUMMARY },
        cpu,
        ..SourceEvent::default()
    }
}

fn value(first: u64, packets: u64) -> SourceStats {
    SourceStats {
        packets,
        first_seen_ns: first,
        last_seen_ns: first + packets,
        port_count: 1,
        ports: [5353, 0, 0, 0, 0, 0, 0, 0],
        ..SourceStats::default()
    }
}

/// A map with one entry per (key, per-CPU values).
fn map(entries: &[(SourceKey, Vec<SourceStats>)]) -> HashMap<SourceKey, Vec<SourceStats>> {
    entries.iter().cloned().collect()
}

/// Packets per (key, CPU) in a sweep's deltas.
fn counted(deltas: &[SweepDelta]) -> Vec<(u8, u16, u64)> {
    let mut out: Vec<_> = deltas
        .iter()
        .map(|d| (d.slot.key.addr[3], d.slot.cpu, d.packets))
        .collect();
    out.sort_unstable();
    out
}

#[test]
fn a_burst_within_one_interval_is_counted_by_the_sweep_once() {
    let mut acc = Accounting::new();
    let k = key(2);

    // The burst's first packet comes as an event, the other 39 only in the map.
    assert_eq!(acc.event(&event(k, 0, 1_000, 1, 1)), 1);
    let deltas = acc.sweep(&map(&[(k, vec![value(1_000, 40)])]));
    assert_eq!(counted(&deltas), [(2, 0, 39)]);
    assert_eq!(deltas[0].stats.ports[0], 5353, "the value comes along");

    // Nothing new: nothing counted.
    assert!(acc.sweep(&map(&[(k, vec![value(1_000, 40)])])).is_empty());
    // The source sends again after the interval: the kernel's summary
    // reports 44 since its first event, of which only 5 are news.
    assert_eq!(acc.event(&event(k, 0, 1_000, 45, 44)), 5);
    assert!(acc.sweep(&map(&[(k, vec![value(1_000, 45)])])).is_empty());
}

#[test]
fn an_event_read_after_a_sweep_that_saw_its_packets_counts_nothing() {
    let mut acc = Accounting::new();
    let k = key(2);

    assert_eq!(
        counted(&acc.sweep(&map(&[(k, vec![value(7, 10)])]))),
        [(2, 0, 10)]
    );
    // Sent at total 5, still in the ring during the sweep.
    assert_eq!(acc.event(&event(k, 0, 7, 5, 5)), 0);
    // ...and it must not lower what is counted.
    assert_eq!(acc.event(&event(k, 0, 7, 12, 7)), 2);
    assert!(acc.sweep(&map(&[(k, vec![value(7, 12)])])).is_empty());
}

#[test]
fn each_cpu_is_counted_on_its_own() {
    let mut acc = Accounting::new();
    let k = key(2);

    assert_eq!(acc.event(&event(k, 0, 100, 1, 1)), 1);
    assert_eq!(acc.event(&event(k, 1, 150, 1, 1)), 1);
    let swept = acc.sweep(&map(&[(k, vec![value(100, 5), value(150, 3)])]));
    assert_eq!(counted(&swept), [(2, 0, 4), (2, 1, 2)]);

    // CPU 1's total was counted by the sweep, CPU 0 sent three more since.
    assert_eq!(acc.event(&event(k, 1, 150, 3, 2)), 0);
    assert_eq!(acc.event(&event(k, 0, 100, 8, 7)), 3);
    // A CPU that never saw the source (all zero) is no value at all.
    let swept = acc.sweep(&map(&[(
        k,
        vec![value(100, 8), value(150, 3), SourceStats::default()],
    )]));
    assert!(swept.is_empty(), "{swept:?}");
    assert_eq!(acc.len(), 2);
}

#[test]
fn an_entry_the_kernel_made_again_is_counted_afresh() {
    let mut acc = Accounting::new();
    let k = key(2);
    acc.sweep(&map(&[(k, vec![value(100, 50)])]));

    // Evicted and made again: a later first packet.
    assert_eq!(
        counted(&acc.sweep(&map(&[(k, vec![value(200, 7)])]))),
        [(2, 0, 7)]
    );
    // Made again within the same clock tick: only the smaller total tells.
    assert_eq!(
        counted(&acc.sweep(&map(&[(k, vec![value(200, 3)])]))),
        [(2, 0, 3)]
    );
    // An event about the life before, read late: already counted.
    assert_eq!(acc.event(&event(k, 0, 100, 55, 5)), 0);
    assert_eq!(
        counted(&acc.sweep(&map(&[(k, vec![value(200, 4)])]))),
        [(2, 0, 1)]
    );
}

#[test]
fn an_event_about_a_new_life_counts_in_full_and_the_sweep_only_the_rest() {
    let mut acc = Accounting::new();
    let k = key(2);
    acc.sweep(&map(&[(k, vec![value(100, 50)])]));

    assert_eq!(acc.event(&event(k, 0, 300, 1, 1)), 1);
    assert_eq!(
        counted(&acc.sweep(&map(&[(k, vec![value(300, 4)])]))),
        [(2, 0, 3)]
    );
}

#[test]
fn values_gone_from_the_map_are_kept_one_period_then_forgotten() {
    let mut acc = Accounting::new();
    let (a, b) = (key(2), key(3));
    acc.sweep(&map(&[(a, vec![value(10, 20)]), (b, vec![value(11, 1)])]));
    assert_eq!(acc.len(), 2);

    // `a` evicted: an event sent before, read only now, is no news...
    assert!(acc.sweep(&map(&[(b, vec![value(11, 1)])])).is_empty());
    assert_eq!(acc.len(), 2);
    assert_eq!(acc.event(&event(a, 0, 10, 20, 19)), 0);

    // ...and once it is still absent at the next sweep, it is forgotten.
    acc.sweep(&map(&[(b, vec![value(11, 1)])]));
    acc.sweep(&map(&[(b, vec![value(11, 1)])]));
    assert_eq!(acc.len(), 1);
}

#[test]
fn the_baseline_counts_nothing_that_came_before_the_daemon() {
    let mut acc = Accounting::new();
    let k = key(2);

    acc.baseline(&map(&[(k, vec![value(10, 100)])]));
    assert_eq!(
        acc.event(&event(k, 0, 10, 100, 3)),
        0,
        "queued before the start"
    );
    assert!(acc.sweep(&map(&[(k, vec![value(10, 100)])])).is_empty());
    assert_eq!(
        counted(&acc.sweep(&map(&[(k, vec![value(10, 103)])]))),
        [(2, 0, 3)]
    );

    // A source the baseline missed: only the kernel's delta is news.
    assert_eq!(acc.event(&event(key(9), 0, 5, 80, 4)), 4);
}

/// A tiny deterministic generator, so the interleaving test needs no crate.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// One simulated per-CPU value, as the kernel keeps it.
#[derive(Clone, Copy, Default)]
struct Kernel {
    first: u64,
    packets: u64,
    reported: u64,
}

/// The simulated kernel side: two sources on two CPUs and the ring.
struct World {
    rng: Lcg,
    keys: [SourceKey; 2],
    kernel: HashMap<(usize, u16), Kernel>,
    ring: VecDeque<SourceEvent>,
    arrived: u64,
    clock: u64,
    evict: bool,
    /// Whether packets arrive during a walk (not in the final one).
    busy: bool,
}

impl World {
    /// One packet, maybe an event; or, when evicting, maybe an eviction.
    fn step(&mut self) {
        self.clock += 1;
        if self.evict && self.rng.below(12) == 0 {
            let k = self.rng.below(2) as usize;
            self.kernel.retain(|&(key, _), _| key != k);
            return;
        }
        let (k, cpu) = (self.rng.below(2) as usize, self.rng.below(2) as u16);
        let clock = self.clock;
        let value = self.kernel.entry((k, cpu)).or_insert(Kernel {
            first: clock,
            ..Kernel::default()
        });
        value.packets += 1;
        self.arrived += 1;
        if value.packets == 1 || self.rng.below(4) == 0 {
            let delta = value.packets - value.reported;
            self.ring
                .push_back(event(self.keys[k], cpu, value.first, value.packets, delta));
            value.reported = value.packets;
        }
    }

    /// Walks the map one value at a time while packets keep arriving, as
    /// the real walk does.
    fn read(&mut self) -> HashMap<SourceKey, Vec<SourceStats>> {
        let mut entries: HashMap<SourceKey, Vec<SourceStats>> = HashMap::new();
        for k in 0..2 {
            for cpu in 0..2u16 {
                for _ in 0..self.rng.below(3) {
                    if !self.busy {
                        break;
                    }
                    self.step();
                }
                if let Some(v) = self.kernel.get(&(k, cpu)) {
                    let values = entries
                        .entry(self.keys[k])
                        .or_insert_with(|| vec![SourceStats::default(); 2]);
                    values[usize::from(cpu)] = value(v.first, v.packets);
                }
            }
        }
        entries
    }
}

/// Packets arrive on two sources and two CPUs; the kernel sends some events
/// (with total and delta), the ring is drained late, sweeps read the map
/// while packets arrive, and, when `evict` is set, entries are evicted and
/// made again. What the daemon counts never exceeds what arrived, and
/// without evictions it is exactly what arrived once the ring is drained
/// and the map swept.
fn interleave(seed: u64, evict: bool) {
    let mut world = World {
        rng: Lcg(seed),
        keys: [key(2), key(3)],
        kernel: HashMap::new(),
        ring: VecDeque::new(),
        arrived: 0,
        clock: 1,
        evict,
        busy: true,
    };
    let mut acc = Accounting::new();
    let mut total = 0u64;
    let drain_all = |world: &mut World, acc: &mut Accounting| -> u64 {
        let mut sum = 0;
        while let Some(e) = world.ring.pop_front() {
            sum += acc.event(&e);
        }
        sum
    };

    for _ in 0..2_000 {
        match world.rng.below(10) {
            0..=5 => world.step(),
            6 | 7 => {
                for _ in 0..world.rng.below(4) {
                    if let Some(e) = world.ring.pop_front() {
                        total += acc.event(&e);
                    }
                }
            }
            _ => {
                // The daemon drains the ring before each sweep, and takes
                // no event while the walk runs.
                total += drain_all(&mut world, &mut acc);
                let entries = world.read();
                total += acc.sweep(&entries).iter().map(|d| d.packets).sum::<u64>();
            }
        }
        let arrived = world.arrived;
        assert!(
            total <= arrived,
            "seed {seed}: counted {total} of {arrived}"
        );
    }

    world.busy = false;
    total += drain_all(&mut world, &mut acc);
    let entries = world.read();
    total += acc.sweep(&entries).iter().map(|d| d.packets).sum::<u64>();
    let arrived = world.arrived;
    assert!(
        total <= arrived,
        "seed {seed}: counted {total} of {arrived}"
    );
    if !evict {
        assert_eq!(total, arrived, "seed {seed}: every packet counted once");
    }
}

#[test]
fn events_and_sweeps_interleaved_count_every_packet_once() {
    for seed in 0..200 {
        interleave(seed, false);
    }
}

#[test]
fn with_evictions_nothing_is_ever_counted_twice() {
    for seed in 0..200 {
        interleave(seed, true);
    }
}
