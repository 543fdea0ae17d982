//! Lock-out protection: changes that would cut the operator off, or open a
//! service to everyone, are refused by the CLI unless `--force`.
//!
//! Only risks a change *introduces* are refused: an edit elsewhere in a file
//! that already has one goes through.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::{Config, Protocol, ServiceMode};

/// The SSH session the CLI runs in, from `SSH_CONNECTION`
/// (`client_ip client_port server_ip server_port`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SshSession {
    pub client: IpAddr,
    pub server_port: u16,
}

impl SshSession {
    /// Reads `SSH_CONNECTION`, else `SSH_CLIENT` (which lacks the server
    /// port; 22 is assumed then).
    pub fn from_env() -> Option<Self> {
        if let Ok(text) = std::env::var("SSH_CONNECTION") {
            let parts: Vec<&str> = text.split_whitespace().collect();
            if let [client, _, _, port] = parts.as_slice() {
                return Some(SshSession {
                    client: client.parse().ok()?,
                    server_port: port.parse().ok()?,
                });
            }
        }
        let text = std::env::var("SSH_CLIENT").ok()?;
        let client = text.split_whitespace().next()?.parse().ok()?;
        Some(SshSession {
            client,
            server_port: 22,
        })
    }
}

/// Shortest prefixes accepted without `--force`.
pub const MIN_PREFIX_V4: u8 = 8;
pub const MIN_PREFIX_V6: u8 = 16;

/// Everything in `config` that would lock someone out or let everyone in.
pub fn risks(config: &Config, ssh: Option<SshSession>) -> Vec<String> {
    let mut found = Vec::new();
    for (name, service) in &config.services {
        if service.mode == ServiceMode::Enforce && service.allow.is_empty() {
            found.push(format!(
                "service `{name}` would allow no source: every packet to {} would be dropped",
                ports_text(service)
            ));
        }
        for entry in &service.allow {
            let (len, min) = match entry.net {
                IpNet::V4(n) => (n.prefix_len(), MIN_PREFIX_V4),
                IpNet::V6(n) => (n.prefix_len(), MIN_PREFIX_V6),
            };
            if len < min {
                found.push(format!(
                    "`{}` in service `{name}` allows {}; prefixes shorter than /{min} need --force",
                    entry.net,
                    if len == 0 {
                        "every address"
                    } else {
                        "a very large range"
                    }
                ));
            }
        }
    }
    if let Some(ssh) = ssh {
        for (name, service) in &config.services {
            let protects_ssh = service
                .ports
                .iter()
                .any(|p| p.contains(Protocol::Tcp, ssh.server_port));
            let allowed = service.allow.iter().any(|e| e.net.contains(&ssh.client));
            if protects_ssh && service.mode == ServiceMode::Enforce && !allowed {
                found.push(format!(
                    "you are connected over SSH from {} to tcp/{}, which service `{name}` protects, and its allowlist would not include you: you would lock yourself out",
                    ssh.client, ssh.server_port
                ));
            }
        }
    }
    found
}

/// The risks `after` has that `before` did not.
pub fn new_risks(before: Option<&Config>, after: &Config, ssh: Option<SshSession>) -> Vec<String> {
    let old = before.map(|c| risks(c, ssh)).unwrap_or_default();
    risks(after, ssh)
        .into_iter()
        .filter(|risk| !old.contains(risk))
        .collect()
}

/// Entries that another entry of the same service already covers.
///
/// Looks up each entry's shorter prefixes in a set (at most 128 lookups per
/// entry), so a list of a million entries is checked in moments.
pub fn shadowed(config: &Config) -> Vec<String> {
    let mut found = Vec::new();
    for (name, service) in &config.services {
        let nets: std::collections::HashSet<IpNet> = service.allow.iter().map(|e| e.net).collect();
        for inner in &service.allow {
            let covering = (0..inner.net.prefix_len())
                .filter_map(|len| match inner.net {
                    IpNet::V4(n) => ipnet::Ipv4Net::new(n.network(), len)
                        .ok()
                        .map(|n| IpNet::V4(n.trunc())),
                    IpNet::V6(n) => ipnet::Ipv6Net::new(n.network(), len)
                        .ok()
                        .map(|n| IpNet::V6(n.trunc())),
                })
                .find(|outer| nets.contains(outer));
            if let Some(outer) = covering {
                found.push(format!(
                    "`{}` in service `{name}` is already covered by `{outer}`",
                    inner.net
                ));
            }
        }
    }
    found
}

fn ports_text(service: &crate::config::Service) -> String {
    let ports: Vec<String> = service.ports.iter().map(ToString::to_string).collect();
    ports.join(", ")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::parse_str;

    fn config(text: &str) -> Config {
        parse_str(text, Path::new("t.toml")).expect("valid").config
    }

    const SSH: &str = "[services.ssh]\nports = [\"tcp/22\"]\nallow = [\"203.0.113.0/24\"]\n";

    fn session(client: &str) -> Option<SshSession> {
        Some(SshSession {
            client: client.parse().expect("ip"),
            server_port: 22,
        })
    }

    #[test]
    fn removing_your_own_ssh_source_is_a_risk() {
        let before = config(SSH);
        let after = config(&SSH.replace("203.0.113.0/24", "198.51.100.0/24"));
        let risks = new_risks(Some(&before), &after, session("203.0.113.50"));
        assert_eq!(risks.len(), 1, "{risks:?}");
        assert!(risks[0].contains("lock yourself out"));
        assert!(new_risks(Some(&before), &after, session("198.51.100.9")).is_empty());
        assert!(new_risks(Some(&before), &after, None).is_empty());
    }

    #[test]
    fn monitor_mode_cannot_lock_anyone_out() {
        let after = config(&format!("{SSH}mode = \"monitor\"\n"));
        assert!(risks(&after, session("198.51.100.9")).is_empty());
    }

    #[test]
    fn broad_prefixes_and_empty_lists_are_risks() {
        for (cidr, risky) in [
            ("0.0.0.0/0", true),
            ("10.0.0.0/7", true),
            ("10.0.0.0/8", false),
            ("::/0", true),
            ("2000::/15", true),
            ("2001::/16", false),
        ] {
            let c = config(&format!(
                "[services.a]\nports = [\"tcp/1\"]\nallow = [\"{cidr}\"]\n"
            ));
            assert_eq!(!risks(&c, None).is_empty(), risky, "{cidr}");
        }
        let empty = config("[services.a]\nports = [\"tcp/1\"]\n");
        assert!(risks(&empty, None)[0].contains("would allow no source"));
    }

    #[test]
    fn only_new_risks_count() {
        let already = config("[services.a]\nports = [\"tcp/1\"]\nallow = [\"0.0.0.0/0\"]\n");
        let edited = config(
            "[services.a]\nports = [\"tcp/1\"]\nallow = [\"0.0.0.0/0\", \"198.51.100.1\"]\n",
        );
        assert!(new_risks(Some(&already), &edited, None).is_empty());
    }

    #[test]
    fn shadowed_entries_are_named() {
        let c = config(
            "[services.a]\nports = [\"tcp/1\"]\nallow = [\"198.51.100.0/24\", \"198.51.100.7\"]\n",
        );
        let found = shadowed(&c);
        assert_eq!(found.len(), 1);
        assert!(found[0]
            .contains("`198.51.100.7/32` in service `a` is already covered by `198.51.100.0/24`"));
    }
}
