//! Parsing of the two value kinds users type: CIDRs and protected ports.
//! Shared by the configuration file and the CLI, so both say the same thing.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::{IpNet, Ipv6Net};

use super::{PortRange, Protocol};

/// Why a CIDR was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("`{0}` is not a CIDR; write an address with a prefix length, like `198.51.100.0/24` or `2001:db8::/32`")]
    Syntax(String),
    #[error("`{0}` has a zone id (`%...`); zone ids name a local link and cannot be matched in packets, remove it")]
    ZoneId(String),
    #[error("`{given}` has host bits set; the network is `{network}`, write that instead")]
    HostBits { given: String, network: IpNet },
    #[error("`{0}` is an IPv4-mapped or IPv4-compatible IPv6 range; write the IPv4 CIDR instead (such sources are never admitted)")]
    Mapped(String),
}

/// Parses a CIDR as users write it. A bare address means that one host
/// (`/32` or `/128`).
///
/// # Errors
///
/// A [`CidrError`] that says what is wrong and what to write instead.
pub fn parse_cidr(text: &str) -> Result<IpNet, CidrError> {
    let trimmed = text.trim();
    if trimmed.contains('%') {
        return Err(CidrError::ZoneId(trimmed.to_owned()));
    }
    let net = match trimmed.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => match trimmed.parse::<IpAddr>() {
            Ok(addr) => IpNet::from(addr),
            Err(_) => return Err(CidrError::Syntax(trimmed.to_owned())),
        },
    };
    if net.trunc() != net {
        return Err(CidrError::HostBits {
            given: trimmed.to_owned(),
            network: net.trunc(),
        });
    }
    if let IpNet::V6(v6) = net {
        if is_v4_embedded_range(&v6) {
            return Err(CidrError::Mapped(trimmed.to_owned()));
        }
    }
    Ok(net)
}

/// Is `net` inside `::ffff:0:0/96` (IPv4-mapped) or `::/96` (IPv4-compatible)?
fn is_v4_embedded_range(net: &Ipv6Net) -> bool {
    if net.prefix_len() < 96 {
        return false;
    }
    let mapped = Ipv6Net::new(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96);
    let compatible = Ipv6Net::new(Ipv6Addr::UNSPECIFIED, 96);
    [mapped, compatible]
        .into_iter()
        .flatten()
        .any(|range| range.contains(net))
}

/// Parses `tcp/22`, `udp/443` or `sctp/3868`, or a range like `udp/60000-61000`.
///
/// # Errors
///
/// A message that says what is wrong and what is accepted.
pub fn parse_port_spec(text: &str) -> Result<PortRange, String> {
    let Some((proto, ports)) = text.split_once('/') else {
        return Err(format!(
            "`{text}` is not a protected port; write PROTOCOL/PORT, like `tcp/22` or `udp/60000-61000`"
        ));
    };
    let protocol = match proto.to_ascii_lowercase().as_str() {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "sctp" => Protocol::Sctp,
        other => {
            return Err(format!(
                "unknown protocol `{other}` in `{text}`; use tcp, udp or sctp"
            ))
        }
    };
    let (first, last) = match ports.split_once('-') {
        Some((a, b)) => (parse_port(a, text)?, parse_port(b, text)?),
        None => {
            let port = parse_port(ports, text)?;
            (port, port)
        }
    };
    if first > last {
        return Err(format!(
            "port range `{text}` runs backwards; write the lower port first"
        ));
    }
    Ok(PortRange {
        protocol,
        first,
        last,
    })
}

fn parse_port(text: &str, whole: &str) -> Result<u16, String> {
    match text.trim().parse::<u32>() {
        Ok(port) if (1..=65535).contains(&port) => Ok(port as u16),
        Ok(port) => Err(format!("port {port} in `{whole}` is outside 1-65535")),
        Err(_) => Err(format!(
            "`{text}` in `{whole}` is not a port number; ports are 1-65535"
        )),
    }
}
