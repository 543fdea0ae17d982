//! The pinned kernel objects: loading the program, attaching it, and opening
//! its maps from the pin directory, from the daemon or any other process.
//!
//! Layout of a pin directory:
//!
//! ```text
//! PIN_DIR/maps/NAME           every map, by the names in xdp-allowlist-common
//! PIN_DIR/links/IFACE:MODE:INDEX  one XDP link per interface (MODE: native
//!                                  or skb; INDEX: the interface's index then)
//! ```
//!
//! bpffs refuses names with a dot, which interface names may hold (`eth0.100`),
//! so `%` and `.` in interface names are written `%25` and `%2e`; `:` never
//! appears in an interface name.
//!
//! The links hold the program: it stays attached and enforcing with no
//! process running, until `detach` removes the pins.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context as _};
use aya::{
    maps::{
        lpm_trie::Key, Array, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuValues, RingBuf,
    },
    programs::{links::FdLink, links::PinnedLink, Xdp, XdpMode},
    EbpfLoader,
};
use ipnet::{Ipv4Net, Ipv6Net};
use xdp_allowlist_common::{
    counter_index, key_tag, port_index, Control, Meta, RuleValue, ServiceCounters, ServiceName,
    ServicePolicy, V4KeyData, V6KeyData, CONTROL_MAP, COUNTERS_MAP, EVENTS_MAP, LAYOUT_VERSION,
    MAX_SERVICES, META_MAGIC, META_MAP, PORTS_MAP, PORTS_PER_SLOT, PORT_PROTOCOLS, PROGRAM_NAME,
    SERVICES_MAP, SERVICE_NAMES_MAP, SLOTS, TAG_BITS, V4_MAP, V6_MAP,
};

use crate::{apply::PolicyMaps, config::XdpModeSetting, policy::SlotState};

/// Default pin directory.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/xdp-allowlist";

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

pub fn maps_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("maps")
}

pub fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

/// Mounts bpffs on the bpffs root above `pin_dir` when nothing is mounted
/// there, so that pins outlive the daemon.
///
/// # Errors
///
/// When the mount fails or the directory cannot be created.
pub fn ensure_bpffs(pin_dir: &Path) -> anyhow::Result<()> {
    let root = Path::new("/sys/fs/bpf");
    if pin_dir.starts_with(root) && !is_bpffs(root) {
        fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
        nix::mount::mount(
            Some("bpf"),
            root,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .with_context(|| {
            format!(
                "bpffs is not mounted at {} and mounting it failed",
                root.display()
            )
        })?;
        tracing::info!(path = %root.display(), "mounted bpffs");
    }
    if !is_bpffs(pin_dir.parent().unwrap_or(pin_dir)) && !is_bpffs(pin_dir) {
        bail!(
            "{} is not on a bpffs mount; choose a --pin-dir under a bpffs mount such as /sys/fs/bpf",
            pin_dir.display()
        );
    }
    fs::create_dir_all(maps_dir(pin_dir))
        .with_context(|| format!("cannot create {}", maps_dir(pin_dir).display()))?;
    fs::create_dir_all(links_dir(pin_dir))
        .with_context(|| format!("cannot create {}", links_dir(pin_dir).display()))?;
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    match nix::sys::statfs::statfs(path) {
        Ok(stat) => stat.filesystem_type().0 == BPF_FS_MAGIC,
        Err(_) => false,
    }
}

/// Checks the layout record of pinned maps, if there are any.
///
/// Returns the capacity the pinned maps were created with, or `None` when
/// nothing is pinned yet.
///
/// # Errors
///
/// When the pinned maps come from another layout version.
pub fn check_pinned_layout(pin_dir: &Path) -> anyhow::Result<Option<u32>> {
    let path = maps_dir(pin_dir).join(META_MAP);
    if !path.exists() {
        return Ok(None);
    }
    let meta: Array<MapData, Meta> = open_map(pin_dir, META_MAP)?;
    let meta = meta
        .get(&0, 0)
        .context("cannot read the pinned layout record")?;
    if meta.magic == 0 {
        // Created but never stamped (a daemon died while loading): fresh.
        return Ok(None);
    }
    if meta.magic != META_MAGIC || meta.layout != LAYOUT_VERSION {
        bail!(
            "the maps pinned in {} have layout {} but this xdp-allowlist uses layout {LAYOUT_VERSION}; \
             they come from another version and cannot be adopted. Run `xdp-allowlist detach --pin-dir {}` \
             (this removes the filter until the daemon starts again) and start the daemon again",
            pin_dir.display(),
            meta.layout,
            pin_dir.display()
        );
    }
    Ok(Some(meta.capacity))
}

/// Opens one pinned map as a typed map.
///
/// # Errors
///
/// When the pin is missing or the map's layout does not match `T`.
pub fn open_map<T>(pin_dir: &Path, name: &str) -> anyhow::Result<T>
where
    T: TryFrom<Map, Error = MapError>,
{
    let path = maps_dir(pin_dir).join(name);
    let data = MapData::from_pin(&path).with_context(|| {
        format!(
            "cannot open the pinned map {}; is the filter loaded (`xdp-allowlist run`) with this --pin-dir?",
            path.display()
        )
    })?;
    let map = Map::from_map_data(data)
        .with_context(|| format!("unexpected map type at {}", path.display()))?;
    T::try_from(map).map_err(|e| {
        anyhow!(
            "the map at {} does not have the expected layout: {e}",
            path.display()
        )
    })
}

/// What `load_and_pin` did.
pub struct Loaded {
    /// The program, loaded but only attached where no link was pinned yet.
    pub program: aya::Ebpf,
    /// True when the maps were already pinned (a restart), false when fresh.
    pub adopted_maps: bool,
}

/// Loads the kernel program, reusing pinned maps or creating and pinning new
/// ones.
///
/// # Errors
///
/// When pinned maps have another layout, or the kernel refuses the program.
pub fn load_and_pin(pin_dir: &Path, capacity: u32, kernel_log: bool) -> anyhow::Result<Loaded> {
    load_and_pin_object(
        pin_dir,
        capacity,
        kernel_log,
        crate::EBPF_OBJECT,
        PROGRAM_NAME,
    )
}

/// As [`load_and_pin`] for another build of the filter: `object` must define
/// the same maps and an XDP program called `program_name`. Only the
/// benchmark uses it, to load the naive-parser build ([`crate::NAIVE_OBJECT`])
/// with exactly the maps and policy code of the real one.
///
/// # Errors
///
/// As [`load_and_pin`].
pub fn load_and_pin_object(
    pin_dir: &Path,
    capacity: u32,
    kernel_log: bool,
    object: &[u8],
    program_name: &str,
) -> anyhow::Result<Loaded> {
    let pinned_capacity = check_pinned_layout(pin_dir)?;
    let capacity = match pinned_capacity {
        Some(pinned) if pinned != capacity => {
            tracing::warn!(
                pinned,
                configured = capacity,
                "the pinned maps were created with another capacity; it is kept until `detach` and a restart"
            );
            pinned
        }
        Some(pinned) => pinned,
        None => capacity,
    };
    // aya-log's level is patched into the object: 0 turns every log site
    // into a single untaken branch.
    let log_level: u8 = if kernel_log {
        aya_log::Level::Debug as u8
    } else {
        0
    };
    let maps_dir = maps_dir(pin_dir);
    let mut program = EbpfLoader::new()
        .default_map_pin_directory(&maps_dir)
        .map_max_entries(V4_MAP, SLOTS * capacity)
        .map_max_entries(V6_MAP, SLOTS * capacity)
        .override_global(aya_log::LEVEL, &log_level, true)
        .load(object)
        .context("loading the kernel program failed")?;

    let xdp: &mut Xdp = program
        .program_mut(program_name)
        .ok_or_else(|| anyhow!("program `{program_name}` missing from the object"))?
        .try_into()?;
    xdp.load()
        .context("the kernel verifier refused the program")?;

    if pinned_capacity.is_none() {
        let mut meta: Array<MapData, Meta> = open_map(pin_dir, META_MAP)?;
        meta.set(
            0,
            Meta {
                magic: META_MAGIC,
                layout: LAYOUT_VERSION,
                capacity,
            },
            0,
        )?;
    }
    Ok(Loaded {
        program,
        adopted_maps: pinned_capacity.is_some(),
    })
}

/// How the filter is attached to one interface.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Attachment {
    pub interface: String,
    /// `native` (driver) or `skb` (generic).
    pub mode: String,
    /// Index of the interface when the filter was attached; an interface
    /// deleted and created again has another and no filter.
    pub ifindex: u32,
    pub pin: PathBuf,
}

/// The attachments recorded in the pin directory.
pub fn attachments(pin_dir: &Path) -> Vec<Attachment> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(links_dir(pin_dir)) else {
        return found;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let mut parts = name.split(':');
        if let (Some(interface), Some(mode), Some(index)) =
            (parts.next(), parts.next(), parts.next())
        {
            found.push(Attachment {
                interface: decode_ifname(interface),
                mode: mode.to_owned(),
                ifindex: index.parse().unwrap_or(0),
                pin: entry.path(),
            });
        }
    }
    found.sort_by(|a, b| a.interface.cmp(&b.interface));
    found
}

/// Attaches the program to `interface` unless a pinned link already holds
/// it there, and pins the new link.
///
/// # Errors
///
/// When the interface does not exist or the kernel refuses every mode tried.
pub fn attach(
    program: &mut aya::Ebpf,
    pin_dir: &Path,
    interface: &str,
    setting: XdpModeSetting,
) -> anyhow::Result<Attachment> {
    if let Some(existing) = attachments(pin_dir)
        .into_iter()
        .find(|a| a.interface == interface)
    {
        // A link pinned by an earlier daemon: verify it is still alive, then
        // keep it. Re-attaching would open a gap.
        if PinnedLink::from_pin(&existing.pin).is_ok()
            && ifindex(interface) == Some(existing.ifindex)
        {
            return Ok(existing);
        }
        let _ = fs::remove_file(&existing.pin);
    }
    let xdp: &mut Xdp = program
        .program_mut(PROGRAM_NAME)
        .ok_or_else(|| anyhow!("program `{PROGRAM_NAME}` missing from the object"))?
        .try_into()?;
    let attempts: &[(XdpMode, &str)] = match setting {
        XdpModeSetting::Auto => &[(XdpMode::Driver, "native"), (XdpMode::Skb, "skb")],
        XdpModeSetting::Native => &[(XdpMode::Driver, "native")],
        XdpModeSetting::Skb => &[(XdpMode::Skb, "skb")],
    };
    let mut last_error = None;
    for &(mode, mode_name) in attempts {
        match xdp.attach(interface, mode) {
            Ok(link_id) => {
                let link = xdp.take_link(link_id)?;
                let fd_link: FdLink = link
                    .try_into()
                    .map_err(|e| anyhow!("the kernel attached {interface} without a BPF link, which cannot be pinned: {e}"))?;
                let index = ifindex(interface).unwrap_or(0);
                let pin = links_dir(pin_dir)
                    .join(format!("{}:{mode_name}:{index}", encode_ifname(interface)));
                fd_link
                    .pin(&pin)
                    .with_context(|| format!("cannot pin the link at {}", pin.display()))?;
                return Ok(Attachment {
                    interface: interface.to_owned(),
                    mode: mode_name.to_owned(),
                    ifindex: index,
                    pin,
                });
            }
            Err(err) => {
                tracing::debug!(interface, mode = mode_name, error = %err, "attach failed");
                last_error = Some((mode_name, err));
            }
        }
    }
    let (mode_name, err) = last_error.ok_or_else(|| anyhow!("no XDP mode to try"))?;
    let hint = match mtu(interface) {
        Some(mtu) if mtu > SINGLE_BUFFER_MTU => format!(
            "; its MTU is {mtu}: frames that large arrive in several buffers, and this filter does not declare multi-buffer (XDP frags) support, so the driver refuses it. Lower the MTU to {SINGLE_BUFFER_MTU} or less, or set xdp_mode = \"skb\""
        ),
        _ => "; check that the interface exists (`ip link`) and no other XDP program holds it".to_owned(),
    };
    Err(anyhow::Error::new(err).context(format!(
        "cannot attach to `{interface}` in {mode_name} mode{hint}"
    )))
}

/// The largest MTU whose frames fit one buffer for native XDP on common
/// drivers with 4 KiB pages (page minus headroom and shared info).
pub const SINGLE_BUFFER_MTU: u32 = 3498;

/// The interface's MTU in the current network namespace (SIOCGIFMTU; sysfs
/// may belong to another namespace, as under `nsenter --net`).
pub fn mtu(interface: &str) -> Option<u32> {
    use std::os::fd::AsRawFd as _;

    let socket = std::net::UdpSocket::bind("0.0.0.0:0")
        .or_else(|_| std::net::UdpSocket::bind("[::]:0"))
        .ok()?;
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = interface.as_bytes();
    if name.len() >= request.ifr_name.len() {
        return None;
    }
    for (dst, src) in request.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFMTU reads the NUL-terminated name from `request` and
    // writes the MTU into its union; the socket fd is open for the call.
    let result = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFMTU, &mut request) };
    if result != 0 {
        return None;
    }
    // SAFETY: after a successful SIOCGIFMTU the union holds `ifru_mtu`.
    let mtu = unsafe { request.ifr_ifru.ifru_mtu };
    u32::try_from(mtu).ok()
}

fn encode_ifname(name: &str) -> String {
    name.replace('%', "%25").replace('.', "%2e")
}

fn decode_ifname(name: &str) -> String {
    name.replace("%2e", ".").replace("%25", "%")
}

/// The interface's index in this network namespace, if it exists.
pub fn ifindex(interface: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(interface).ok()
}

/// Removes the pinned link of `interface`, which detaches the program there.
pub fn detach(pin_dir: &Path, interface: &str) -> anyhow::Result<bool> {
    let mut removed = false;
    for attachment in attachments(pin_dir) {
        if attachment.interface == interface {
            fs::remove_file(&attachment.pin)
                .with_context(|| format!("cannot remove {}", attachment.pin.display()))?;
            removed = true;
        }
    }
    Ok(removed)
}

/// Removes every pin (maps and links) and the pin directory itself.
pub fn remove_all_pins(pin_dir: &Path) -> anyhow::Result<()> {
    for dir in [links_dir(pin_dir), maps_dir(pin_dir)] {
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.flatten() {
                fs::remove_file(entry.path())
                    .with_context(|| format!("cannot remove {}", entry.path().display()))?;
            }
        }
        let _ = fs::remove_dir(&dir);
    }
    let _ = fs::remove_dir(pin_dir);
    Ok(())
}

/// The policy maps, opened from the pin directory.
pub struct BpfMaps {
    ports: Array<MapData, u32>,
    services: Array<MapData, ServicePolicy>,
    control: Array<MapData, Control>,
    v4: LpmTrie<MapData, V4KeyData, RuleValue>,
    v6: LpmTrie<MapData, V6KeyData, RuleValue>,
    names: Array<MapData, ServiceName>,
    counters: PerCpuArray<MapData, ServiceCounters>,
    sources: crate::sources::SourceTable,
}

impl BpfMaps {
    /// # Errors
    ///
    /// When a map is not pinned or has another layout.
    pub fn open(pin_dir: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            ports: open_map(pin_dir, PORTS_MAP)?,
            services: open_map(pin_dir, SERVICES_MAP)?,
            control: open_map(pin_dir, CONTROL_MAP)?,
            v4: open_map(pin_dir, V4_MAP)?,
            v6: open_map(pin_dir, V6_MAP)?,
            names: open_map(pin_dir, SERVICE_NAMES_MAP)?,
            counters: open_map(pin_dir, COUNTERS_MAP)?,
            sources: crate::sources::SourceTable::open(pin_dir)?,
        })
    }
}

fn v4_key(slot: u32, service: u32, net: Ipv4Net) -> Key<V4KeyData> {
    Key::new(
        TAG_BITS + u32::from(net.prefix_len()),
        V4KeyData {
            tag: key_tag(slot, service),
            addr: net.network().octets(),
        },
    )
}

fn v6_key(slot: u32, service: u32, net: Ipv6Net) -> Key<V6KeyData> {
    Key::new(
        TAG_BITS + u32::from(net.prefix_len()),
        V6KeyData {
            tag: key_tag(slot, service),
            addr: net.network().octets(),
        },
    )
}

/// Splits a trie tag back into (slot, service).
fn untag(tag: [u8; 4]) -> (u32, u32) {
    let value = u32::from_be_bytes(tag);
    (value >> 16, value & 0xffff)
}

impl PolicyMaps for BpfMaps {
    type Error = MapError;

    fn set_port(
        &mut self,
        slot: u32,
        proto_idx: u32,
        port: u16,
        service: u32,
    ) -> Result<(), MapError> {
        self.ports
            .set(port_index(slot, proto_idx, port), service, 0)
    }

    fn set_service_flags(&mut self, slot: u32, service: u32, flags: u32) -> Result<(), MapError> {
        self.services
            .set(slot * MAX_SERVICES + service, ServicePolicy { flags }, 0)
    }

    fn insert_v4(&mut self, slot: u32, service: u32, net: Ipv4Net) -> Result<(), MapError> {
        self.v4
            .insert(&v4_key(slot, service, net), RuleValue::default(), 0)
    }

    fn remove_v4(&mut self, slot: u32, service: u32, net: Ipv4Net) -> Result<(), MapError> {
        self.v4.remove(&v4_key(slot, service, net))
    }

    fn insert_v6(&mut self, slot: u32, service: u32, net: Ipv6Net) -> Result<(), MapError> {
        self.v6
            .insert(&v6_key(slot, service, net), RuleValue::default(), 0)
    }

    fn remove_v6(&mut self, slot: u32, service: u32, net: Ipv6Net) -> Result<(), MapError> {
        self.v6.remove(&v6_key(slot, service, net))
    }

    fn set_service_name(&mut self, service: u32, name: &str) -> Result<(), MapError> {
        let mut record = ServiceName::default();
        let bytes = name.as_bytes();
        let len = bytes.len().min(record.bytes.len());
        record.bytes[..len].copy_from_slice(&bytes[..len]);
        record.len = len as u32;
        self.names.set(service, record, 0)
    }

    fn reset_counters(&mut self, service: u32) -> Result<(), MapError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, io_error)| {
            MapError::SyscallError(aya::sys::SyscallError {
                call: "nr_cpus",
                io_error,
            })
        })?;
        for proto_idx in 0..PORT_PROTOCOLS {
            let zero = PerCpuValues::try_from(vec![ServiceCounters::default(); cpus])?;
            self.counters
                .set(counter_index(service, proto_idx), zero, 0)?;
        }
        Ok(())
    }

    fn forget_sources(&mut self, services: &BTreeSet<u32>) -> Result<(), MapError> {
        let cleared = self.sources.forget_services(services)?;
        if cleared > 0 {
            tracing::debug!(
                cleared,
                ?services,
                "cleared per-source entries of reused service ids"
            );
        }
        Ok(())
    }

    fn control(&self) -> Result<Control, MapError> {
        self.control.get(&0, 0)
    }

    fn set_control(&mut self, control: Control) -> Result<(), MapError> {
        self.control.set(0, control, 0)
    }

    fn read_slot(&self, slot: u32) -> Result<SlotState, MapError> {
        let mut state = SlotState::default();
        for proto_idx in 0..xdp_allowlist_common::PORT_PROTOCOLS {
            for port in 1..=u16::MAX {
                let service = self.ports.get(&port_index(slot, proto_idx, port), 0)?;
                if service != 0 {
                    state.ports.insert((proto_idx, port), service);
                }
            }
        }
        debug_assert_eq!(PORTS_PER_SLOT, 3 * 65536);
        for service in 0..MAX_SERVICES {
            let policy = self.services.get(&(slot * MAX_SERVICES + service), 0)?;
            if policy.flags != 0 {
                state.service_flags.insert(service, policy.flags);
            }
        }
        for key in self.v4.keys() {
            let key = key?;
            let data = key.data();
            let (key_slot, service) = untag(data.tag);
            if key_slot == slot {
                let len = key.prefix_len().saturating_sub(TAG_BITS) as u8;
                if let Ok(net) = Ipv4Net::new(Ipv4Addr::from(data.addr), len) {
                    state.v4.insert((service, net));
                }
            }
        }
        for key in self.v6.keys() {
            let key = key?;
            let data = key.data();
            let (key_slot, service) = untag(data.tag);
            if key_slot == slot {
                let len = key.prefix_len().saturating_sub(TAG_BITS) as u8;
                if let Ok(net) = Ipv6Net::new(data.addr.into(), len) {
                    state.v6.insert((service, net));
                }
            }
        }
        Ok(state)
    }

    fn service_names(&self) -> Result<BTreeMap<u32, String>, MapError> {
        read_service_names(&self.names)
    }
}

/// Service names by id from the names map.
///
/// # Errors
///
/// When the map cannot be read.
pub fn read_service_names(
    names: &Array<MapData, ServiceName>,
) -> Result<BTreeMap<u32, String>, MapError> {
    let mut found = BTreeMap::new();
    for id in 1..MAX_SERVICES {
        let record = names.get(&id, 0)?;
        if record.len > 0 {
            let len = (record.len as usize).min(record.bytes.len());
            found.insert(
                id,
                String::from_utf8_lossy(&record.bytes[..len]).into_owned(),
            );
        }
    }
    Ok(found)
}

/// The drop-event ring buffer, opened from its pin.
///
/// # Errors
///
/// When the map is not pinned.
pub fn open_events(pin_dir: &Path) -> anyhow::Result<RingBuf<MapData>> {
    open_map(pin_dir, EVENTS_MAP)
}
