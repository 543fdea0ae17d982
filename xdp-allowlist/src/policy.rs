//! What one slot of the kernel maps holds, computed from a configuration,
//! and the difference between two such states.
//!
//! The daemon never writes a whole configuration blindly: it diffs the idle
//! slot's current content against the wanted one and writes only the
//! difference, then flips the active slot (see `apply.rs`).

use std::collections::{BTreeMap, BTreeSet};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use xdp_allowlist_common::{MAX_SERVICES, PORT_MONITOR, SERVICE_MONITOR};

use crate::config::{Config, ServiceMode, TunnelPolicy};

/// Service id 0 in the tries holds the union of every allowlist; the kernel
/// consults it for tunnel and ESP packets when `tunnel_policy = "drop"`.
pub const UNION_SERVICE: u32 = 0;

/// The content of one slot: exactly what the kernel judges against.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotState {
    /// (protocol index, port) to the kernel's port entry: the service id,
    /// with `PORT_MONITOR` for a service in monitor mode; absent means
    /// unprotected.
    pub ports: BTreeMap<(u32, u16), u32>,
    /// Service id to `SERVICE_*` flags; absent means 0.
    pub service_flags: BTreeMap<u32, u32>,
    pub v4: BTreeSet<(u32, Ipv4Net)>,
    pub v6: BTreeSet<(u32, Ipv6Net)>,
}

impl SlotState {
    /// The slot content for `config`, with service ids from `ids`.
    ///
    /// # Panics
    ///
    /// Never for ids made by [`assign_ids`] from the same configuration.
    pub fn from_config(config: &Config, ids: &BTreeMap<String, u32>) -> Self {
        Self::from_config_at(config, ids, std::time::SystemTime::now())
    }

    /// As [`SlotState::from_config`], leaving out entries expired at `now`.
    pub fn from_config_at(
        config: &Config,
        ids: &BTreeMap<String, u32>,
        now: std::time::SystemTime,
    ) -> Self {
        let mut state = SlotState::default();
        for (name, service) in &config.services {
            let Some(&id) = ids.get(name) else { continue };
            // The kernel reads the mode from the port entry itself.
            let entry = match service.mode {
                ServiceMode::Monitor => id | PORT_MONITOR,
                ServiceMode::Enforce => id,
            };
            for range in &service.ports {
                for port in range.ports() {
                    state.ports.insert((range.protocol.index(), port), entry);
                }
            }
            if service.mode == ServiceMode::Monitor {
                state.service_flags.insert(id, SERVICE_MONITOR);
            }
            for entry in service.allow.iter().filter(|e| e.is_live(now)) {
                insert_net(&mut state, id, entry.net);
                if config.tunnel_policy == TunnelPolicy::Drop {
                    insert_net(&mut state, UNION_SERVICE, entry.net);
                }
            }
        }
        state
    }
}

fn insert_net(state: &mut SlotState, id: u32, net: IpNet) {
    match net {
        IpNet::V4(net) => {
            state.v4.insert((id, net));
        }
        IpNet::V6(net) => {
            state.v6.insert((id, net));
        }
    }
}

/// Keeps the id of every service that already has one (so its counters
/// carry on across reloads) and gives new services the lowest free ids.
///
/// Returns the ids and the services that got a new id.
pub fn assign_ids(
    previous: &BTreeMap<String, u32>,
    config: &Config,
) -> (BTreeMap<String, u32>, Vec<String>) {
    let mut ids = BTreeMap::new();
    let mut fresh = Vec::new();
    for name in config.services.keys() {
        if let Some(&id) = previous.get(name) {
            ids.insert(name.clone(), id);
        }
    }
    let mut used: BTreeSet<u32> = ids.values().copied().collect();
    for name in config.services.keys() {
        if ids.contains_key(name) {
            continue;
        }
        // Prefer an id the running generation does not use, so that packets
        // still judged by it are never counted under the new service.
        let retiring: BTreeSet<u32> = previous.values().copied().collect();
        let id = (1..MAX_SERVICES)
            .find(|id| !used.contains(id) && !retiring.contains(id))
            .or_else(|| (1..MAX_SERVICES).find(|id| !used.contains(id)));
        if let Some(id) = id {
            used.insert(id);
            ids.insert(name.clone(), id);
            fresh.push(name.clone());
        }
    }
    (ids, fresh)
}

/// The writes that turn one slot state into another.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotDiff {
    /// Ports to set, with their new service id (0 clears).
    pub ports: Vec<((u32, u16), u32)>,
    pub service_flags: Vec<(u32, u32)>,
    pub v4_insert: Vec<(u32, Ipv4Net)>,
    pub v4_remove: Vec<(u32, Ipv4Net)>,
    pub v6_insert: Vec<(u32, Ipv6Net)>,
    pub v6_remove: Vec<(u32, Ipv6Net)>,
}

impl SlotDiff {
    pub fn between(from: &SlotState, to: &SlotState) -> Self {
        let SlotState {
            ports,
            service_flags,
            v4,
            v6,
        } = to;
        let mut diff = SlotDiff::default();

        for (key, &id) in ports {
            if from.ports.get(key) != Some(&id) {
                diff.ports.push((*key, id));
            }
        }
        for key in from.ports.keys() {
            if !ports.contains_key(key) {
                diff.ports.push((*key, 0));
            }
        }

        for (&id, &flags) in service_flags {
            if from.service_flags.get(&id).copied().unwrap_or(0) != flags {
                diff.service_flags.push((id, flags));
            }
        }
        for &id in from.service_flags.keys() {
            if !service_flags.contains_key(&id) {
                diff.service_flags.push((id, 0));
            }
        }

        diff.v4_insert = v4.difference(&from.v4).copied().collect();
        diff.v4_remove = from.v4.difference(v4).copied().collect();
        diff.v6_insert = v6.difference(&from.v6).copied().collect();
        diff.v6_remove = from.v6.difference(v6).copied().collect();
        diff
    }

    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
            && self.service_flags.is_empty()
            && self.v4_insert.is_empty()
            && self.v4_remove.is_empty()
            && self.v6_insert.is_empty()
            && self.v6_remove.is_empty()
    }

    /// Number of map writes this diff costs.
    pub fn writes(&self) -> usize {
        self.ports.len()
            + self.service_flags.len()
            + self.v4_insert.len()
            + self.v4_remove.len()
            + self.v6_insert.len()
            + self.v6_remove.len()
    }
}

/// What changed for one service between two generations, for logs and
/// the audit trail.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ServiceChange {
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

/// Per-service CIDR changes between the configurations `before` and `after`.
pub fn describe_changes(
    before: Option<&Config>,
    after: &Config,
) -> BTreeMap<String, ServiceChange> {
    let mut changes = BTreeMap::new();
    let names: BTreeSet<&String> = after
        .services
        .keys()
        .chain(before.iter().flat_map(|c| c.services.keys()))
        .collect();
    for name in names {
        let old: BTreeSet<IpNet> = before
            .and_then(|c| c.services.get(name))
            .map(|s| s.allow.iter().map(|e| e.net).collect())
            .unwrap_or_default();
        let new: BTreeSet<IpNet> = after
            .services
            .get(name)
            .map(|s| s.allow.iter().map(|e| e.net).collect())
            .unwrap_or_default();
        let change = ServiceChange {
            added: new.difference(&old).map(ToString::to_string).collect(),
            removed: old.difference(&new).map(ToString::to_string).collect(),
        };
        if !change.added.is_empty() || !change.removed.is_empty() {
            changes.insert(name.clone(), change);
        }
    }
    changes
}
