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
///
/// `--version` also lists the kernel features found on this host.
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

    /// How the log on standard error is written: `text` for people (under
    /// systemd, where JOURNAL_STREAM is set, without timestamps or colours,
    /// since journald adds its own) or `json`, one object per line with the
    /// fields apart, for log collectors. XDP_ALLOWLIST_LOG sets the level
    /// (`info`, `debug` shows every source event).
    #[arg(
        long,
        global = true,
        value_enum,
        env = "XDP_ALLOWLIST_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,

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

    /// Show per-service totals and the sources refused most, from the
    /// pinned maps (works with or without the daemon).
    ///
    /// The kernel tracks every source per service and kind: `drop` (refused
    /// by an enforcing service), `would_drop` (refused by a service in
    /// monitor mode, then passed) and `access` (allowed TCP connection
    /// attempts and datagrams). Refusals are listed by packets, most first;
    /// access records are listed apart. For each: packets, bytes, first and
    /// last seen, and the protected ports touched (`udp/5353`). The map keeps
    /// the most recently seen sources (see Limitations in the README).
    ///
    /// Example: xdp-allowlist stats --since 10m --limit 50
    Stats(StatsArgs),

    /// A live view of the sources refused most, refreshed every --interval.
    ///
    /// Shows per-service totals by protocol, the event counters, and a table
    /// of refused sources with their total drops, current rate (packets per
    /// second since the previous refresh), ports, first and last seen, and
    /// a bar of their last rates. Keys: `s` cycles the sort (drops, rate,
    /// last seen), `q` or Esc quits. Reads the pinned maps; needs a terminal.
    ///
    /// Example: xdp-allowlist top --interval 2s
    Top(TopArgs),

    /// Put a candidate configuration in place, optionally on probation.
    ///
    /// CANDIDATE is validated and checked for lock-outs like an edit, then
    /// written over the configuration file; the daemon applies it within a
    /// second. With --confirm, the configuration it replaced is kept: unless
    /// `xdp-allowlist confirm` comes within the given time, the daemon puts it
    /// back and applies it (also after a daemon restart).
    ///
    /// Example: xdp-allowlist apply new.toml --confirm 60s
    Apply {
        /// The candidate configuration file.
        candidate: std::path::PathBuf,
        /// Roll back unless confirmed within this long (`60s`, `5m`).
        #[arg(long, value_parser = humantime::parse_duration)]
        confirm: Option<std::time::Duration>,
        /// Apply even if it locks out this SSH session or opens a service
        /// to a huge range.
        #[arg(long)]
        force: bool,
    },

    /// Keep the change made by `apply --confirm`, cancelling its rollback.
    Confirm,

    /// Explain the verdict for a packet from ADDRESS to PROTO/PORT: which
    /// service protects the port, which allowlist entry (with its note)
    /// admits the source, and the verdict. When the filter is loaded, the
    /// kernel's maps are asked too and both answers are shown.
    ///
    /// Example: xdp-allowlist explain 203.0.113.7 tcp/22
    Explain {
        address: String,
        /// A protected port as in the configuration, like tcp/22.
        port: String,
        /// Print JSON.
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

    /// Show probing alerts and access records from the `[alerts] file`.
    ///
    /// The daemon appends each alert (firing and ended) and each access
    /// record to the JSON-lines file named by `file` in the configuration's
    /// `[alerts]` section; this prints them, one line each, oldest first.
    /// Exits 2 when the configuration names no such file. Changes nothing.
    ///
    /// Example: xdp-allowlist events --follow
    Events {
        /// Keep printing new records as the daemon writes them (until
        /// interrupted); a truncated or rotated file is followed from its start.
        #[arg(long)]
        follow: bool,
        /// Print the JSON lines as written instead of the one-line summary.
        #[arg(long)]
        json: bool,
    },

    /// Print a shell completion script to standard output.
    ///
    /// Example: xdp-allowlist completions bash > /usr/share/bash-completion/completions/xdp-allowlist
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },

    /// Print the manual page (roff) to standard output; `cargo xtask install`
    /// installs it as xdp-allowlist(8).
    #[command(hide = true)]
    Man,
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

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Print JSON instead of tables (the fields are listed in the README).
    #[arg(long)]
    pub json: bool,

    /// Only sources last seen within this long (`30s`, `10m`, `2h`).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub since: Option<std::time::Duration>,

    /// List at most N refused sources and N access records (0: all).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub limit: usize,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Time between refreshes (`1s`, `500ms`; at least 100ms).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_interval)]
    pub interval: std::time::Duration,
}

fn parse_interval(text: &str) -> Result<std::time::Duration, String> {
    let interval = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if interval < std::time::Duration::from_millis(100) {
        return Err(format!("`{text}` is too short; use at least 100ms"));
    }
    Ok(interval)
}

#[derive(Debug, Subcommand)]
pub enum AllowCommand {
    /// Add a CIDR to a service's allowlist.
    ///
    /// The file is locked, validated as a whole, written to a temporary file
    /// and renamed into place; comments and layout are kept. A running daemon
    /// applies the change within a second.
    ///
    /// Example: xdp-allowlist allow add admin 198.51.100.7/32 --note "alice, VPN" --ttl 2h
    Add {
        service: String,
        cidr: String,
        /// Why this entry exists; kept next to it in the file.
        #[arg(long)]
        note: Option<String>,
        /// Let the entry expire after this long (`30m`, `2h`, `7d`): an
        /// `expires` time is written into the file and the daemon stops
        /// admitting the source on time, and logs it.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
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
    /// Import a provider's published ranges from a file you downloaded.
    ///
    /// The entries this import made before (recognised by their note, which
    /// names the file and selection) are replaced; entries from elsewhere
    /// stay. The difference is shown. A result that shrinks the imported list
    /// by more than half is refused unless --force: a truncated download
    /// must not cut off a provider.
    ///
    /// Example: xdp-allowlist allow import hooks meta.json --format github --key hooks
    ///
    /// Example: xdp-allowlist allow import api ip-ranges.json --format aws --filter service=EC2,region=eu-west-1
    Import {
        service: String,
        file: std::path::PathBuf,
        #[arg(long, value_enum, default_value = "plain")]
        format: crate::import::Format,
        /// The list to take from a GitHub meta document (hooks, web, api, …).
        #[arg(long)]
        key: Option<String>,
        /// FIELD=VALUE pairs an AWS prefix must match, comma-separated.
        #[arg(long)]
        filter: Option<String>,
        /// Accept a result that shrinks the list by more than half.
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

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}
