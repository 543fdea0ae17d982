//! The command line, defined once; `--help` is the manual.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::{bpf::DEFAULT_PIN_DIR, config::DEFAULT_CONFIG_PATH};

/// An IP allowlist for protected ports, enforced by XDP at the network driver.
///
/// Packets to a protected port (`tcp/8443`) pass only when their source is in
/// that service's allowlist; packets to any other port are not touched. The
/// filter lives in the kernel and keeps enforcing when the daemon stops:
/// only `detach` removes it.
///
/// Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error
/// (nothing was changed).
#[derive(Debug, Parser)]
#[command(name = "xdp-allowlist", version, propagate_version = true)]
pub struct Cli {
    /// Configuration file.
    #[arg(long, global = true, env = "XDP_ALLOWLIST_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,

    /// Where the program, maps and links are pinned (one directory per
    /// instance, so several never collide).
    #[arg(long, global = true, env = "XDP_ALLOWLIST_PIN_DIR", default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground.
    ///
    /// Loads the filter (or adopts the one already pinned), fills the maps
    /// from the configuration, attaches to each interface (native XDP where
    /// the driver has it, generic otherwise; the log says which), then applies
    /// every change to the file as a new generation without a restart: on
    /// file change, on SIGHUP, and on a two-second poll. A bad edit is logged
    /// with its reason and the last good allowlist stays in force.
    ///
    /// SIGINT and SIGTERM stop the daemon but leave the filter attached and
    /// enforcing the last applied generation; `detach` removes it.
    ///
    /// Example: xdp-allowlist run --iface eth0
    Run(RunArgs),

    /// Validate the configuration file; exit 0 when it is good, 2 with every
    /// problem (file, line, reason) when it is not. Changes nothing.
    Check,

    /// Show, add or remove allowed CIDRs (edits the configuration file).
    #[command(subcommand)]
    Allow(AllowCommand),

    /// Show where the filter is attached and what it counted, from the
    /// pinned maps (works with or without the daemon).
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },

    /// Remove the filter: from one interface with --iface, else from every
    /// interface, together with its maps and pins. A running daemon should be
    /// stopped first, or it goes on without effect.
    Detach {
        /// Only this interface (repeatable); the maps stay pinned.
        #[arg(long = "iface")]
        interfaces: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Attach to this interface instead of the configuration's `interfaces`
    /// (repeatable).
    #[arg(long = "iface")]
    pub interfaces: Vec<String>,

    /// Turn on the kernel program's debug log (costs tens of nanoseconds per
    /// logged packet; for debugging only).
    #[arg(long)]
    pub kernel_log: bool,
}

#[derive(Debug, Subcommand)]
pub enum AllowCommand {
    /// Add a CIDR to a service's allowlist.
    ///
    /// The file is locked, validated as a whole, written to a temporary file
    /// and renamed into place; comments and layout are kept. A running daemon
    /// applies the change within a second.
    ///
    /// Example: xdp-allowlist allow add admin 198.51.100.7/32 --note "alice, VPN"
    Add {
        service: String,
        cidr: String,
        /// Why this entry exists; kept next to it in the file.
        #[arg(long)]
        note: Option<String>,
        /// Apply even if this allows a huge range (shorter than /8 or /16).
        #[arg(long)]
        force: bool,
    },
    /// Remove a CIDR from a service's allowlist.
    ///
    /// Example: xdp-allowlist allow remove admin 198.51.100.7/32
    Remove {
        service: String,
        cidr: String,
        /// Apply even if it locks out the SSH session this runs in, or
        /// leaves an enforced service with no allowed source.
        #[arg(long)]
        force: bool,
    },
    /// List allowed CIDRs, of one service or all.
    List {
        service: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}
