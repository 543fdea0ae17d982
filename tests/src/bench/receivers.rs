//! The receivers stage 3 compares, other than our filter: the bare
//! XDP_DROP floor, xdp-filter, an nftables netdev-ingress set and an
//! iptables raw-table rule over an ipset. Each is set up once, switched on
//! and off per flood, and removed on drop.

use std::{path::Path, time::Duration};

use anyhow::{anyhow, bail, Context as _};
use aya::programs::{Xdp, XdpMode};
use ipnet::Ipv4Net;

use super::{e2e::Topology, sys};

/// The bare XDP_DROP program, for test runs and attachment.
pub struct Floor {
    ebpf: aya::Ebpf,
    link: Option<aya::programs::xdp::XdpLinkId>,
}

impl Floor {
    /// # Errors
    ///
    /// When the kernel refuses the program.
    pub fn load() -> anyhow::Result<Self> {
        let mut ebpf =
            aya::Ebpf::load(xdp_allowlist::DROP_OBJECT).context("cannot load the floor object")?;
        let program: &mut Xdp = ebpf
            .program_mut("xdp_drop")
            .ok_or_else(|| anyhow!("`xdp_drop` missing from the floor object"))?
            .try_into()?;
        program.load()?;
        Ok(Self { ebpf, link: None })
    }

    /// # Errors
    ///
    /// When the object has no floor program.
    pub fn program(&self) -> anyhow::Result<&Xdp> {
        let program = self
            .ebpf
            .program("xdp_drop")
            .ok_or_else(|| anyhow!("`xdp_drop` missing from the floor object"))?;
        Ok(program.try_into()?)
    }

    pub fn attach(&mut self, iface: &str) -> anyhow::Result<()> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut("xdp_drop")
            .ok_or_else(|| anyhow!("`xdp_drop` missing"))?
            .try_into()?;
        // The previous receiver's link may still be on its way out.
        for _ in 0..20 {
            match program.attach(iface, XdpMode::Driver) {
                Ok(link) => {
                    self.link = Some(link);
                    return Ok(());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(25)),
            }
        }
        self.link = Some(program.attach(iface, XdpMode::Driver)?);
        Ok(())
    }

    pub fn detach(&mut self) -> anyhow::Result<()> {
        if let Some(link) = self.link.take() {
            let program: &mut Xdp = self
                .ebpf
                .program_mut("xdp_drop")
                .ok_or_else(|| anyhow!("`xdp_drop` missing"))?
                .try_into()?;
            program.detach(link)?;
        }
        Ok(())
    }
}

/// xdp-filter loaded on the receiving end, denying `sources`; unloaded on drop.
pub struct XdpFilter {
    ns: String,
    iface: String,
}

impl XdpFilter {
    /// # Errors
    ///
    /// When xdp-filter fails.
    pub fn load(topo: &Topology, sources: &[String]) -> anyhow::Result<Self> {
        // Only the IP matchers: xdp-filter's cheapest variant that can drop
        // by source address.
        sys::run_in(
            &topo.rcv_ns,
            "xdp-filter",
            &["load", "-m", "native", "-f", "ipv4,ipv6", &topo.rcv_if],
        )?;
        let loaded = Self {
            ns: topo.rcv_ns.clone(),
            iface: topo.rcv_if.clone(),
        };
        for source in sources {
            sys::run_in(&topo.rcv_ns, "xdp-filter", &["ip", source, "-m", "src"])?;
        }
        Ok(loaded)
    }

    /// Id of the program attached to the interface.
    ///
    /// # Errors
    ///
    /// When `ip` shows no XDP program there.
    pub fn program_id(&self) -> anyhow::Result<u32> {
        let out = sys::run(
            "ip",
            &["-n", &self.ns, "-j", "link", "show", "dev", &self.iface],
        )?;
        let value: serde_json::Value =
            serde_json::from_str(&out).context("`ip -j` printed no JSON")?;
        value[0]["xdp"]["prog"]["id"]
            .as_u64()
            .map(|id| id as u32)
            .ok_or_else(|| anyhow!("no XDP program on {} after `xdp-filter load`", self.iface))
    }
}

impl Drop for XdpFilter {
    fn drop(&mut self) {
        if let Err(err) = sys::run_in(&self.ns, "xdp-filter", &["unload", &self.iface]) {
            eprintln!("cannot unload xdp-filter from {}: {err:#}", self.iface);
        }
    }
}

/// An nftables netdev-ingress table whose chain drops sources outside a set.
pub struct Nft {
    ns: String,
    iface: String,
    table: String,
}

impl Nft {
    pub fn create(topo: &Topology, prefixes: &[Ipv4Net], scratch: &Path) -> anyhow::Result<Self> {
        let table = "xab_bench".to_owned();
        let mut script = format!(
            "add table netdev {table}\nadd set netdev {table} allow {{ type ipv4_addr; flags interval; auto-merge; }}\n"
        );
        for chunk in prefixes.chunks(10_000) {
            let list: Vec<String> = chunk.iter().map(ToString::to_string).collect();
            script.push_str(&format!(
                "add element netdev {table} allow {{ {} }}\n",
                list.join(", ")
            ));
        }
        let file = scratch.join("nft.rules");
        std::fs::write(&file, script)
            .with_context(|| format!("cannot write {}", file.display()))?;
        sys::run_in(&topo.rcv_ns, "nft", &["-f", &file.to_string_lossy()])?;
        Ok(Self {
            ns: topo.rcv_ns.clone(),
            iface: topo.rcv_if.clone(),
            table,
        })
    }

    pub fn activate(&self) -> anyhow::Result<()> {
        let chain = format!(
            "add chain netdev {} ingress {{ type filter hook ingress device {} priority 0; }}\nadd rule netdev {} ingress tcp dport 8443 ip saddr != @allow counter drop\n",
            self.table, self.iface, self.table
        );
        let mut child = std::process::Command::new("nsenter")
            .args([
                &format!("--net=/var/run/netns/{}", self.ns),
                "nft",
                "-f",
                "-",
            ])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .context("cannot run nft")?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write as _;
            stdin.write_all(chain.as_bytes())?;
        }
        if !child.wait()?.success() {
            bail!("nft refused the ingress chain");
        }
        Ok(())
    }

    pub fn dropped(&self) -> anyhow::Result<u64> {
        let out = sys::run_in(
            &self.ns,
            "nft",
            &["list", "chain", "netdev", &self.table, "ingress"],
        )?;
        parse_after(&out, "packets ")
    }

    pub fn deactivate(&self) -> anyhow::Result<()> {
        sys::run_in(
            &self.ns,
            "nft",
            &["delete", "chain", "netdev", &self.table, "ingress"],
        )?;
        Ok(())
    }
}

impl Drop for Nft {
    fn drop(&mut self) {
        let _ = sys::run_in(&self.ns, "nft", &["delete", "table", "netdev", &self.table]);
    }
}

/// An ipset `hash:net` and an iptables raw-table rule that drops sources
/// outside it.
pub struct Ipset {
    ns: String,
    set: String,
    rule: Vec<String>,
    pub iptables: &'static str,
}

impl Ipset {
    pub fn create(topo: &Topology, prefixes: &[Ipv4Net], scratch: &Path) -> anyhow::Result<Self> {
        let set = "xab-allow".to_owned();
        let mut script =
            format!("create {set} hash:net family inet hashsize 65536 maxelem 4194304\n");
        for net in prefixes {
            script.push_str(&format!("add {set} {net}\n"));
        }
        let file = scratch.join("ipset.rules");
        std::fs::write(&file, script)
            .with_context(|| format!("cannot write {}", file.display()))?;
        sys::run_in(
            &topo.rcv_ns,
            "ipset",
            &["restore", "-file", &file.to_string_lossy()],
        )?;
        #[rustfmt::skip]
        let rule: Vec<String> = ["PREROUTING", "-i", &topo.rcv_if, "-p", "tcp", "--dport", "8443",
            "-m", "set", "!", "--match-set", &set, "src", "-j", "DROP"]
            .iter().map(|s| s.to_string()).collect();
        let mut ipset = Self {
            ns: topo.rcv_ns.clone(),
            set,
            rule,
            iptables: "iptables",
        };
        // iptables-nft needs the xt `set` match through nft_compat; fall
        // back to the legacy backend where that is missing.
        if ipset.activate().is_err() {
            ipset.iptables = "iptables-legacy";
            ipset.activate()?;
        }
        ipset.deactivate()?;
        Ok(ipset)
    }

    fn iptables(&self, action: &str) -> anyhow::Result<String> {
        let mut args = vec!["-t", "raw", action];
        args.extend(self.rule.iter().map(String::as_str));
        sys::run_in(&self.ns, self.iptables, &args)
    }

    pub fn activate(&self) -> anyhow::Result<()> {
        self.iptables("-A").map(drop)
    }

    pub fn deactivate(&self) -> anyhow::Result<()> {
        self.iptables("-D").map(drop)
    }

    pub fn dropped(&self) -> anyhow::Result<u64> {
        let out = sys::run_in(
            &self.ns,
            self.iptables,
            &["-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n"],
        )?;
        // Header, column names, then our rule; its first column is packets.
        out.lines()
            .find(|line| line.contains("DROP"))
            .and_then(|line| line.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("no DROP rule in the raw table: {out}"))
    }
}

impl Drop for Ipset {
    fn drop(&mut self) {
        let _ = self.deactivate();
        let _ = sys::run_in(&self.ns, "ipset", &["destroy", &self.set]);
    }
}

fn parse_after(text: &str, marker: &str) -> anyhow::Result<u64> {
    text.split(marker)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no `{marker}` counter in: {text}"))
}
