//! Any string as a CIDR or a protected port, as the CLI takes them.

#![no_main]

use libfuzzer_sys::fuzz_target;
use xdp_allowlist::config::{parse_cidr, parse_port_spec};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(net) = parse_cidr(text) {
        assert_eq!(net.trunc(), net);
        // What we print, we read back the same.
        assert_eq!(parse_cidr(&net.to_string()), Ok(net));
    }
    if let Ok(range) = parse_port_spec(text) {
        assert!(range.first >= 1 && range.first <= range.last);
        assert_eq!(parse_port_spec(&range.to_string()), Ok(range));
    }
});
