//! Our filter as the benchmark drives it: loaded and pinned under a private
//! pin directory through the library's own entry points, configured with
//! `Applier`, run through BPF_PROG_TEST_RUN, removed on drop. The same code
//! loads the naive-parser build ([`Object::Naive`]) that measures what the
//! hardened parser costs.

use std::{
    collections::HashSet,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{anyhow, bail, Context as _};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use ipnet::{IpNet, Ipv4Net};
use rand::{rngs::StdRng, Rng, SeedableRng};
use xdp_allowlist::{
    apply::{Applier, ApplyReport, PolicyMaps as _},
    bpf::{self, BpfMaps},
    config::{self, AllowEntry, Config, XdpModeSetting},
    status::{self, EventStatus},
};
use xdp_allowlist_common::{Control, PROGRAM_NAME, V4_MAP};

static NEXT_PIN: AtomicU32 = AtomicU32::new(0);

/// Which build of the kernel program to load. Both define the same maps and
/// run the same policy code (`xdp-allowlist-ebpf/src/filter.rs`); they
/// differ only in the parser in front of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Object {
    /// The real program, as the daemon loads it.
    Hardened,
    /// `xdp_naive`: fixed header sizes, no VLAN tags, IPv4 options, IPv6
    /// extension headers or fragments. For test runs only; never attached.
    Naive,
}

impl Object {
    fn bytes(self) -> &'static [u8] {
        match self {
            Object::Hardened => xdp_allowlist::EBPF_OBJECT,
            Object::Naive => xdp_allowlist::NAIVE_OBJECT,
        }
    }

    /// Name of the XDP program in the object.
    pub fn program_name(self) -> &'static str {
        match self {
            Object::Hardened => PROGRAM_NAME,
            Object::Naive => "xdp_naive",
        }
    }
}

/// Our program with its maps, pinned under `/sys/fs/bpf/xab-<pid>-<n>`.
pub struct OurFilter {
    object: Object,
    pin_dir: PathBuf,
    loaded: bpf::Loaded,
    applier: Applier<BpfMaps>,
}

impl OurFilter {
    /// Loads the real program with room for `capacity` CIDRs per family and
    /// slot.
    ///
    /// # Errors
    ///
    /// When loading or pinning fails.
    pub fn load(capacity: u32) -> anyhow::Result<Self> {
        Self::load_object(Object::Hardened, capacity)
    }

    /// Loads `object` with fresh maps of its own, as [`OurFilter::load`] does
    /// for the real program.
    ///
    /// # Errors
    ///
    /// When loading or pinning fails.
    pub fn load_object(object: Object, capacity: u32) -> anyhow::Result<Self> {
        let n = NEXT_PIN.fetch_add(1, Ordering::Relaxed);
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/xab-{}-{n}", std::process::id()));
        bpf::ensure_bpffs(&pin_dir)?;
        // From here on the directory exists: remove it whatever happens next.
        let cleanup = PinCleanup(pin_dir.clone());
        let loaded = bpf::load_and_pin_object(
            &pin_dir,
            capacity,
            false,
            object.bytes(),
            object.program_name(),
        )?;
        let maps = BpfMaps::open(&pin_dir)?;
        let applier = Applier::adopt(maps)?;
        std::mem::forget(cleanup);
        Ok(Self {
            object,
            pin_dir,
            loaded,
            applier,
        })
    }

    /// Where the maps and links are pinned.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Applies `config` as the next generation.
    ///
    /// # Errors
    ///
    /// When a map write fails.
    pub fn apply(&mut self, config: &Config) -> anyhow::Result<ApplyReport> {
        Ok(self.applier.apply(config)?)
    }

    /// The loaded program.
    ///
    /// # Errors
    ///
    /// When the object has no such program (a build mismatch).
    pub fn program(&self) -> anyhow::Result<&Xdp> {
        let name = self.object.program_name();
        let program = self
            .loaded
            .program
            .program(name)
            .ok_or_else(|| anyhow!("program `{name}` missing from the object"))?;
        Ok(program.try_into()?)
    }

    /// Attaches in native mode to `interface` in the calling thread's
    /// network namespace; [`OurFilter::detach`] undoes it.
    ///
    /// # Errors
    ///
    /// When the kernel refuses, or for the naive build, which must never see
    /// real traffic.
    pub fn attach(&mut self, interface: &str) -> anyhow::Result<()> {
        if self.object != Object::Hardened {
            bail!(
                "the {:?} build is for test runs only; it is never attached",
                self.object
            );
        }
        // The previous receiver's link may still be on its way out.
        let mut tries = 0;
        loop {
            match bpf::attach(
                &mut self.loaded.program,
                &self.pin_dir,
                interface,
                XdpModeSetting::Native,
            ) {
                Ok(_) => return Ok(()),
                Err(_) if tries < 20 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(25));
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// # Errors
    ///
    /// When the link pin cannot be removed.
    pub fn detach(&self, interface: &str) -> anyhow::Result<()> {
        bpf::detach(&self.pin_dir, interface)?;
        Ok(())
    }

    /// Sets `flags` in the control record behind the applier's back (the
    /// configuration cannot express them); used to isolate the cost of
    /// drop events.
    ///
    /// # Errors
    ///
    /// When the control map cannot be read or written.
    pub fn set_control_flags(&mut self, flags: u32) -> anyhow::Result<()> {
        let maps = self.applier.maps_mut();
        let mut control = maps.control()?;
        control.flags |= flags;
        maps.set_control(control)?;
        Ok(())
    }

    /// The control record as the kernel reads it.
    ///
    /// # Errors
    ///
    /// When the control map cannot be read.
    pub fn control(&self) -> anyhow::Result<Control> {
        Ok(self.applier.maps().control()?)
    }

    /// The kernel's event counters, summed over CPUs (as `status` shows
    /// them).
    ///
    /// # Errors
    ///
    /// When the maps cannot be read.
    pub fn event_counts(&self) -> anyhow::Result<EventStatus> {
        Ok(status::read(&self.pin_dir)?.events)
    }

    /// Empties the event ring buffer, as the daemon's reader would; returns
    /// how many records it held.
    ///
    /// # Errors
    ///
    /// When the ring buffer cannot be opened.
    pub fn drain_events(&self) -> anyhow::Result<usize> {
        let mut ring = bpf::open_events(&self.pin_dir)?;
        let mut records = 0;
        while ring.next().is_some() {
            records += 1;
        }
        Ok(records)
    }

    /// Bytes the kernel charges for the IPv4 trie (`bpftool map show`).
    ///
    /// # Errors
    ///
    /// When bpftool fails.
    pub fn v4_trie_bytes(&self) -> anyhow::Result<u64> {
        let pin = bpf::maps_dir(&self.pin_dir).join(V4_MAP);
        let pin = pin.to_string_lossy();
        let out = super::sys::run("bpftool", &["-j", "map", "show", "pinned", &pin])?;
        let value: serde_json::Value =
            serde_json::from_str(&out).context("bpftool printed no JSON")?;
        value["bytes_memlock"]
            .as_u64()
            .ok_or_else(|| anyhow!("bpftool reported no bytes_memlock: {out}"))
    }
}

impl Drop for OurFilter {
    fn drop(&mut self) {
        remove_pins(&self.pin_dir);
    }
}

struct PinCleanup(PathBuf);

impl Drop for PinCleanup {
    fn drop(&mut self) {
        remove_pins(&self.0);
    }
}

fn remove_pins(pin_dir: &Path) {
    if let Err(err) = bpf::remove_all_pins(pin_dir) {
        eprintln!("cannot remove {}: {err:#}", pin_dir.display());
    }
}

/// Average cost of one run of `program` over `frame`, and its verdict.
///
/// # Errors
///
/// When the test run fails.
pub fn time_program(program: &Xdp, frame: &[u8], repeat: u32) -> anyhow::Result<(u32, Duration)> {
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::new()
        })
        .context("BPF_PROG_TEST_RUN failed")?;
    Ok((result.return_value, result.duration))
}

/// Parses a configuration the way the daemon does.
///
/// # Errors
///
/// When the text is not a valid configuration (a bug in the benchmark).
pub fn parse(text: &str) -> anyhow::Result<Config> {
    let loaded = config::parse_str(text, Path::new("<bench>")).map_err(|e| anyhow!("{e}"))?;
    Ok(loaded.config)
}

/// A configuration protecting `tcp/8443` (service `bench`) with `allow` as
/// its allowlist. The file's structure goes through the real parser; the
/// list is set afterwards because the parser checks duplicates pairwise,
/// which does not finish for a million entries (see the report).
///
/// # Errors
///
/// As [`parse`].
pub fn large_config(
    allow: &[IpNet],
    extra_v6: &[IpNet],
    events_per_second: u32,
) -> anyhow::Result<Config> {
    let text = format!(
        "capacity = {}\nevents_per_second = {events_per_second}\n\n[services.bench]\nports = [\"tcp/8443\"]\nallow = [\"198.51.100.0/24\"]\n",
        xdp_allowlist_common::DEFAULT_CAPACITY
    );
    let mut config = parse(&text)?;
    let service = config
        .services
        .get_mut("bench")
        .ok_or_else(|| anyhow!("service `bench` vanished from the parsed configuration"))?;
    service.allow = allow
        .iter()
        .chain(extra_v6)
        .map(|&net| AllowEntry {
            net,
            note: None,
            expires: None,
        })
        .collect();
    Ok(config)
}

/// Addresses no generated prefix may cover: the documentation ranges the
/// benchmark sends from and to, and the host uplink's.
fn reserved(net: &Ipv4Net) -> bool {
    let keep_out: [Ipv4Net; 3] = [
        Ipv4Net::new(Ipv4Addr::new(192, 0, 2, 0), 24).unwrap_or_default(),
        Ipv4Net::new(Ipv4Addr::new(198, 51, 100, 0), 24).unwrap_or_default(),
        Ipv4Net::new(Ipv4Addr::new(203, 0, 113, 0), 24).unwrap_or_default(),
    ];
    keep_out.iter().any(|k| k.contains(net) || net.contains(k))
}

/// `n` distinct IPv4 prefixes of mixed lengths, roughly as allowlists built
/// from provider and customer ranges look: 30 % /32, 35 % /24, 20 % /16–/23,
/// 15 % /25–/31. Deterministic for a given `n`.
pub fn mixed_prefixes(n: usize, seed: u64) -> Vec<Ipv4Net> {
    let mut rng = StdRng::seed_from_u64(seed ^ n as u64);
    let mut seen = HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let roll: u32 = rng.gen_range(0..100);
        let len = match roll {
            0..=29 => 32,
            30..=64 => 24,
            65..=84 => rng.gen_range(16..=23),
            _ => rng.gen_range(25..=31),
        };
        let addr = Ipv4Addr::from(rng.gen_range(0x0100_0000u32..0xe000_0000));
        let Ok(net) = Ipv4Net::new(addr, len) else {
            continue;
        };
        let net = net.trunc();
        if reserved(&net) || !seen.insert(net) {
            continue;
        }
        out.push(net);
    }
    out
}

/// `n` consecutive /32s from 10.0.0.0: the densest trie for its size.
pub fn dense_prefixes(n: usize) -> Vec<Ipv4Net> {
    let base = u32::from(Ipv4Addr::new(10, 0, 0, 0));
    (0..n as u32)
        .filter_map(|i| Ipv4Net::new(Ipv4Addr::from(base + i), 32).ok())
        .collect()
}

/// An address inside `list` and one next to a /32 of `list` but in none of
/// its prefixes (a miss that walks deep into the trie).
pub fn hit_and_near_miss(list: &[Ipv4Net]) -> (Ipv4Addr, Ipv4Addr) {
    let hit = list[list.len() / 2].network();
    let covered = |addr: Ipv4Addr| list.iter().any(|net| net.contains(&addr));
    let mut near = Ipv4Addr::new(203, 0, 113, 9);
    for net in list.iter().filter(|n| n.prefix_len() == 32).take(64) {
        let candidate = Ipv4Addr::from(u32::from(net.network()).wrapping_add(1));
        if !covered(candidate) {
            near = candidate;
            break;
        }
    }
    (hit, near)
}

/// `n` distinct IPv6 prefixes inside 2001:db8::/32 (/48, /56, /64 and
/// /128), none in 2001:db8::/48 or 2001:db8:ffff::/48, which the benchmark
/// uses for its own addresses and flood sources.
pub fn v6_prefixes(n: usize, seed: u64) -> Vec<IpNet> {
    let mut rng = StdRng::seed_from_u64(seed ^ n as u64);
    let mut seen = HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let len = match rng.gen_range(0..10) {
            0..=2 => 48,
            3..=5 => 56,
            6..=8 => 64,
            _ => 128,
        };
        let site: u16 = rng.gen_range(1..0xffff);
        let low: u128 = rng.gen::<u128>() & ((1u128 << 80) - 1);
        let addr = (0x2001_0db8u128 << 96) | (u128::from(site) << 80) | low;
        let Ok(net) = ipnet::Ipv6Net::new(std::net::Ipv6Addr::from(addr), len) else {
            continue;
        };
        let net = IpNet::V6(net.trunc());
        if seen.insert(net) {
            out.push(net);
        }
    }
    out
}
