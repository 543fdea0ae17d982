//! The system side of the benchmark: running tools, entering network
//! namespaces, and the few BPF syscalls aya cannot make for us (loading a
//! two-instruction program and driving the live-frame generator).

use std::{
    fs::File,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    process::Command,
};

use anyhow::{bail, Context as _};

/// Runs `program args…` and returns its standard output.
///
/// # Errors
///
/// When the program cannot start or exits with a failure.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run `{program}`"))?;
    if !output.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs a command inside the network namespace `ns`, keeping this process's
/// mount namespace (and so its bpffs): `ip netns exec` would hide bpffs.
///
/// # Errors
///
/// As [`run`].
pub fn run_in(ns: &str, program: &str, args: &[&str]) -> anyhow::Result<String> {
    let net = format!("--net=/var/run/netns/{ns}");
    let mut all = vec![net.as_str(), program];
    all.extend_from_slice(args);
    run("nsenter", &all)
}

/// Installs the Debian packages whose commands are missing, saying so.
///
/// # Errors
///
/// When apt-get fails.
pub fn ensure_packages(needed: &[(&str, &str)]) -> anyhow::Result<Vec<String>> {
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(command, _)| run("which", &[command]).is_err())
        .map(|&(_, package)| package)
        .collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    eprintln!(
        "installing missing packages with apt-get: {}",
        missing.join(" ")
    );
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend_from_slice(&missing);
    let status = Command::new("apt-get")
        .args(&args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("cannot run apt-get")?;
    if !status.success() {
        // The package lists may be missing on a fresh machine.
        run("apt-get", &["update"])?;
        run("apt-get", &args)?;
    }
    Ok(missing.into_iter().map(str::to_owned).collect())
}

/// The calling thread, moved into a network namespace until dropped.
pub struct NetnsGuard {
    home: File,
}

impl NetnsGuard {
    /// # Errors
    ///
    /// When the namespace does not exist or `setns` fails.
    pub fn enter(ns: &str) -> anyhow::Result<Self> {
        let home =
            File::open("/proc/thread-self/ns/net").context("cannot open this thread's netns")?;
        let target = File::open(format!("/var/run/netns/{ns}"))
            .with_context(|| format!("network namespace `{ns}` does not exist"))?;
        nix::sched::setns(target.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("cannot enter network namespace `{ns}`"))?;
        Ok(Self { home })
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(err) = nix::sched::setns(self.home.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        {
            // Staying in a namespace that is about to be deleted would make
            // every later step fail confusingly: stop here instead.
            eprintln!("cannot return to the original network namespace: {err}");
            std::process::exit(1);
        }
    }
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

/// An XDP verdict, as a return value.
pub const XDP_PASS: i32 = 2;
pub const XDP_TX: i32 = 3;

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

/// `struct xdp_md` as `ctx_in` of a live-frame run.
#[repr(C)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialised `#[repr(C)]` prefix of `union
    // bpf_attr` for `cmd` and its size is passed along; the kernel reads at
    // most that many bytes and writes only fields of that command.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// One eBPF instruction.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    u64::from(code)
        | (u64::from(dst & 0xf) << 8)
        | (u64::from(src & 0xf) << 12)
        | (u64::from(off as u16) << 16)
        | (u64::from(imm as u32) << 32)
}

/// A tiny XDP program loaded from raw instructions; closed on drop.
pub struct RawProgram {
    fd: OwnedFd,
}

impl RawProgram {
    /// A program that returns `verdict` and touches nothing.
    ///
    /// # Errors
    ///
    /// When the kernel refuses it.
    pub fn constant(verdict: i32) -> anyhow::Result<Self> {
        Self::load(
            &[insn(0xb7, 0, 0, 0, verdict), insn(0x95, 0, 0, 0, 0)],
            "xab_const",
        )
    }

    /// The live-frame generator that writes a random value into the four
    /// bytes at `offset` of every frame (a random source address), then
    /// transmits it (XDP_TX).
    ///
    /// # Errors
    ///
    /// When the kernel refuses it.
    pub fn random_at(offset: i16) -> anyhow::Result<Self> {
        let end = i32::from(offset) + 4;
        let program = [
            insn(0xbf, 6, 1, 0, 0),      // r6 = ctx
            insn(0x85, 0, 0, 0, 7),      // r0 = bpf_get_prandom_u32()
            insn(0x61, 2, 6, 0, 0),      // r2 = ctx->data
            insn(0x61, 3, 6, 4, 0),      // r3 = ctx->data_end
            insn(0xbf, 4, 2, 0, 0),      // r4 = r2
            insn(0x07, 4, 0, 0, end),    // r4 += end
            insn(0x2d, 4, 3, 1, 0),      // if r4 > r3 skip the store
            insn(0x63, 2, 0, offset, 0), // *(u32 *)(r2 + offset) = r0
            insn(0xb7, 0, 0, 0, XDP_TX), // r0 = XDP_TX
            insn(0x95, 0, 0, 0, 0),      // exit
        ];
        Self::load(&program, "xab_random")
    }

    fn load(program: &[u64], name: &str) -> anyhow::Result<Self> {
        let license = b"GPL\0";
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_XDP,
            insn_cnt: program.len() as u32,
            insns: program.as_ptr() as u64,
            license: license.as_ptr() as u64,
            expected_attach_type: BPF_XDP,
            ..Default::default()
        };
        let len = name.len().min(15);
        attr.prog_name[..len].copy_from_slice(&name.as_bytes()[..len]);
        let fd = bpf(BPF_PROG_LOAD, &mut attr)
            .with_context(|| format!("the kernel refused `{name}`"))?;
        // SAFETY: the kernel just returned this descriptor and nobody else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(Self { fd })
    }

    /// Attaches the program to `ifindex` (in the calling thread's network
    /// namespace) with a BPF link; dropping the link detaches it.
    ///
    /// # Errors
    ///
    /// When the kernel refuses the attachment.
    pub fn attach(&self, ifindex: u32) -> anyhow::Result<OwnedFd> {
        let mut attr = LinkCreateAttr {
            prog_fd: self.fd.as_raw_fd() as u32,
            target_ifindex: ifindex,
            attach_type: BPF_XDP,
            flags: 0,
        };
        let fd = bpf(BPF_LINK_CREATE, &mut attr)
            .with_context(|| format!("cannot attach to ifindex {ifindex}"))?;
        // SAFETY: the kernel just returned this descriptor and nobody else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// Sends `frames` copies of `frame` out of `ifindex` (live frames). The
    /// calling thread must be in the interface's network namespace.
    ///
    /// # Errors
    ///
    /// When the kernel refuses the run.
    pub fn send_live(
        &self,
        frame: &[u8],
        ifindex: u32,
        frames: u32,
        batch: u32,
    ) -> anyhow::Result<()> {
        let ctx = XdpMd {
            data: 0,
            data_end: frame.len() as u32,
            data_meta: 0,
            ingress_ifindex: ifindex,
            rx_queue_index: 0,
            egress_ifindex: 0,
        };
        let mut attr = TestRunAttr {
            prog_fd: self.fd.as_raw_fd() as u32,
            data_size_in: frame.len() as u32,
            data_in: frame.as_ptr() as u64,
            repeat: frames,
            ctx_size_in: std::mem::size_of::<XdpMd>() as u32,
            ctx_in: &ctx as *const XdpMd as u64,
            flags: BPF_F_TEST_XDP_LIVE_FRAMES,
            batch_size: batch,
            ..Default::default()
        };
        bpf(BPF_PROG_TEST_RUN, &mut attr).context("the live-frame run failed")?;
        Ok(())
    }
}

/// Index of `name` in the calling thread's network namespace.
///
/// # Errors
///
/// When there is no such interface.
pub fn ifindex(name: &str) -> anyhow::Result<u32> {
    nix::net::if_::if_nametoindex(name).with_context(|| format!("no interface `{name}`"))
}

/// The per-packet cost `bpftool prog run` reports for program `id`.
///
/// # Errors
///
/// When bpftool fails or prints something unexpected.
pub fn bpftool_run(id: u32, data_file: &str, repeat: u32) -> anyhow::Result<(u32, f64)> {
    let id = id.to_string();
    let repeat = repeat.to_string();
    let out = run(
        "bpftool",
        &[
            "prog", "run", "id", &id, "data_in", data_file, "repeat", &repeat,
        ],
    )?;
    // "Return value: 1, duration (average): 55ns"
    let verdict = out
        .split("Return value:")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|v| v.trim().parse::<u32>().ok());
    let ns = out
        .split("duration (average):")
        .nth(1)
        .and_then(|rest| {
            rest.trim()
                .strip_suffix("ns")
                .or_else(|| rest.trim().split("ns").next())
        })
        .and_then(|v| v.trim().parse::<f64>().ok());
    match (verdict, ns) {
        (Some(v), Some(ns)) => Ok((v, ns)),
        _ => bail!("unexpected `bpftool prog run` output: {out}"),
    }
}
