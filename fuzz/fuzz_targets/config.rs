//! Any bytes as a configuration file: parsing must never panic, and a file
//! it accepts must describe itself consistently.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use xdp_allowlist::config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match config::parse_str(text, Path::new("fuzz.toml")) {
        Ok(loaded) => {
            for service in loaded.config.services.values() {
                for entry in &service.allow {
                    // Accepted CIDRs are canonical: no host bits.
                    assert_eq!(entry.net.trunc(), entry.net);
                }
                for range in &service.ports {
                    assert!(range.first >= 1 && range.first <= range.last);
                }
            }
            // The guards run on every accepted file.
            let _ = xdp_allowlist::guard::risks(&loaded.config, None);
            let _ = xdp_allowlist::guard::shadowed(&loaded.config);
        }
        Err(err) => {
            // Every refusal says where and why.
            assert!(!err.problems.is_empty());
            let _ = err.to_string();
        }
    }
});
