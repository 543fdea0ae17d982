//! What `--version` reports besides the version: the kernel features the
//! filter relies on, probed on this host, and the drivers of its interfaces.
//!
//! Probing creates (and closes at once) a tiny map or program per feature,
//! which needs CAP_BPF; without it a feature reads "unknown". Whether an
//! interface takes native XDP is known only by attaching, so that is left to
//! `run`, which logs the mode it got, and to `status`.

use std::{fmt::Display, fs, path::Path};

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{is_map_supported, is_program_supported},
    util::KernelVersion,
};

/// Where the kernel publishes its own BTF; the loader relocates against it.
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The text `xdp-allowlist --version` prints, without a trailing newline.
pub fn long_version(version: &str) -> String {
    let kernel = KernelVersion::current()
        .map(|v| v.to_string())
        .unwrap_or_else(|err| format!("unknown ({err})"));
    let btf = if Path::new(VMLINUX_BTF).exists() {
        format!("yes ({VMLINUX_BTF})")
    } else {
        format!("no ({VMLINUX_BTF} is missing)")
    };

    let mut lines = vec![
        version.to_owned(),
        format!("kernel {kernel}, features found:"),
        row("BTF", btf),
        row(
            "XDP programs",
            answer(is_program_supported(ProgramType::Xdp)),
        ),
        row("LPM trie maps", answer(is_map_supported(MapType::LpmTrie))),
        row(
            "ring buffer maps",
            answer(is_map_supported(MapType::RingBuf)),
        ),
        row(
            "map-in-map (array of maps)",
            answer(is_map_supported(MapType::ArrayOfMaps)),
        ),
        row(
            "native XDP",
            "decided at attach time per interface; `status` shows the mode each got".to_owned(),
        ),
        "interface drivers:".to_owned(),
    ];
    lines.extend(interface_drivers().into_iter().map(|(name, driver)| {
        row(
            &name,
            driver.unwrap_or_else(|| "(no device driver: virtual)".to_owned()),
        )
    }));
    lines.join("\n")
}

fn row(what: &str, value: String) -> String {
    format!("  {what:<28} {value}")
}

fn answer<E: Display>(probe: Result<bool, E>) -> String {
    match probe {
        Ok(true) => "yes".to_owned(),
        Ok(false) => "no".to_owned(),
        Err(err) => format!("unknown ({err}; probing needs CAP_BPF)"),
    }
}

/// Every interface in this network namespace, sorted, with the name of the
/// driver behind it when it has a device (`/sys/class/net/NAME/device/driver`).
fn interface_drivers() -> Vec<(String, Option<String>)> {
    let Ok(entries) = fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    let mut interfaces: Vec<(String, Option<String>)> = entries
        .filter_map(Result::ok)
        .filter(|entry| entry.path().join("ifindex").exists())
        .map(|entry| {
            let driver = fs::read_link(entry.path().join("device/driver"))
                .ok()
                .and_then(|target| target.file_name().map(|n| n.to_string_lossy().into_owned()));
            (entry.file_name().to_string_lossy().into_owned(), driver)
        })
        .collect();
    interfaces.sort();
    interfaces
}
