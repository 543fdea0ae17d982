//! Walks the TOML document by hand rather than through serde, so that every
//! problem carries the line and column of the value at fault and every
//! problem in the file is reported at once.

use std::{
    collections::{BTreeMap, HashMap},
    ops::Range,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use toml_edit::{ImDocument, Item, Table, Value};

mod alerts;

use super::{
    parse_cidr, parse_port_spec, AllowEntry, Config, ConfigError, Loaded, Problem, Protocol,
    Service, ServiceMode, TunnelPolicy, XdpModeSetting, DEFAULT_AUDIT_LOG, DEFAULT_CAPACITY,
    DEFAULT_EVENTS_PER_SECOND, MAX_SERVICE_NAME,
};

const TOP_KEYS: &[&str] = &[
    "interfaces",
    "xdp_mode",
    "tunnel_policy",
    "capacity",
    "events_per_second",
    "audit_log",
    "metrics_listen",
    "services",
    "alerts",
];
const SERVICE_KEYS: &[&str] = &["ports", "allow", "mode"];
const ENTRY_KEYS: &[&str] = &["cidr", "note", "expires"];

/// Parses and validates a configuration held in memory. `path` only names
/// the file in messages.
///
/// # Errors
///
/// A [`ConfigError`] listing every problem found.
pub fn parse_str(text: &str, path: &Path) -> Result<Loaded, ConfigError> {
    let mut walker = Walker::new(text);
    let config = match ImDocument::parse(text) {
        Ok(doc) => walker.config(doc.as_table()),
        Err(err) => {
            let (line, column) = walker.position(err.span());
            walker.problems.push(Problem {
                line,
                column,
                message: format!("not valid TOML: {}", err.message()),
            });
            None
        }
    };
    match config {
        Some(config) if walker.problems.is_empty() => Ok(Loaded {
            config,
            warnings: walker.warnings,
        }),
        _ => Err(ConfigError {
            path: path.to_owned(),
            problems: walker.problems,
        }),
    }
}

struct Walker {
    line_starts: Vec<usize>,
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
}

impl Walker {
    fn new(text: &str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self {
            line_starts,
            problems: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// 1-based line and column of the start of `span`.
    fn position(&self, span: Option<Range<usize>>) -> (usize, usize) {
        let Some(span) = span else { return (0, 0) };
        let line = self
            .line_starts
            .partition_point(|&start| start <= span.start);
        let column = span.start - self.line_starts[line.saturating_sub(1)] + 1;
        (line, column)
    }

    fn problem(&mut self, span: Option<Range<usize>>, message: impl Into<String>) {
        let (line, column) = self.position(span);
        self.problems.push(Problem {
            line,
            column,
            message: message.into(),
        });
    }

    fn warning(&mut self, span: Option<Range<usize>>, message: impl Into<String>) {
        let (line, column) = self.position(span);
        self.warnings.push(Problem {
            line,
            column,
            message: message.into(),
        });
    }

    fn unknown_keys(&mut self, table: &Table, known: &[&str], context: &str) {
        for (key, _) in table.iter() {
            if !known.contains(&key) {
                let span = table.key(key).and_then(|k| k.span());
                self.problem(
                    span,
                    format!(
                        "unknown key `{key}` {context}; known keys are {}",
                        known.join(", ")
                    ),
                );
            }
        }
    }

    fn config(&mut self, root: &Table) -> Option<Config> {
        self.unknown_keys(root, TOP_KEYS, "at the top level");

        let interfaces = self.interfaces(root.get("interfaces"));
        let xdp_mode = self
            .choice(
                root.get("xdp_mode"),
                "xdp_mode",
                &[
                    ("auto", XdpModeSetting::Auto),
                    ("native", XdpModeSetting::Native),
                    ("skb", XdpModeSetting::Skb),
                ],
            )
            .unwrap_or_default();
        let tunnel_policy = self
            .choice(
                root.get("tunnel_policy"),
                "tunnel_policy",
                &[("pass", TunnelPolicy::Pass), ("drop", TunnelPolicy::Drop)],
            )
            .unwrap_or_default();
        let capacity = self
            .integer(root.get("capacity"), "capacity", 1, 16 * 1024 * 1024)
            .unwrap_or(DEFAULT_CAPACITY);
        let events_per_second = self
            .integer(
                root.get("events_per_second"),
                "events_per_second",
                0,
                1_000_000,
            )
            .unwrap_or(DEFAULT_EVENTS_PER_SECOND);
        let services = self.services(root.get("services"));
        let metrics_listen = match root.get("metrics_listen") {
            None => None,
            Some(item) => match item.as_str().map(str::parse::<std::net::SocketAddr>) {
                Some(Ok(addr)) => Some(addr),
                _ => {
                    self.problem(
                        item.span(),
                        "`metrics_listen` must be an address and port, like \"127.0.0.1:9725\"",
                    );
                    None
                }
            },
        };
        let audit_log = match root.get("audit_log") {
            None => Some(PathBuf::from(DEFAULT_AUDIT_LOG)),
            Some(item) => match item.as_str() {
                Some("") => None,
                Some(path) => Some(PathBuf::from(path)),
                None => {
                    self.problem(
                        item.span(),
                        "`audit_log` must be a file path, or \"\" to switch it off",
                    );
                    None
                }
            },
        };

        let alerts = self.alerts(root.get("alerts"));

        let config = Config {
            alerts,
            interfaces,
            xdp_mode,
            tunnel_policy,
            capacity,
            events_per_second,
            services,
            audit_log,
            metrics_listen,
        };
        self.check_capacity(&config);
        Some(config)
    }

    fn interfaces(&mut self, item: Option<&Item>) -> Vec<String> {
        let Some(item) = item else {
            return Vec::new();
        };
        let Some(array) = item.as_array() else {
            self.problem(
                item.span(),
                "`interfaces` must be a list of interface names, like [\"eth0\"]",
            );
            return Vec::new();
        };
        let mut names = Vec::new();
        for value in array.iter() {
            match value.as_str() {
                Some(name) if valid_ifname(name) => {
                    if names.iter().any(|n| n == name) {
                        self.warning(value.span(), format!("interface `{name}` is listed twice"));
                    } else {
                        names.push(name.to_owned());
                    }
                }
                Some(name) => self.problem(
                    value.span(),
                    format!(
                        "`{name}` is not an interface name (1-15 characters, no `/`, no spaces)"
                    ),
                ),
                None => self.problem(value.span(), "interface names must be strings"),
            }
        }
        names
    }

    fn choice<T: Copy>(
        &mut self,
        item: Option<&Item>,
        key: &str,
        options: &[(&str, T)],
    ) -> Option<T> {
        let item = item?;
        let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
        match item.as_str() {
            Some(text) => match options.iter().find(|(name, _)| *name == text) {
                Some((_, value)) => Some(*value),
                None => {
                    self.problem(
                        item.span(),
                        format!("`{key}` is `{text}`; use one of {}", names.join(", ")),
                    );
                    None
                }
            },
            None => {
                self.problem(
                    item.span(),
                    format!("`{key}` must be a string, one of {}", names.join(", ")),
                );
                None
            }
        }
    }

    fn integer(&mut self, item: Option<&Item>, key: &str, min: i64, max: i64) -> Option<u32> {
        let item = item?;
        match item.as_integer() {
            Some(value) if (min..=max).contains(&value) => u32::try_from(value).ok(),
            _ => {
                self.problem(
                    item.span(),
                    format!("`{key}` must be a whole number from {min} to {max}"),
                );
                None
            }
        }
    }

    fn services(&mut self, item: Option<&Item>) -> BTreeMap<String, Service> {
        let mut services = BTreeMap::new();
        let Some(item) = item else {
            return services;
        };
        let Some(table) = item.as_table_like() else {
            self.problem(
                item.span(),
                "`services` must be a table of services, like [services.admin]",
            );
            return services;
        };

        // Which service claimed each (protocol, port) first, to refuse a
        // second claim with both places named.
        let mut claims: HashMap<(Protocol, u16), (String, usize)> = HashMap::new();
        for (name, item) in table.iter() {
            let span = item.span();
            if !valid_service_name(name) {
                self.problem(
                    span.clone(),
                    format!(
                        "service name `{name}` is not allowed; use 1-{MAX_SERVICE_NAME} lowercase letters, digits, `-` or `_`"
                    ),
                );
                continue;
            }
            let Some(service_table) = item.as_table() else {
                self.problem(
                    span,
                    format!("service `{name}` must be a table ([services.{name}])"),
                );
                continue;
            };
            if let Some(service) = self.service(name, service_table, &mut claims) {
                services.insert(name.to_owned(), service);
            }
        }
        if services.len() >= xdp_allowlist_common::MAX_SERVICES as usize {
            self.problem(
                item.span(),
                format!(
                    "{} services are configured; at most {} fit",
                    services.len(),
                    xdp_allowlist_common::MAX_SERVICES - 1
                ),
            );
        }
        services
    }

    fn service(
        &mut self,
        name: &str,
        table: &Table,
        claims: &mut HashMap<(Protocol, u16), (String, usize)>,
    ) -> Option<Service> {
        let context = format!("in service `{name}`");
        self.unknown_keys(table, SERVICE_KEYS, &context);

        let mode = self
            .choice(
                table.get("mode"),
                "mode",
                &[
                    ("enforce", ServiceMode::Enforce),
                    ("monitor", ServiceMode::Monitor),
                ],
            )
            .unwrap_or_default();

        let mut ports = Vec::new();
        match table.get("ports") {
            None => self.problem(
                table.span(),
                format!("service `{name}` has no `ports`; list what it protects, like ports = [\"tcp/8443\"]"),
            ),
            Some(item) => match item.as_array() {
                None => self.problem(item.span(), format!("`ports` {context} must be a list like [\"tcp/8443\"]")),
                Some(array) => {
                    for value in array.iter() {
                        let Some(text) = value.as_str() else {
                            self.problem(value.span(), "ports must be strings like \"tcp/22\"");
                            continue;
                        };
                        match parse_port_spec(text) {
                            Ok(range) => {
                                self.claim(name, range, value, claims);
                                ports.push(range);
                            }
                            Err(message) => self.problem(value.span(), message),
                        }
                    }
                }
            },
        }

        let mut allow: Vec<AllowEntry> = Vec::new();
        match table.get("allow") {
            None => {}
            Some(item) => match item.as_array() {
                None => self.problem(
                    item.span(),
                    format!("`allow` {context} must be a list of CIDRs"),
                ),
                Some(array) => {
                    // A set, not a scan: lists of a million entries happen.
                    let mut seen = std::collections::HashSet::with_capacity(array.len());
                    for value in array.iter() {
                        if let Some(entry) = self.allow_entry(value) {
                            if !seen.insert(entry.net) {
                                self.warning(
                                    value.span(),
                                    format!("`{}` is listed twice {context}", entry.net),
                                );
                                continue;
                            }
                            allow.push(entry);
                        }
                    }
                }
            },
        }
        if allow.is_empty() && mode == ServiceMode::Enforce {
            self.warning(
                table.span(),
                format!("service `{name}` allows no source: every packet to its ports is dropped"),
            );
        }

        Some(Service { ports, allow, mode })
    }

    fn claim(
        &mut self,
        name: &str,
        range: super::PortRange,
        value: &Value,
        claims: &mut HashMap<(Protocol, u16), (String, usize)>,
    ) {
        let (line, _) = self.position(value.span());
        for port in range.ports() {
            match claims.get(&(range.protocol, port)) {
                Some((owner, owner_line)) => {
                    let owner_text = if owner == name {
                        "this service already".to_owned()
                    } else {
                        format!("service `{owner}` already")
                    };
                    let message = format!(
                        "{}/{port} is claimed twice: {owner_text} protects it (line {owner_line}); a port belongs to one service",
                        range.protocol
                    );
                    self.problem(value.span(), message);
                    return;
                }
                None => {
                    claims.insert((range.protocol, port), (name.to_owned(), line));
                }
            }
        }
    }

    fn allow_entry(&mut self, value: &Value) -> Option<AllowEntry> {
        let (cidr, note, expires, span) = match value {
            Value::String(s) => (s.value().as_str(), None, None, value.span()),
            Value::InlineTable(table) => {
                for (key, _) in table.iter() {
                    if !ENTRY_KEYS.contains(&key) {
                        let span = table.key(key).and_then(|k| k.span());
                        self.problem(
                            span,
                            format!(
                                "unknown key `{key}` in an allow entry; known keys are {}",
                                ENTRY_KEYS.join(", ")
                            ),
                        );
                    }
                }
                let Some(cidr_value) = table.get("cidr") else {
                    self.problem(value.span(), "an allow entry written as a table needs `cidr`, like { cidr = \"198.51.100.7/32\", note = \"...\" }");
                    return None;
                };
                let Some(cidr) = cidr_value.as_str() else {
                    self.problem(cidr_value.span(), "`cidr` must be a string");
                    return None;
                };
                let note = match table.get("note") {
                    None => None,
                    Some(note) => match note.as_str() {
                        Some(text) => Some(text.to_owned()),
                        None => {
                            self.problem(note.span(), "`note` must be a string");
                            return None;
                        }
                    },
                };
                let expires = match table.get("expires") {
                    None => None,
                    Some(item) => {
                        let text = match item {
                            Value::String(s) => s.value().clone(),
                            Value::Datetime(d) => d.value().to_string(),
                            _ => String::new(),
                        };
                        match humantime::parse_rfc3339_weak(&text) {
                            Ok(time) if text.ends_with('Z') => Some(time),
                            _ => {
                                self.problem(
                                    item.span(),
                                    format!("`expires` must be a UTC time like \"2026-12-31T18:00:00Z\", not `{text}`"),
                                );
                                return None;
                            }
                        }
                    }
                };
                (cidr, note, expires, cidr_value.span())
            }
            _ => {
                self.problem(
                    value.span(),
                    "allow entries are CIDR strings like \"203.0.113.0/24\"",
                );
                return None;
            }
        };
        match parse_cidr(cidr) {
            Ok(net) => Some(AllowEntry { net, note, expires }),
            Err(err) => {
                self.problem(span, err.to_string());
                None
            }
        }
    }

    fn check_capacity(&mut self, config: &Config) {
        let (mut v4, mut v6) = (0usize, 0usize);
        for service in config.services.values() {
            for entry in &service.allow {
                match entry.net {
                    IpNet::V4(_) => v4 += 1,
                    IpNet::V6(_) => v6 += 1,
                }
            }
        }
        // With tunnel_policy = "drop" the union of all lists is stored too.
        let factor = match config.tunnel_policy {
            TunnelPolicy::Pass => 1,
            TunnelPolicy::Drop => 2,
        };
        for (family, count) in [("IPv4", v4 * factor), ("IPv6", v6 * factor)] {
            if count > config.capacity as usize {
                self.problem(
                    None,
                    format!(
                        "{count} {family} entries exceed `capacity` = {}; raise `capacity` (takes effect after `detach` and a restart) or remove entries",
                        config.capacity
                    ),
                );
            }
        }
    }
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && !name.contains('/')
        && !name.chars().any(char::is_whitespace)
}

fn valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SERVICE_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}
