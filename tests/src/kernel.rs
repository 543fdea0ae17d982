//! A loaded kernel program with a configuration installed, judged packet by
//! packet through `BPF_PROG_TEST_RUN`. Needs root.
//!
//! Each [`Fixture`] pins its maps in a directory of its own under
//! `/sys/fs/bpf` (never the daemon's default) and removes it on drop, also
//! when the test panics.

use std::{
    io,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
};

use aya::{
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{ProgramError, TestRun, TestRunOptions, Xdp},
};
use xdp_allowlist::{
    apply::Applier,
    bpf::{self, BpfMaps, Loaded},
    config::{self, Config},
};
use xdp_allowlist_common::{
    counter_index, Control, Reason, ServiceCounters, SourceEvent, SourceKey, SourceStats,
    CONTROL_MAP, COUNTERS_MAP, EVENTS_MAP, FAMILY_V4, FAMILY_V6, PORT_PROTOCOLS, PROGRAM_NAME,
    REASONS_MAP, REASON_COUNT,
};

/// `XDP_DROP`.
pub const XDP_DROP: u32 = 1;
/// `XDP_PASS`.
pub const XDP_PASS: u32 = 2;

/// Trie capacity of test fixtures, in CIDRs per family and slot.
const TEST_CAPACITY: u32 = 4096;

static NEXT_PIN_DIR: AtomicUsize = AtomicUsize::new(0);

/// A unique pin directory, removed with every pin in it on drop.
pub struct PinDir {
    path: PathBuf,
}

impl PinDir {
    pub fn new() -> Self {
        let n = NEXT_PIN_DIR.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(format!("/sys/fs/bpf/xa-kt-{}-{n}", std::process::id()));
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Default for PinDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(err) = bpf::remove_all_pins(&self.path) {
            eprintln!(
                "cannot remove the test pins at {}: {err:#}",
                self.path.display()
            );
        }
    }
}

/// Parses a configuration given as TOML text; panics with every problem.
pub fn parse_config(text: &str) -> Config {
    match config::parse_str(text, Path::new("test.toml")) {
        Ok(loaded) => loaded.config,
        Err(err) => panic!("test configuration refused: {err}"),
    }
}

/// The kernel program, loaded from the object `build.rs` made, with a
/// configuration applied.
pub struct Fixture {
    applier: Applier<BpfMaps>,
    reasons: PerCpuArray<MapData, u64>,
    counters: PerCpuArray<MapData, ServiceCounters>,
    loaded: Loaded,
    config: Config,
    // Last, so that the pins go after every file descriptor on them.
    pins: PinDir,
}

impl Fixture {
    /// Loads the program and applies the configuration in `toml`.
    ///
    /// # Panics
    ///
    /// When not root, when the kernel refuses the program, or when the
    /// configuration is refused.
    pub fn new(toml: &str) -> Self {
        // Per-CPU maps (counters, SOURCES, the event budget) are read as one
        // CPU's view by some tests: keep every run of this thread on CPU 0.
        let mut cpus = nix::sched::CpuSet::new();
        cpus.set(0)
            .unwrap_or_else(|e| panic!("selecting CPU 0: {e}"));
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpus)
            .unwrap_or_else(|e| panic!("pinning the test thread to CPU 0: {e}"));
        let config = parse_config(toml);
        let pins = PinDir::new();
        let dir = pins.path().to_owned();

        bpf::ensure_bpffs(&dir)
            .unwrap_or_else(|e| panic!("bpffs at {}: {e:#} (run as root)", dir.display()));
        let loaded = bpf::load_and_pin(&dir, TEST_CAPACITY, false)
            .unwrap_or_else(|e| panic!("loading the kernel program: {e:#}"));
        let maps = BpfMaps::open(&dir).unwrap_or_else(|e| panic!("opening the maps: {e:#}"));
        let mut applier = Applier::adopt(maps).unwrap_or_else(|e| panic!("adopting the maps: {e}"));
        applier
            .apply(&config)
            .unwrap_or_else(|e| panic!("applying the configuration: {e}"));
        let reasons = bpf::open_map(&dir, REASONS_MAP).unwrap_or_else(|e| panic!("{e:#}"));
        let counters = bpf::open_map(&dir, COUNTERS_MAP).unwrap_or_else(|e| panic!("{e:#}"));

        Self {
            applier,
            reasons,
            counters,
            loaded,
            config,
            pins,
        }
    }

    /// Applies another configuration as the next generation.
    pub fn apply(&mut self, toml: &str) {
        let config = parse_config(toml);
        self.applier
            .apply(&config)
            .unwrap_or_else(|e| panic!("applying the configuration: {e}"));
        self.config = config;
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn pin_dir(&self) -> &Path {
        self.pins.path()
    }

    /// Runs `packet` through the program once: the XDP action, or the
    /// syscall's error (EINVAL for frames the kernel will not test).
    pub fn run(&self, packet: &[u8]) -> Result<u32, io::Error> {
        let xdp: &Xdp = self
            .loaded
            .program
            .program(PROGRAM_NAME)
            .unwrap_or_else(|| panic!("program `{PROGRAM_NAME}` missing"))
            .try_into()
            .unwrap_or_else(|e| panic!("`{PROGRAM_NAME}` is not an XDP program: {e}"));
        let options = TestRunOptions {
            data_in: Some(packet),
            ..TestRunOptions::new()
        };
        match xdp.test_run(options) {
            Ok(result) => Ok(result.return_value),
            Err(ProgramError::SyscallError(err)) => Err(err.io_error),
            Err(err) => Err(io::Error::other(err.to_string())),
        }
    }

    /// The XDP action for `packet`; panics when the syscall fails.
    pub fn verdict(&self, packet: &[u8]) -> u32 {
        self.run(packet).unwrap_or_else(|e| {
            panic!(
                "BPF_PROG_TEST_RUN failed on a {}-byte frame: {e}",
                packet.len()
            )
        })
    }

    /// Every `Reason` counter, summed over CPUs, in counter order.
    pub fn reasons(&self) -> [u64; REASON_COUNT as usize] {
        let mut all = [0u64; REASON_COUNT as usize];
        for (i, slot) in all.iter_mut().enumerate() {
            let values = self
                .reasons
                .get(&(i as u32), 0)
                .unwrap_or_else(|e| panic!("reading reason {i}: {e}"));
            *slot = values.iter().sum();
        }
        all
    }

    /// One `Reason` counter, summed over CPUs.
    pub fn reason(&self, reason: Reason) -> u64 {
        self.reasons()[reason as usize]
    }

    /// The kernel id of service `name`.
    pub fn service_id(&self, name: &str) -> u32 {
        *self
            .applier
            .ids()
            .get(name)
            .unwrap_or_else(|| panic!("no service `{name}` in the configuration"))
    }

    /// One source's entry in `SOURCES` as CPU 0 saw it (fixtures run every
    /// packet there), or `None` when the source is not tracked.
    pub fn source(&self, name: &str, kind: u8, addr: IpAddr) -> Option<SourceStats> {
        let map = xdp_allowlist::sources::open_sources(self.pin_dir())
            .unwrap_or_else(|e| panic!("{e:#}"));
        let entries = xdp_allowlist::sources::read_per_cpu(&map)
            .unwrap_or_else(|e| panic!("reading SOURCES: {e:#}"));
        let key = source_key(self.service_id(name), kind, addr);
        entries
            .get(&key)
            .and_then(|values| values.first().copied())
            .filter(|stats| stats.packets > 0)
    }

    /// Every event in the ring buffer that nobody read yet, oldest first.
    pub fn drain_events(&self) -> Vec<SourceEvent> {
        let mut ring: RingBuf<MapData> =
            bpf::open_map(self.pin_dir(), EVENTS_MAP).unwrap_or_else(|e| panic!("{e:#}"));
        let mut events = Vec::new();
        while let Some(item) = ring.next() {
            let event = xdp_allowlist::stream::decode_event(&item)
                .unwrap_or_else(|| panic!("a {}-byte record is not an event", item.len()));
            events.push(event);
        }
        events
    }

    /// Changes the control record in place (flags, budgets), behind the
    /// applier's back: only for tests of the kernel's own behaviour.
    pub fn update_control(&mut self, update: impl FnOnce(&mut Control)) {
        let mut control: Array<MapData, Control> =
            bpf::open_map(self.pin_dir(), CONTROL_MAP).unwrap_or_else(|e| panic!("{e:#}"));
        let mut value = control
            .get(&0, 0)
            .unwrap_or_else(|e| panic!("reading CONTROL: {e}"));
        update(&mut value);
        control
            .set(0, value, 0)
            .unwrap_or_else(|e| panic!("writing CONTROL: {e}"));
    }

    /// The counters of service `name`, summed over CPUs.
    pub fn service_counters(&self, name: &str) -> ServiceCounters {
        let id = self.service_id(name);
        (0..PORT_PROTOCOLS)
            .flat_map(|proto_idx| {
                self.counters
                    .get(&counter_index(id, proto_idx), 0)
                    .unwrap_or_else(|e| panic!("reading the counters of `{name}`: {e}"))
                    .iter()
                    .copied()
                    .collect::<Vec<_>>()
            })
            .fold(ServiceCounters::default(), |mut sum, c| {
                sum.passed += c.passed;
                sum.passed_bytes += c.passed_bytes;
                sum.dropped += c.dropped;
                sum.dropped_bytes += c.dropped_bytes;
                sum.would_drop += c.would_drop;
                sum
            })
    }
}

/// The `SOURCES` key of a source for a service and kind.
pub fn source_key(service: u32, kind: u8, addr: IpAddr) -> SourceKey {
    let (family, bytes) = match addr {
        IpAddr::V4(a) => {
            let mut bytes = [0; 16];
            bytes[..4].copy_from_slice(&a.octets());
            (FAMILY_V4, bytes)
        }
        IpAddr::V6(a) => (FAMILY_V6, a.octets()),
    };
    SourceKey {
        service: service as u16,
        kind,
        family,
        addr: bytes,
    }
}
