//! An in-memory stand-in for the kernel maps, for tests without root.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ipnet::{Ipv4Net, Ipv6Net};
use xdp_allowlist_common::{Control, PORT_MONITOR, PORT_SERVICE_MASK};

use super::PolicyMaps;
use crate::policy::SlotState;

/// Raised by [`FakeMaps`] when told to fail.
#[derive(Debug, thiserror::Error)]
#[error("injected failure after {0} writes")]
pub struct FakeError(pub usize);

/// Both slots, the control record and names, held in plain collections.
#[derive(Debug, Default)]
pub struct FakeMaps {
    pub slots: [SlotState; 2],
    pub control: Control,
    pub names: BTreeMap<u32, String>,
    pub counters_reset: Vec<u32>,
    /// The ids of each `forget_sources` call.
    pub sources_forgotten: Vec<BTreeSet<u32>>,
    /// Every write, in order, as text (for assertions on ordering).
    pub log: Vec<String>,
    /// Fail the write after this many successful ones.
    pub fail_after: Option<usize>,
    /// Successful writes so far.
    pub writes: usize,
}

/// The verdict the fake computes, the same rule as the kernel's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FakeVerdict {
    Unprotected,
    Pass,
    Drop,
    WouldDrop,
}

impl FakeMaps {
    fn tick(&mut self, what: String) -> Result<(), FakeError> {
        if self.fail_after == Some(self.writes) {
            return Err(FakeError(self.writes));
        }
        self.writes += 1;
        self.log.push(what);
        Ok(())
    }

    /// Judges a packet against the active slot, as the kernel would.
    pub fn judge(&self, proto_idx: u32, port: u16, source: IpAddr) -> FakeVerdict {
        let slot = &self.slots[(self.control.active_slot & 1) as usize];
        let Some(&entry) = slot.ports.get(&(proto_idx, port)) else {
            return FakeVerdict::Unprotected;
        };
        let service = entry & PORT_SERVICE_MASK;
        let allowed = match source {
            IpAddr::V4(addr) => slot
                .v4
                .iter()
                .any(|(id, net)| *id == service && net.contains(&addr)),
            IpAddr::V6(addr) => slot
                .v6
                .iter()
                .any(|(id, net)| *id == service && net.contains(&addr)),
        };
        if allowed {
            FakeVerdict::Pass
        } else if entry & PORT_MONITOR != 0 {
            FakeVerdict::WouldDrop
        } else {
            FakeVerdict::Drop
        }
    }
}

impl PolicyMaps for FakeMaps {
    type Error = FakeError;

    fn set_port(
        &mut self,
        slot: u32,
        proto_idx: u32,
        port: u16,
        service: u32,
    ) -> Result<(), FakeError> {
        self.tick(format!("port {slot} {proto_idx}/{port}={service}"))?;
        let ports = &mut self.slots[slot as usize].ports;
        if service == 0 {
            ports.remove(&(proto_idx, port));
        } else {
            ports.insert((proto_idx, port), service);
        }
        Ok(())
    }

    fn set_service_flags(&mut self, slot: u32, service: u32, flags: u32) -> Result<(), FakeError> {
        self.tick(format!("flags {slot} {service}={flags}"))?;
        let map = &mut self.slots[slot as usize].service_flags;
        if flags == 0 {
            map.remove(&service);
        } else {
            map.insert(service, flags);
        }
        Ok(())
    }

    fn insert_v4(&mut self, slot: u32, service: u32, net: Ipv4Net) -> Result<(), FakeError> {
        self.tick(format!("insert {slot} {service} {net}"))?;
        self.slots[slot as usize].v4.insert((service, net));
        Ok(())
    }

    fn remove_v4(&mut self, slot: u32, service: u32, net: Ipv4Net) -> Result<(), FakeError> {
        self.tick(format!("remove {slot} {service} {net}"))?;
        self.slots[slot as usize].v4.remove(&(service, net));
        Ok(())
    }

    fn insert_v6(&mut self, slot: u32, service: u32, net: Ipv6Net) -> Result<(), FakeError> {
        self.tick(format!("insert {slot} {service} {net}"))?;
        self.slots[slot as usize].v6.insert((service, net));
        Ok(())
    }

    fn remove_v6(&mut self, slot: u32, service: u32, net: Ipv6Net) -> Result<(), FakeError> {
        self.tick(format!("remove {slot} {service} {net}"))?;
        self.slots[slot as usize].v6.remove(&(service, net));
        Ok(())
    }

    fn set_service_name(&mut self, service: u32, name: &str) -> Result<(), FakeError> {
        if name.is_empty() {
            self.names.remove(&service);
        } else {
            self.names.insert(service, name.to_owned());
        }
        Ok(())
    }

    fn reset_counters(&mut self, service: u32) -> Result<(), FakeError> {
        self.counters_reset.push(service);
        Ok(())
    }

    fn forget_sources(&mut self, services: &BTreeSet<u32>) -> Result<(), FakeError> {
        self.sources_forgotten.push(services.clone());
        Ok(())
    }

    fn control(&self) -> Result<Control, FakeError> {
        Ok(self.control)
    }

    fn set_control(&mut self, control: Control) -> Result<(), FakeError> {
        self.tick(format!("flip {}", control.active_slot))?;
        self.control = control;
        Ok(())
    }

    fn read_slot(&self, slot: u32) -> Result<SlotState, FakeError> {
        Ok(self.slots[slot as usize].clone())
    }

    fn service_names(&self) -> Result<BTreeMap<u32, String>, FakeError> {
        Ok(self.names.clone())
    }
}
