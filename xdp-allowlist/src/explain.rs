//! `explain ADDRESS PROTO/PORT`: which service, which entry, which verdict,
//! from the configuration and, when the filter is loaded, from the kernel's
//! own maps (the same lookups the XDP program makes).

use std::{net::IpAddr, path::Path};

use aya::maps::{lpm_trie::Key, Array, LpmTrie, MapData};
use ipnet::IpNet;
use serde::Serialize;
use xdp_allowlist_common::{
    key_tag, port_index, Control, RuleValue, V4KeyData, V6KeyData, CONTROL_MAP, MAX_SERVICES,
    PORTS_MAP, PORT_MONITOR, PORT_SERVICE_MASK, SERVICE_NAMES_MAP, TAG_BITS, V4_MAP, V6_MAP,
};

use crate::{
    bpf,
    config::{Config, PortRange, Protocol, ServiceMode},
};

/// A verdict as `explain` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The port is not protected: the filter does not touch the packet.
    Unprotected,
    Pass,
    Drop,
    /// Refused, but the service is in monitor mode.
    WouldDrop,
}

/// The answer from the configuration.
#[derive(Clone, Debug, Serialize)]
pub struct Explanation {
    pub source: IpAddr,
    pub port: String,
    pub service: Option<String>,
    pub mode: Option<&'static str>,
    /// The longest allowed CIDR that contains the source, and its note.
    pub matched: Option<String>,
    pub note: Option<String>,
    pub verdict: Verdict,
    /// Why, in one sentence.
    pub reason: String,
}

/// Explains the verdict for `source` sending to `protocol/port` under `config`.
pub fn explain(config: &Config, source: IpAddr, protocol: Protocol, port: u16) -> Explanation {
    let port_text = PortRange {
        protocol,
        first: port,
        last: port,
    }
    .to_string();
    let Some((name, service)) = config
        .services
        .iter()
        .find(|(_, s)| s.ports.iter().any(|p| p.contains(protocol, port)))
    else {
        return Explanation {
            source,
            port: port_text.clone(),
            service: None,
            mode: None,
            matched: None,
            note: None,
            verdict: Verdict::Unprotected,
            reason: format!("no service protects {port_text}; the filter passes it untouched"),
        };
    };
    let mode = match service.mode {
        ServiceMode::Enforce => "enforce",
        ServiceMode::Monitor => "monitor",
    };
    let embedded_v4 = matches!(source, IpAddr::V6(v6) if is_v4_embedded(&v6.octets()));
    let matched = if embedded_v4 {
        None
    } else {
        service
            .allow
            .iter()
            .filter(|e| e.net.contains(&source))
            .max_by_key(|e| e.net.prefix_len())
    };
    let (verdict, reason) = match (matched, service.mode) {
        (Some(entry), _) => (
            Verdict::Pass,
            format!("{source} is inside {} of service `{name}`", entry.net),
        ),
        (None, ServiceMode::Monitor) => (
            Verdict::WouldDrop,
            format!("{source} is in no entry of service `{name}`, which is in monitor mode: counted, passed"),
        ),
        (None, ServiceMode::Enforce) if embedded_v4 => (
            Verdict::Drop,
            format!("{source} is an IPv4-mapped or -compatible IPv6 address, which no entry ever admits"),
        ),
        (None, ServiceMode::Enforce) => (
            Verdict::Drop,
            format!("{source} is in no entry of service `{name}`"),
        ),
    };
    Explanation {
        source,
        port: port_text,
        service: Some(name.clone()),
        mode: Some(mode),
        matched: matched.map(|e| e.net.to_string()),
        note: matched.and_then(|e| e.note.clone()),
        verdict,
        reason,
    }
}

fn is_v4_embedded(octets: &[u8; 16]) -> bool {
    octets[..8].iter().all(|&b| b == 0)
        && (octets[8..12] == [0, 0, 0xff, 0xff] || octets[8..12] == [0, 0, 0, 0])
}

/// The answer from the kernel's maps.
#[derive(Clone, Debug, Serialize)]
pub struct KernelAnswer {
    pub generation: u64,
    pub service: Option<String>,
    pub verdict: Verdict,
}

/// Asks the pinned maps, with the lookups the XDP program makes.
///
/// # Errors
///
/// When nothing is pinned in `pin_dir` or a map cannot be read.
pub fn ask_kernel(
    pin_dir: &Path,
    source: IpAddr,
    protocol: Protocol,
    port: u16,
) -> anyhow::Result<KernelAnswer> {
    bpf::check_pinned_layout(pin_dir)?;
    let control: Array<MapData, Control> = bpf::open_map(pin_dir, CONTROL_MAP)?;
    let control = control.get(&0, 0)?;
    let slot = control.active_slot & 1;
    let ports: Array<MapData, u32> = bpf::open_map(pin_dir, PORTS_MAP)?;
    let entry = ports.get(&port_index(slot, protocol.index(), port), 0)?;
    let service = entry & PORT_SERVICE_MASK;
    if service == 0 || service >= MAX_SERVICES {
        return Ok(KernelAnswer {
            generation: control.generation,
            service: None,
            verdict: Verdict::Unprotected,
        });
    }
    let names = bpf::read_service_names(&bpf::open_map(pin_dir, SERVICE_NAMES_MAP)?)?;
    let tag = key_tag(slot, service);
    let allowed = match source {
        IpAddr::V4(v4) => {
            let trie: LpmTrie<MapData, V4KeyData, RuleValue> = bpf::open_map(pin_dir, V4_MAP)?;
            let key = Key::new(
                TAG_BITS + 32,
                V4KeyData {
                    tag,
                    addr: v4.octets(),
                },
            );
            trie.get(&key, 0).is_ok()
        }
        IpAddr::V6(v6) if is_v4_embedded(&v6.octets()) => false,
        IpAddr::V6(v6) => {
            let trie: LpmTrie<MapData, V6KeyData, RuleValue> = bpf::open_map(pin_dir, V6_MAP)?;
            let key = Key::new(
                TAG_BITS + 128,
                V6KeyData {
                    tag,
                    addr: v6.octets(),
                },
            );
            trie.get(&key, 0).is_ok()
        }
    };
    let monitor = entry & PORT_MONITOR != 0;
    let verdict = match (allowed, monitor) {
        (true, _) => Verdict::Pass,
        (false, true) => Verdict::WouldDrop,
        (false, false) => Verdict::Drop,
    };
    Ok(KernelAnswer {
        generation: control.generation,
        service: names.get(&service).cloned(),
        verdict,
    })
}

/// Parses `ADDRESS` for explain: an address, not a range.
///
/// # Errors
///
/// A message saying what was expected.
pub fn parse_address(text: &str) -> Result<IpAddr, String> {
    text.trim()
        .parse::<IpAddr>()
        .map_err(|_| match text.parse::<IpNet>() {
            Ok(_) => format!("`{text}` is a range; explain takes one address, like 203.0.113.7"),
            Err(_) => format!("`{text}` is not an IP address"),
        })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::parse_str;

    const CONFIG: &str = r#"
[services.admin]
ports = ["tcp/22"]
allow = ["203.0.113.0/24", { cidr = "203.0.113.7/32", note = "bastion" }]
[services.hooks]
ports = ["udp/9000"]
mode = "monitor"
allow = ["2001:db8:100::/48"]
"#;

    fn config() -> Config {
        parse_str(CONFIG, Path::new("t.toml"))
            .expect("valid")
            .config
    }

    fn ask(source: &str, protocol: Protocol, port: u16) -> Explanation {
        explain(&config(), source.parse().expect("ip"), protocol, port)
    }

    #[test]
    fn the_longest_entry_and_its_note_decide() {
        let e = ask("203.0.113.7", Protocol::Tcp, 22);
        assert_eq!(e.verdict, Verdict::Pass);
        assert_eq!(e.matched.as_deref(), Some("203.0.113.7/32"));
        assert_eq!(e.note.as_deref(), Some("bastion"));
        assert_eq!(
            ask("203.0.113.8", Protocol::Tcp, 22).matched.as_deref(),
            Some("203.0.113.0/24")
        );
    }

    #[test]
    fn refused_unprotected_and_monitor() {
        assert_eq!(
            ask("198.51.100.1", Protocol::Tcp, 22).verdict,
            Verdict::Drop
        );
        assert_eq!(
            ask("198.51.100.1", Protocol::Udp, 22).verdict,
            Verdict::Unprotected
        );
        assert_eq!(
            ask("198.51.100.1", Protocol::Udp, 9000).verdict,
            Verdict::WouldDrop
        );
        assert_eq!(
            ask("2001:db8:100::1", Protocol::Udp, 9000).verdict,
            Verdict::Pass
        );
    }

    #[test]
    fn mapped_sources_are_never_admitted() {
        let e = ask("::ffff:203.0.113.7", Protocol::Tcp, 22);
        assert_eq!(e.verdict, Verdict::Drop);
        assert!(e.reason.contains("IPv4-mapped"));
    }

    #[test]
    fn addresses_not_ranges() {
        assert!(parse_address("203.0.113.0/24")
            .expect_err("refused")
            .contains("is a range"));
        assert!(parse_address("nope")
            .expect_err("refused")
            .contains("not an IP address"));
    }
}
