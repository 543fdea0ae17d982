//! Counting what the kernel's source events did not report.
//!
//! The kernel sends an event about a source only when it has news, and a
//! summary only when a packet arrives after the summary interval: a burst
//! that ends within one interval is reported as its first packet (and each
//! new port) until the source sends again. So the daemon also sweeps the
//! pinned `SOURCES` map periodically and counts what the events left out.
//!
//! Both feeds report the same per-CPU totals: an event names its CPU and
//! carries that CPU's total for the key, and a sweep reads every CPU's
//! value. [`Accounting`] keeps, per (key, CPU), the highest total already
//! counted, so each packet is counted once whichever feed reports it first:
//! a total `T` contributes `T - accounted` and raises `accounted` to `T`.
//!
//! A per-CPU value is told apart from an earlier one of the same key (the
//! kernel evicted the entry and made it again) by its `first_seen_ns`, or,
//! when two lives started in the same coarse clock tick, by a total smaller
//! than the one accounted: a sweep counts such a value in full. An event
//! about an older life than the one accounted is stale (it sat in the ring
//! while a sweep already read a newer value) and counts nothing.
//!
//! Two rules for the caller: drain the ring just before each sweep starts to
//! read, and apply no event between that read and the sweep's values. An
//! event newer than a read value, applied first, would make the value look
//! like a new life (counted twice); an event older than the sweep before
//! last, about a value the map no longer holds, would no longer be known.
//!
//! Memory is bounded: after a sweep the table holds the (key, CPU) values
//! present in the map, at most `SOURCES_CAPACITY` keys times the CPUs, plus
//! what events add until the next sweep; values gone from the map are kept
//! one more sweep period (at most the previous sweep's table), so that an
//! event about them still in the ring during the walk is recognised as
//! already counted, then forgotten.
//!
//! Everything here is a pure function of the values, tested without a kernel.

use std::collections::HashMap;

use xdp_allowlist_common::{SourceEvent, SourceKey, SourceStats};

/// One per-CPU value of one `SOURCES` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Slot {
    pub key: SourceKey,
    pub cpu: u16,
}

/// What has been counted of one per-CPU value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Accounted {
    /// When this life of the value started (kernel clock): a different one
    /// means the kernel made the entry again.
    first_seen_ns: u64,
    /// The highest total counted.
    packets: u64,
}

/// Packets a sweep found that no event had reported, with the value that
/// showed them (for its ports, protocol and times).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SweepDelta {
    pub slot: Slot,
    pub packets: u64,
    pub stats: SourceStats,
}

/// The highest total counted per (key, CPU); see the module documentation.
#[derive(Debug, Default)]
pub struct Accounting {
    table: HashMap<Slot, Accounted>,
    /// Values absent at the last sweep, kept until the next one.
    gone: HashMap<Slot, Accounted>,
}

impl Accounting {
    pub fn new() -> Self {
        Self::default()
    }

    /// Values remembered now (present, and gone at the last sweep).
    pub fn len(&self) -> usize {
        self.table.len() + self.gone.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes one event; returns the packets it reports that were not
    /// counted yet.
    pub fn event(&mut self, event: &SourceEvent) -> u64 {
        let slot = Slot {
            key: SourceKey {
                // The kernel's service ids fit in the key's 16 bits.
                service: event.service as u16,
                kind: event.kind,
                family: event.family,
                addr: event.addr,
            },
            cpu: event.cpu,
        };
        let seen = Accounted {
            first_seen_ns: event.first_seen_ns,
            packets: event.total_packets,
        };
        let known = self
            .table
            .get(&slot)
            .or_else(|| self.gone.get(&slot))
            .copied();
        let (counted, now) = match known {
            // Never counted: the kernel's delta since its previous event is
            // what this event reports as new. It equals the total unless an
            // earlier event of this life was read before the daemon started.
            None => (event.packets.min(seen.packets), seen),
            Some(before) if seen.first_seen_ns == before.first_seen_ns => (
                seen.packets.saturating_sub(before.packets),
                Accounted {
                    packets: before.packets.max(seen.packets),
                    ..before
                },
            ),
            // A newer life than the one counted: nothing of it was.
            Some(before) if seen.first_seen_ns > before.first_seen_ns => (seen.packets, seen),
            // An older life: a stale event whose packets a sweep counted.
            Some(before) => (0, before),
        };
        self.gone.remove(&slot);
        self.table.insert(slot, now);
        counted
    }

    /// Records what the map holds without counting it: the first sweep,
    /// when the daemon starts, so that what came before is not news.
    pub fn baseline(&mut self, entries: &HashMap<SourceKey, Vec<SourceStats>>) {
        self.table = present(entries)
            .map(|(slot, stats)| {
                (
                    slot,
                    Accounted {
                        first_seen_ns: stats.first_seen_ns,
                        packets: stats.packets,
                    },
                )
            })
            .collect();
        self.gone.clear();
    }

    /// Takes one sweep of the map (per-CPU values indexed by CPU); returns
    /// the packets of each value that were not counted yet.
    pub fn sweep(&mut self, entries: &HashMap<SourceKey, Vec<SourceStats>>) -> Vec<SweepDelta> {
        let mut deltas = Vec::new();
        let mut table = HashMap::with_capacity(self.table.len());
        for (slot, stats) in present(entries) {
            let before = self.table.remove(&slot).or_else(|| self.gone.remove(&slot));
            let counted = match before {
                Some(before)
                    if before.first_seen_ns == stats.first_seen_ns
                        && stats.packets >= before.packets =>
                {
                    stats.packets - before.packets
                }
                // Never counted, or a new life of the entry: all of it.
                _ => stats.packets,
            };
            // Either way the value's total is now counted.
            table.insert(
                slot,
                Accounted {
                    first_seen_ns: stats.first_seen_ns,
                    packets: stats.packets,
                },
            );
            if counted > 0 {
                deltas.push(SweepDelta {
                    slot,
                    packets: counted,
                    stats: *stats,
                });
            }
        }
        // What is left was not in the map: keep it one more period.
        self.gone = std::mem::replace(&mut self.table, table);
        deltas
    }
}

/// The per-CPU values that counted a packet (a CPU with none never saw the
/// source).
fn present(
    entries: &HashMap<SourceKey, Vec<SourceStats>>,
) -> impl Iterator<Item = (Slot, &SourceStats)> {
    entries.iter().flat_map(|(key, values)| {
        values
            .iter()
            .enumerate()
            .filter(|(_, stats)| stats.packets > 0)
            .filter_map(|(cpu, stats)| {
                let cpu = u16::try_from(cpu).ok()?;
                Some((Slot { key: *key, cpu }, stats))
            })
    })
}

#[cfg(test)]
mod tests;
