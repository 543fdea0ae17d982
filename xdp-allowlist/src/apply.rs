//! Applying a configuration to the kernel maps as one generation.
//!
//! The new generation is written into the idle slot (only the difference to
//! what that slot already holds), then `Control::active_slot` is flipped in
//! one map update. The kernel reads the active slot once per packet, so every
//! packet is judged wholly by the old or wholly by the new generation. A
//! failure before the flip leaves the active generation untouched.
//!
//! Map access goes through [`PolicyMaps`], so all of this is tested without
//! root against [`FakeMaps`].

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use ipnet::{Ipv4Net, Ipv6Net};
use xdp_allowlist_common::{Control, CONTROL_TRACKING_OFF, CONTROL_TUNNEL_DROP};

use crate::{
    config::{Config, TunnelPolicy},
    policy::{assign_ids, SlotDiff, SlotState},
};

/// After a flip, how long the now idle slot is left alone before it is
/// rewritten. XDP programs run to completion inside an RCU read-side section
/// within microseconds; this leaves packets that read the old slot index just
/// before the flip several orders of magnitude more time than they need.
pub const SLOT_GRACE: Duration = Duration::from_millis(50);

/// The map operations the applier needs; implemented over the pinned BPF
/// maps and, for tests, in memory.
pub trait PolicyMaps {
    type Error: std::error::Error + Send + Sync + 'static;

    fn set_port(
        &mut self,
        slot: u32,
        proto_idx: u32,
        port: u16,
        service: u32,
    ) -> Result<(), Self::Error>;
    fn set_service_flags(&mut self, slot: u32, service: u32, flags: u32)
        -> Result<(), Self::Error>;
    fn insert_v4(&mut self, slot: u32, service: u32, net: Ipv4Net) -> Result<(), Self::Error>;
    fn remove_v4(&mut self, slot: u32, service: u32, net: Ipv4Net) -> Result<(), Self::Error>;
    fn insert_v6(&mut self, slot: u32, service: u32, net: Ipv6Net) -> Result<(), Self::Error>;
    fn remove_v6(&mut self, slot: u32, service: u32, net: Ipv6Net) -> Result<(), Self::Error>;
    fn set_service_name(&mut self, service: u32, name: &str) -> Result<(), Self::Error>;
    fn reset_counters(&mut self, service: u32) -> Result<(), Self::Error>;
    /// Clears the per-source entries (`SOURCES`) of `services`: ids given to
    /// new services, whose entries belong to the service that had the id
    /// before and would be shown under the new name.
    fn forget_sources(&mut self, services: &BTreeSet<u32>) -> Result<(), Self::Error>;
    fn control(&self) -> Result<Control, Self::Error>;
    fn set_control(&mut self, control: Control) -> Result<(), Self::Error>;
    /// What `slot` holds now (used when adopting pinned maps).
    fn read_slot(&self, slot: u32) -> Result<SlotState, Self::Error>;
    /// Service names by id, as recorded by the daemon that wrote them.
    fn service_names(&self) -> Result<BTreeMap<u32, String>, Self::Error>;
}

/// Errors from [`Applier::apply`].
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("writing generation {generation} failed after {done} of {total} map writes; the active generation {active} is unchanged: {source}")]
    Write {
        generation: u64,
        active: u64,
        done: usize,
        total: usize,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("reading the kernel maps failed: {0}")]
    Read(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// What an apply did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyReport {
    pub generation: u64,
    pub slot: u32,
    pub writes: usize,
    pub elapsed: Duration,
    pub unchanged: bool,
}

/// Owns the maps and the knowledge of what each slot holds.
pub struct Applier<M: PolicyMaps> {
    maps: M,
    slots: [SlotState; 2],
    control: Control,
    ids: BTreeMap<String, u32>,
    last_flip: Option<Instant>,
}

impl<M: PolicyMaps> Applier<M> {
    /// Reads both slots back from `maps`: a restarted daemon continues from
    /// exactly what the kernel enforces.
    ///
    /// # Errors
    ///
    /// [`ApplyError::Read`] when a map cannot be read.
    pub fn adopt(maps: M) -> Result<Self, ApplyError> {
        let read = |e: M::Error| ApplyError::Read(Box::new(e));
        let control = maps.control().map_err(read)?;
        let slots = [
            maps.read_slot(0).map_err(read)?,
            maps.read_slot(1).map_err(read)?,
        ];
        let ids = maps
            .service_names()
            .map_err(read)?
            .into_iter()
            .map(|(id, name)| (name, id))
            .collect();
        Ok(Self {
            maps,
            slots,
            control,
            ids,
            last_flip: None,
        })
    }

    pub fn maps(&self) -> &M {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
    }

    pub fn generation(&self) -> u64 {
        self.control.generation
    }

    pub fn active_slot(&self) -> u32 {
        self.control.active_slot
    }

    /// The ids in use, by service name.
    pub fn ids(&self) -> &BTreeMap<String, u32> {
        &self.ids
    }

    /// What the active slot holds.
    pub fn active_state(&self) -> &SlotState {
        &self.slots[(self.control.active_slot & 1) as usize]
    }

    /// Applies `config` as the next generation.
    ///
    /// # Errors
    ///
    /// [`ApplyError::Write`] when a map write fails; nothing the kernel
    /// enforces has changed then.
    pub fn apply(&mut self, config: &Config) -> Result<ApplyReport, ApplyError> {
        let started = Instant::now();
        let (ids, fresh) = assign_ids(&self.ids, config);
        let desired = SlotState::from_config(config, &ids);
        let mut flags = match config.tunnel_policy {
            TunnelPolicy::Drop => CONTROL_TUNNEL_DROP,
            TunnelPolicy::Pass => 0,
        };
        if !config.alerts.track_sources {
            flags |= CONTROL_TRACKING_OFF;
        }
        let active = (self.control.active_slot & 1) as usize;
        let unchanged = self.slots[active] == desired
            && ids == self.ids
            && self.control.flags == flags
            && self.control.events_per_sec == config.events_per_second
            && self.control.summary_interval_ms == config.alerts.summary_interval_ms()
            && self.control.new_sources_per_sec == config.alerts.new_sources_per_second;
        if unchanged {
            return Ok(ApplyReport {
                generation: self.control.generation,
                slot: self.control.active_slot,
                writes: 0,
                elapsed: started.elapsed(),
                unchanged: true,
            });
        }

        let target = 1 - active;
        if let Some(flipped) = self.last_flip {
            if let Some(rest) = SLOT_GRACE.checked_sub(flipped.elapsed()) {
                std::thread::sleep(rest);
            }
        }

        let generation = self.control.generation + 1;
        let diff = SlotDiff::between(&self.slots[target], &desired);
        let total = diff.writes() + fresh.len() * 2;
        let mut done = 0usize;
        let result = self.write(target as u32, &diff, &fresh, &ids, &mut done);
        if let Err(source) = result {
            // The idle slot is now partly written; learn what it holds so the
            // next attempt diffs against the truth.
            if let Ok(state) = self.maps.read_slot(target as u32) {
                self.slots[target] = state;
            }
            return Err(ApplyError::Write {
                generation,
                active: self.control.generation,
                done,
                total,
                source: Box::new(source),
            });
        }

        let control = Control {
            active_slot: target as u32,
            flags,
            generation,
            events_per_sec: config.events_per_second,
            summary_interval_ms: config.alerts.summary_interval_ms(),
            new_sources_per_sec: config.alerts.new_sources_per_second,
            _pad: 0,
        };
        self.maps
            .set_control(control)
            .map_err(|source| ApplyError::Write {
                generation,
                active: self.control.generation,
                done,
                total,
                source: Box::new(source),
            })?;
        self.last_flip = Some(Instant::now());
        self.control = control;
        self.slots[target] = desired;

        // Names of services that are gone are cleared once no packet can be
        // judged by a generation that still has them.
        let kept: std::collections::BTreeSet<u32> = ids.values().copied().collect();
        for id in self.ids.values() {
            if !kept.contains(id) {
                let _ = self.maps.set_service_name(*id, "");
            }
        }
        self.ids = ids;

        Ok(ApplyReport {
            generation,
            slot: target as u32,
            writes: done,
            elapsed: started.elapsed(),
            unchanged: false,
        })
    }

    fn write(
        &mut self,
        slot: u32,
        diff: &SlotDiff,
        fresh: &[String],
        ids: &BTreeMap<String, u32>,
        done: &mut usize,
    ) -> Result<(), M::Error> {
        let maps = &mut self.maps;
        let mut fresh_ids = BTreeSet::new();
        for name in fresh {
            if let Some(&id) = ids.get(name) {
                maps.reset_counters(id)?;
                maps.set_service_name(id, name)?;
                fresh_ids.insert(id);
                *done += 2;
            }
        }
        if !fresh_ids.is_empty() {
            maps.forget_sources(&fresh_ids)?;
        }
        for &(id, flags) in &diff.service_flags {
            maps.set_service_flags(slot, id, flags)?;
            *done += 1;
        }
        // Insert before removing, so that a failure half way (a full trie)
        // is more likely to hit before anything was taken away.
        for &(id, net) in &diff.v4_insert {
            maps.insert_v4(slot, id, net)?;
            *done += 1;
        }
        for &(id, net) in &diff.v6_insert {
            maps.insert_v6(slot, id, net)?;
            *done += 1;
        }
        for &(id, net) in &diff.v4_remove {
            maps.remove_v4(slot, id, net)?;
            *done += 1;
        }
        for &(id, net) in &diff.v6_remove {
            maps.remove_v6(slot, id, net)?;
            *done += 1;
        }
        for &((proto, port), id) in &diff.ports {
            maps.set_port(slot, proto, port, id)?;
            *done += 1;
        }
        Ok(())
    }
}

pub use fake::FakeMaps;

mod fake;

#[cfg(test)]
mod tests;
