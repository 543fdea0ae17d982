//! The frames the benchmark sends: plain TCP SYNs over IPv4 and IPv6 with
//! valid checksums, so that the kernel stack accepts them where it matters
//! (nftables and iptables see them after the IP header checks).

use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::PacketBuilder;

/// Offset of the IPv6 source address in an untagged Ethernet frame.
pub const V6_SRC_OFFSET: i16 = 14 + 8;

/// Offset of the IPv4 source address in an untagged Ethernet frame.
pub const V4_SRC_OFFSET: i16 = 14 + 12;

/// Offset of the last four bytes of the IPv6 source address.
pub const V6_SRC_LOW_OFFSET: i16 = V6_SRC_OFFSET + 12;

const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

/// A TCP SYN from `src` to `dst:port` over IPv4.
pub fn tcp_v4(src: Ipv4Addr, dst: Ipv4Addr, port: u16) -> Vec<u8> {
    tcp_v4_macs(SRC_MAC, DST_MAC, src, dst, port)
}

/// A TCP SYN from `src` to `dst:port` over IPv6.
pub fn tcp_v6(src: Ipv6Addr, dst: Ipv6Addr, port: u16) -> Vec<u8> {
    tcp_v6_macs(SRC_MAC, DST_MAC, src, dst, port)
}

/// As [`tcp_v4`] with explicit MAC addresses.
pub fn tcp_v4_macs(
    smac: [u8; 6],
    dmac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    port: u16,
) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(smac, dmac)
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(40000, port, 1, 64240)
        .syn();
    finish(builder)
}

/// As [`tcp_v6`] with explicit MAC addresses.
pub fn tcp_v6_macs(
    smac: [u8; 6],
    dmac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    port: u16,
) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(smac, dmac)
        .ipv6(src.octets(), dst.octets(), 64)
        .tcp(40000, port, 1, 64240)
        .syn();
    finish(builder)
}

fn finish(builder: etherparse::PacketBuilderStep<etherparse::TcpHeader>) -> Vec<u8> {
    let payload = [0u8; 0];
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    // Writing into a Vec cannot fail for lack of room; a failure would be a
    // header that cannot be encoded, which these fixed headers are not.
    if let Err(err) = builder.write(&mut frame, &payload) {
        panic!("cannot encode a benchmark frame: {err}");
    }
    frame
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}
