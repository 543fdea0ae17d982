//! Packet builders for the kernel tests, written with `etherparse` so that
//! the tests do not share the kernel program's or the reference's reading of
//! the bytes.
//!
//! Shapes etherparse cannot express (SCTP, a cut header, an IHL that lies)
//! are written or patched by hand, each with a comment saying so. Every
//! builder returns plain bytes; a frame is `ethernet(..)` around `Ipv4::build`
//! or `Ipv6::build` around a transport header.

use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::{
    icmpv4, icmpv6, ArpEthIpv4Packet, ArpOperation, ArpPacket, EtherType, Ethernet2Header,
    IcmpEchoHeader, Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type, IpAuthHeader, IpFragOffset,
    IpNumber, Ipv4Header, Ipv4Options, Ipv6FlowLabel, Ipv6Header, Ipv6RawExtHeader,
    SingleVlanHeader, TcpHeader, UdpHeader, VlanId, VlanPcp,
};

pub const ETH_IPV4: u16 = 0x0800;
pub const ETH_IPV6: u16 = 0x86dd;
pub const ETH_ARP: u16 = 0x0806;
/// 802.1Q customer tag.
pub const TPID_8021Q: u16 = 0x8100;
/// 802.1ad service (outer) tag.
pub const TPID_8021AD: u16 = 0x88a8;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const SCTP: u8 = 132;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;
pub const IPIP: u8 = 4;
pub const IPV6_IN_IP: u8 = 41;
pub const GRE: u8 = 47;
pub const ESP: u8 = 50;
pub const AH: u8 = 51;
pub const NO_NEXT_HEADER: u8 = 59;

/// Ethernet header size; the IP header starts here in an untagged frame.
pub const ETH_LEN: usize = 14;

/// An Ethernet frame carrying `payload` of `ether_type`, behind one VLAN tag
/// per entry of `tpids` (outermost first).
pub fn ethernet(ether_type: u16, tpids: &[u16], payload: &[u8]) -> Vec<u8> {
    let mut types: Vec<u16> = tpids.to_vec();
    types.push(ether_type);

    let eth = Ethernet2Header {
        source: [0x02, 0, 0, 0, 0, 0x01],
        destination: [0x02, 0, 0, 0, 0, 0x02],
        ether_type: EtherType(types[0]),
    };
    let mut frame = eth.to_bytes().to_vec();
    for (i, next) in types[1..].iter().enumerate() {
        let tag = SingleVlanHeader {
            pcp: VlanPcp::ZERO,
            drop_eligible_indicator: false,
            vlan_id: VlanId::try_new(100 + i as u16).expect("a VLAN id below 4095"),
            ether_type: EtherType(*next),
        };
        frame.extend_from_slice(&tag.to_bytes());
    }
    frame.extend_from_slice(payload);
    frame
}

/// An IPv4 datagram description; `build` writes header and payload.
#[derive(Clone, Debug)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    /// Option bytes: a multiple of 4, at most 40 (IHL 5 to 15).
    pub options: Vec<u8>,
    pub dont_fragment: bool,
    pub more_fragments: bool,
    /// Fragment offset in 8-byte units.
    pub fragment_offset: u16,
}

impl Ipv4 {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Self {
        Self {
            src,
            dst,
            proto,
            options: Vec::new(),
            dont_fragment: false,
            more_fragments: false,
            fragment_offset: 0,
        }
    }

    /// With `words` 32-bit words of options (NOPs ending in End of Options).
    pub fn with_option_words(mut self, words: usize) -> Self {
        let mut options = vec![1u8; words * 4];
        if let Some(last) = options.last_mut() {
            *last = 0;
        }
        self.options = options;
        self
    }

    pub fn fragment(mut self, offset: u16, more: bool) -> Self {
        self.fragment_offset = offset;
        self.more_fragments = more;
        self
    }

    /// Header and `payload`, with lengths and checksum filled in.
    pub fn build(&self, payload: &[u8]) -> Vec<u8> {
        let mut header = Ipv4Header::new(
            0,
            64,
            IpNumber(self.proto),
            self.src.octets(),
            self.dst.octets(),
        )
        .expect("an empty payload fits");
        header.options = Ipv4Options::try_from(self.options.as_slice())
            .expect("options: a multiple of 4, at most 40 bytes");
        header.dont_fragment = self.dont_fragment;
        header.more_fragments = self.more_fragments;
        header.fragment_offset =
            IpFragOffset::try_new(self.fragment_offset).expect("an offset below 8192");
        header
            .set_payload_len(payload.len())
            .expect("payload fits an IPv4 datagram");
        header.header_checksum = header.calc_header_checksum();
        let mut bytes = header.to_bytes().to_vec();
        bytes.extend_from_slice(payload);
        bytes
    }
}

/// One IPv6 extension header.
#[derive(Clone, Copy, Debug)]
pub enum Ext {
    /// Hop-by-hop options, `8 * (units + 1)` bytes.
    HopByHop { units: u8 },
    /// Routing header (type 4, segments left 0), `8 * (units + 1)` bytes.
    Routing { units: u8 },
    /// Destination options, `8 * (units + 1)` bytes.
    DestOpts { units: u8 },
    /// Fragment header: offset in 8-byte units, the M flag.
    Fragment { offset: u16, more: bool },
    /// Authentication header with `icv_words` words of ICV.
    Auth { icv_words: u8 },
}

impl Ext {
    pub const fn number(self) -> u8 {
        match self {
            Ext::HopByHop { .. } => 0,
            Ext::Routing { .. } => 43,
            Ext::DestOpts { .. } => 60,
            Ext::Fragment { .. } => 44,
            Ext::Auth { .. } => AH,
        }
    }

    /// The header's bytes, pointing at `next`.
    pub fn build(self, next: u8) -> Vec<u8> {
        let next = IpNumber(next);
        match self {
            Ext::HopByHop { units } | Ext::Routing { units } | Ext::DestOpts { units } => {
                // PadN filling the option area; a routing header starts with
                // type 4 and segments left 0, which every node may skip.
                let mut body = vec![0u8; 6 + 8 * usize::from(units)];
                match self {
                    Ext::Routing { .. } => body[0] = 4,
                    _ => {
                        body[0] = 1;
                        body[1] = (body.len() - 2) as u8;
                    }
                }
                Ipv6RawExtHeader::new_raw(next, &body)
                    .expect("an ext header body of 6 + 8n bytes")
                    .to_bytes()
                    .to_vec()
            }
            Ext::Fragment { offset, more } => {
                // By hand: etherparse 0.18.2 writes (and reads) the low five
                // offset bits and the M flag in the wrong places of byte 3
                // (M as bit 7). RFC 8200: offset in the top 13 bits of the
                // 16-bit field, then 2 reserved bits, then M.
                assert!(offset < 8192, "a fragment offset has 13 bits");
                let field = (offset << 3) | u16::from(more);
                let mut bytes = vec![next.0, 0];
                bytes.extend_from_slice(&field.to_be_bytes());
                bytes.extend_from_slice(&0x1234_5678u32.to_be_bytes());
                bytes
            }
            Ext::Auth { icv_words } => {
                let icv = vec![0xa5u8; 4 * usize::from(icv_words)];
                IpAuthHeader::new(next, 0x100, 1, &icv)
                    .expect("an ICV of whole words")
                    .to_bytes()
                    .to_vec()
            }
        }
    }
}

/// An IPv6 datagram description; `build` writes header, chain and payload.
#[derive(Clone, Debug)]
pub struct Ipv6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub exts: Vec<Ext>,
    /// Next header after the last extension header.
    pub proto: u8,
}

impl Ipv6 {
    pub fn new(src: Ipv6Addr, dst: Ipv6Addr, proto: u8) -> Self {
        Self {
            src,
            dst,
            exts: Vec::new(),
            proto,
        }
    }

    pub fn with_exts(mut self, exts: &[Ext]) -> Self {
        self.exts = exts.to_vec();
        self
    }

    pub fn build(&self, payload: &[u8]) -> Vec<u8> {
        let mut chain = Vec::new();
        for (i, ext) in self.exts.iter().enumerate() {
            let next = self.exts.get(i + 1).map_or(self.proto, |e| e.number());
            chain.extend_from_slice(&ext.build(next));
        }
        chain.extend_from_slice(payload);

        let mut header = Ipv6Header {
            traffic_class: 0,
            flow_label: Ipv6FlowLabel::ZERO,
            payload_length: 0,
            next_header: IpNumber(self.exts.first().map_or(self.proto, |e| e.number())),
            hop_limit: 64,
            source: self.src.octets(),
            destination: self.dst.octets(),
        };
        header
            .set_payload_length(chain.len())
            .expect("payload fits an IPv6 datagram");
        let mut bytes = header.to_bytes().to_vec();
        bytes.extend_from_slice(&chain);
        bytes
    }
}

/// A TCP header (SYN) with `payload` after it.
pub fn tcp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut header = TcpHeader::new(sport, dport, 1000, 65535);
    header.syn = true;
    let mut bytes = header.to_bytes().to_vec();
    bytes.extend_from_slice(payload);
    bytes
}

pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let header = UdpHeader {
        source_port: sport,
        destination_port: dport,
        length: (8 + payload.len()) as u16,
        checksum: 0,
    };
    let mut bytes = header.to_bytes().to_vec();
    bytes.extend_from_slice(payload);
    bytes
}

/// By hand (etherparse has no SCTP): the 12-byte common header (ports,
/// verification tag, checksum left 0) and one INIT chunk of 20 bytes.
pub fn sctp(sport: u16, dport: u16) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(32);
    bytes.extend_from_slice(&sport.to_be_bytes());
    bytes.extend_from_slice(&dport.to_be_bytes());
    bytes.extend_from_slice(&[0; 8]);
    // INIT: type 1, flags 0, length 20, tag, a_rwnd, streams, initial TSN.
    bytes.extend_from_slice(&[1, 0, 0, 20]);
    bytes.extend_from_slice(&0x0102_0304u32.to_be_bytes());
    bytes.extend_from_slice(&65535u32.to_be_bytes());
    bytes.extend_from_slice(&[0, 10, 0, 10]);
    bytes.extend_from_slice(&1u32.to_be_bytes());
    bytes
}

/// A transport header of `proto` (TCP, UDP or SCTP) to `dport`.
pub fn ports_header(proto: u8, sport: u16, dport: u16) -> Vec<u8> {
    match proto {
        TCP => tcp(sport, dport, &[]),
        UDP => udp(sport, dport, b"payload!"),
        SCTP => sctp(sport, dport),
        other => panic!("protocol {other} carries no ports"),
    }
}

/// ICMP echo request.
pub fn icmpv4_echo() -> Vec<u8> {
    let mut bytes = Icmpv4Header::new(Icmpv4Type::EchoRequest(IcmpEchoHeader { id: 1, seq: 1 }))
        .to_bytes()
        .to_vec();
    bytes.extend_from_slice(&[0u8; 16]);
    bytes
}

/// ICMP "fragmentation needed" quoting `quoted` (an IPv4 header and 8 bytes).
pub fn icmpv4_frag_needed(quoted: &[u8]) -> Vec<u8> {
    let mut bytes = Icmpv4Header::new(Icmpv4Type::DestinationUnreachable(
        icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
    ))
    .to_bytes()
    .to_vec();
    bytes.extend_from_slice(quoted);
    bytes
}

/// ICMPv6 packet too big quoting `quoted`.
pub fn icmpv6_packet_too_big(quoted: &[u8]) -> Vec<u8> {
    let mut bytes = Icmpv6Header::new(Icmpv6Type::PacketTooBig { mtu: 1280 })
        .to_bytes()
        .to_vec();
    bytes.extend_from_slice(quoted);
    bytes
}

/// ICMPv6 destination unreachable (port) quoting `quoted`.
pub fn icmpv6_unreachable(quoted: &[u8]) -> Vec<u8> {
    let mut bytes = Icmpv6Header::new(Icmpv6Type::DestinationUnreachable(
        icmpv6::DestUnreachableCode::Port,
    ))
    .to_bytes()
    .to_vec();
    bytes.extend_from_slice(quoted);
    bytes
}

/// Neighbour solicitation (type 135) or advertisement (136) for `target`:
/// etherparse knows no ND type, so the 4 reserved bytes and the target
/// address follow its generic header.
pub fn icmpv6_neighbour(kind: u8, target: Ipv6Addr) -> Vec<u8> {
    let mut bytes = Icmpv6Header::new(Icmpv6Type::Unknown {
        type_u8: kind,
        code_u8: 0,
        bytes5to8: [0; 4],
    })
    .to_bytes()
    .to_vec();
    bytes.extend_from_slice(&target.octets());
    bytes
}

/// An ARP request body (who has `target`, tell `sender`).
pub fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let arp: ArpPacket = ArpEthIpv4Packet {
        operation: ArpOperation::REQUEST,
        sender_mac: [0x02, 0, 0, 0, 0, 0x01],
        sender_ipv4: sender.octets(),
        target_mac: [0; 6],
        target_ipv4: target.octets(),
    }
    .into();
    arp.to_bytes().to_vec()
}

/// A GRE header (no flags) carrying IPv4.
pub fn gre(inner: &[u8]) -> Vec<u8> {
    // By hand: etherparse has no GRE. Flags/version 0, protocol 0x0800.
    let mut bytes = vec![0, 0, 0x08, 0x00];
    bytes.extend_from_slice(inner);
    bytes
}

/// An ESP header (SPI, sequence) and opaque ciphertext.
pub fn esp() -> Vec<u8> {
    // By hand: etherparse has no ESP; the rest is encrypted anyway.
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&0x0000_1001u32.to_be_bytes());
    bytes.extend_from_slice(&1u32.to_be_bytes());
    bytes.extend_from_slice(&[0x5a; 32]);
    bytes
}

/// An untagged IPv4 frame.
pub fn v4_frame(ip: &Ipv4, payload: &[u8]) -> Vec<u8> {
    ethernet(ETH_IPV4, &[], &ip.build(payload))
}

/// An untagged IPv6 frame.
pub fn v6_frame(ip: &Ipv6, payload: &[u8]) -> Vec<u8> {
    ethernet(ETH_IPV6, &[], &ip.build(payload))
}

/// Patches the IHL of the untagged IPv4 frame `frame` (header checksum left
/// stale: the filter does not check it, the stack would).
pub fn set_ihl(frame: &mut [u8], ihl: u8) {
    frame[ETH_LEN] = (frame[ETH_LEN] & 0xf0) | (ihl & 0x0f);
}

/// Patches the total length of the untagged IPv4 frame `frame`.
pub fn set_total_len(frame: &mut [u8], total: u16) {
    frame[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&total.to_be_bytes());
}

/// Patches the payload length of the untagged IPv6 frame `frame`.
pub fn set_payload_len(frame: &mut [u8], len: u16) {
    frame[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&len.to_be_bytes());
}

/// Lowercase hex, 16 bytes a line, for failure messages.
pub fn hex_dump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (i, chunk) in bytes.chunks(16).enumerate() {
        out.push_str(&format!("{:04x}:", i * 16));
        for byte in chunk {
            out.push_str(&format!(" {byte:02x}"));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragment_header_follows_rfc_8200() {
        assert_eq!(
            Ext::Fragment {
                offset: 0,
                more: true
            }
            .build(TCP)[..4],
            [TCP, 0, 0x00, 0x01]
        );
        assert_eq!(
            Ext::Fragment {
                offset: 1,
                more: false
            }
            .build(TCP)[..4],
            [TCP, 0, 0x00, 0x08]
        );
        assert_eq!(
            Ext::Fragment {
                offset: 8191,
                more: true
            }
            .build(UDP)[..4],
            [UDP, 0, 0xff, 0xf9]
        );
    }

    #[test]
    fn ipv4_options_set_the_ihl() {
        for words in 0..=10 {
            let bytes = Ipv4::new(Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST, TCP)
                .with_option_words(words)
                .build(&[]);
            assert_eq!(usize::from(bytes[0] & 0x0f), 5 + words);
            assert_eq!(bytes.len(), 20 + 4 * words);
        }
    }

    #[test]
    fn vlan_tags_chain_the_ether_types() {
        let frame = ethernet(ETH_IPV6, &[TPID_8021AD, TPID_8021Q], &[]);
        assert_eq!(frame[12..14], TPID_8021AD.to_be_bytes());
        assert_eq!(frame[16..18], TPID_8021Q.to_be_bytes());
        assert_eq!(frame[20..22], ETH_IPV6.to_be_bytes());
    }
}
