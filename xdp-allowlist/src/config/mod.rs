//! The configuration file: its types, how it is read, and every check it
//! must pass before anything reaches the kernel.
//!
//! Reading never changes anything. A file that fails a check is refused as a
//! whole with every problem listed (file, line, column, reason), so the last
//! good allowlist stays in force.

mod parse;
mod values;

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;

pub use parse::parse_str;
pub use values::{parse_cidr, parse_port_spec, CidrError};

/// Where the daemon and CLI look for the configuration by default.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/xdp-allowlist/config.toml";

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Interfaces the filter attaches to.
    pub interfaces: Vec<String>,
    /// How to attach.
    pub xdp_mode: XdpModeSetting,
    /// What happens to tunnel and ESP packets from a source in no allowlist.
    pub tunnel_policy: TunnelPolicy,
    /// Most CIDRs per address family, over all services.
    pub capacity: u32,
    /// Most drop events one CPU sends per second; the rest are only counted.
    pub events_per_second: u32,
    /// Services by name, in name order.
    pub services: BTreeMap<String, Service>,
    /// Where the audit log goes; `None` when switched off (`audit_log = ""`).
    pub audit_log: Option<PathBuf>,
    /// Address of the Prometheus endpoint; off unless set.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `[alerts]`: probing alerts, access records and where they go.
    pub alerts: AlertSettings,
}

/// The `[alerts]` section: when the daemon raises a probing alert, how the
/// kernel summarises sources, and where alerts and access records go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertSettings {
    /// The sliding window every threshold is counted over; also how long a
    /// condition must stay false before its alert ends.
    pub window: Duration,
    /// Drops (or would-drops) from one source within the window that raise
    /// a `source` alert.
    pub source_drops: u64,
    /// Drops from one /24 (IPv4) or /64 (IPv6) within the window that raise
    /// a `prefix` alert.
    pub prefix_drops: u64,
    /// Distinct protected ports one refused source touched within the window
    /// that raise a `scan` alert.
    pub scan_ports: u32,
    /// Least time between two kernel events about one source
    /// (`Control::summary_interval_ms`).
    pub summary_interval: Duration,
    /// Most new sources one CPU starts tracking per second
    /// (`Control::new_sources_per_sec`).
    pub new_sources_per_second: u32,
    /// JSON-lines file that alerts and access records are appended to.
    pub file: Option<PathBuf>,
    /// Program and arguments run once per alert (firing and ended) with the
    /// alert as JSON on standard input; empty when not set.
    pub command: Vec<String>,
    /// A command still running after this long is killed.
    pub command_timeout: Duration,
    /// Log and write access records (allowed sources reaching protected ports).
    pub access_records: bool,
    /// Per-source accounting in the kernel (`SOURCES`). Off, a drop skips
    /// the table (a hash and two slot compares), and `stats`, `top`, alerts
    /// and access records have nothing to show.
    pub track_sources: bool,
}

impl Default for AlertSettings {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            source_drops: 100,
            prefix_drops: 1000,
            scan_ports: 5,
            summary_interval: Duration::from_millis(u64::from(
                xdp_allowlist_common::DEFAULT_SUMMARY_INTERVAL_MS,
            )),
            new_sources_per_second: xdp_allowlist_common::DEFAULT_NEW_SOURCES_PER_SEC,
            file: None,
            command: Vec::new(),
            command_timeout: Duration::from_secs(10),
            access_records: true,
            track_sources: true,
        }
    }
}

impl AlertSettings {
    /// `summary_interval` in whole milliseconds, as the kernel takes it.
    pub fn summary_interval_ms(&self) -> u32 {
        u32::try_from(self.summary_interval.as_millis()).unwrap_or(u32::MAX)
    }
}

/// `xdp_mode`: native (driver) XDP, generic (skb) XDP, or native with a
/// fallback to generic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum XdpModeSetting {
    #[default]
    Auto,
    Native,
    Skb,
}

/// `tunnel_policy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TunnelPolicy {
    #[default]
    Pass,
    Drop,
}

/// `mode` of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ServiceMode {
    /// Refused packets are dropped.
    #[default]
    Enforce,
    /// Refused packets are counted as "would drop" and passed.
    Monitor,
}

/// A named set of protected ports and the CIDRs allowed to reach them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub ports: Vec<PortRange>,
    pub allow: Vec<AllowEntry>,
    pub mode: ServiceMode,
}

/// One allowed CIDR with its optional note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowEntry {
    pub net: IpNet,
    pub note: Option<String>,
    /// After this instant the entry no longer admits anyone (`--ttl`).
    pub expires: Option<std::time::SystemTime>,
}

impl AllowEntry {
    /// Does the entry admit sources at `now`?
    pub fn is_live(&self, now: std::time::SystemTime) -> bool {
        self.expires.is_none_or(|at| now < at)
    }
}

/// The earliest expiry still ahead of `now`, if any.
pub fn next_expiry(config: &Config, now: std::time::SystemTime) -> Option<std::time::SystemTime> {
    config
        .services
        .values()
        .flat_map(|s| s.allow.iter())
        .filter_map(|e| e.expires)
        .filter(|&at| at > now)
        .min()
}

/// Transport protocols whose ports can be protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => xdp_allowlist_common::PROTO_TCP,
            Protocol::Udp => xdp_allowlist_common::PROTO_UDP,
            Protocol::Sctp => xdp_allowlist_common::PROTO_SCTP,
        }
    }

    /// Index in the kernel's port table.
    pub const fn index(self) -> u32 {
        match self {
            Protocol::Tcp => 0,
            Protocol::Udp => 1,
            Protocol::Sctp => 2,
        }
    }

    pub fn from_number(number: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.number() == number)
    }

    pub const fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// As its name: `"tcp"`, `"udp"`, `"sctp"`.
impl serde::Serialize for Protocol {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `tcp/22` or `udp/60000-61000`: inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    pub protocol: Protocol,
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn ports(self) -> impl Iterator<Item = u16> {
        self.first..=self.last
    }

    pub fn contains(self, protocol: Protocol, port: u16) -> bool {
        self.protocol == protocol && (self.first..=self.last).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}/{}", self.protocol, self.first)
        } else {
            write!(f, "{}/{}-{}", self.protocol, self.first, self.last)
        }
    }
}

/// One problem found in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, 0 when the problem has no single place.
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// A configuration that was refused, with every problem found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub path: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        write!(
            f,
            "{} has {count} problem{}; nothing was changed",
            self.path.display(),
            if count == 1 { "" } else { "s" }
        )?;
        for problem in &self.problems {
            if problem.line == 0 {
                write!(f, "\n  {}: {}", self.path.display(), problem.message)?;
            } else {
                write!(
                    f,
                    "\n  {}:{}:{}: {}",
                    self.path.display(),
                    problem.line,
                    problem.column,
                    problem.message
                )?;
            }
        }
        Ok(())
    }
}

/// Errors from [`load`].
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read `{}`: {source}; pass --config PATH or set XDP_ALLOWLIST_CONFIG", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

/// A configuration and the warnings it raised (legal but probably unintended).
#[derive(Clone, Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<Problem>,
}

/// Reads and validates the file at `path`.
///
/// # Errors
///
/// [`LoadError::Read`] when the file cannot be read, [`LoadError::Invalid`]
/// with every problem when it does not pass validation.
pub fn load(path: &Path) -> Result<Loaded, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(parse_str(&text, path)?)
}

/// Default of `capacity` (CIDRs per address family).
pub const DEFAULT_CAPACITY: u32 = xdp_allowlist_common::DEFAULT_CAPACITY;

/// Default of `events_per_second` (per CPU).
pub const DEFAULT_EVENTS_PER_SECOND: u32 = 100;

/// Default of `audit_log`.
pub const DEFAULT_AUDIT_LOG: &str = "/var/lib/xdp-allowlist/audit.jsonl";

/// Longest service name; it must fit the kernel-side name record.
pub const MAX_SERVICE_NAME: usize = 48;

#[cfg(test)]
mod tests;
