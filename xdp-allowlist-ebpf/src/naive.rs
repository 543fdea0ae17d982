//! A deliberately naive build of the filter, for one benchmark only: it
//! assumes a 20-byte IPv4 header and a bare 40-byte IPv6 header, follows no
//! VLAN tag, option, extension header or fragment, and hands the ports to the
//! same policy as the real program. `cargo xtask bench` runs both on plain
//! IPv4 and IPv6 TCP; the difference is what the hardened parser costs on the
//! common path. Never load it in front of real traffic: every shape the real
//! parser exists for walks through it.

#![no_std]
#![no_main]

#[allow(
    dead_code,
    reason = "the naive parser uses only part of the shared filter"
)]
mod filter;

use aya_ebpf::{bindings::xdp_action::XDP_PASS, macros::xdp, programs::XdpContext};
use filter::{transport, Packet, Source};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, ip::Ipv6Hdr};

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;

#[xdp]
pub fn xdp_naive(ctx: XdpContext) -> u32 {
    let pkt = Packet {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    let frame_len = pkt.len();
    let Some(eth) = pkt.read::<EthHdr>(0, frame_len) else {
        return XDP_PASS;
    };
    match u16::from_be(eth.ether_type) {
        ETH_P_IPV4 => {
            let Some(ip) = pkt.read::<Ipv4Hdr>(EthHdr::LEN, frame_len) else {
                return XDP_PASS;
            };
            let l4 = EthHdr::LEN + Ipv4Hdr::LEN;
            transport(
                &ctx,
                &pkt,
                Source::V4(ip.src_addr),
                ip.proto,
                l4,
                frame_len,
                false,
            )
        }
        ETH_P_IPV6 => {
            let Some(ip) = pkt.read::<Ipv6Hdr>(EthHdr::LEN, frame_len) else {
                return XDP_PASS;
            };
            let l4 = EthHdr::LEN + Ipv6Hdr::LEN;
            transport(
                &ctx,
                &pkt,
                Source::V6(ip.src_addr),
                ip.next_hdr,
                l4,
                frame_len,
                false,
            )
        }
        _ => XDP_PASS,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
