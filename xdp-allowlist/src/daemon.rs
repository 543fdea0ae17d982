//! `run`: the daemon. Loads or adopts the pinned filter, applies the
//! configuration as a generation, attaches, then follows the file (watch,
//! SIGHUP, and a slow poll as a safety net) and turns the kernel's source
//! events into probing alerts and access records (see [`crate::alerts`]).
//!
//! Stopping the daemon leaves the filter attached and enforcing the last
//! applied generation; only `detach` removes it.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use fs2::FileExt as _;
use notify::Watcher as _;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::SignalKind,
    sync::{mpsc, watch},
};

use crate::{
    alerts::AlertGauges,
    apply::Applier,
    audit,
    bpf::{self, BpfMaps},
    config::{self, Config},
    policy::describe_changes,
};

/// How the daemon was started.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub config_path: PathBuf,
    pub pin_dir: PathBuf,
    /// Interfaces from the command line; they replace the file's list.
    pub interfaces: Vec<String>,
    pub kernel_log: bool,
}

/// How often the file is re-read even when no change was notified.
const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Changes notified within this window are applied together.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Runs the daemon until SIGINT or SIGTERM.
///
/// # Errors
///
/// A configuration error before anything was loaded (nothing changes), or a
/// failure to load, adopt or attach.
pub async fn run(options: RunOptions) -> anyhow::Result<()> {
    let loaded = config::load(&options.config_path)?;
    for warning in &loaded.warnings {
        tracing::warn!(file = %options.config_path.display(), line = warning.line, "{}", warning.message);
    }
    let config = loaded.config;
    for risk in crate::guard::risks(&config, None) {
        tracing::warn!("applying as written: {risk}");
    }
    let interfaces = if options.interfaces.is_empty() {
        config.interfaces.clone()
    } else {
        options.interfaces.clone()
    };
    if interfaces.is_empty() {
        return Err(crate::UsageError(
            "no interface to attach to; set `interfaces` in the configuration or pass --iface"
                .to_owned(),
        )
        .into());
    }

    bpf::ensure_bpffs(&options.pin_dir)?;
    let _lock = lock_pin_dir(&options.pin_dir)?;

    let mut loaded = bpf::load_and_pin(&options.pin_dir, config.capacity, options.kernel_log)?;
    let maps = BpfMaps::open(&options.pin_dir)?;
    let mut applier = Applier::adopt(maps)?;
    if loaded.adopted_maps {
        tracing::info!(
            generation = applier.generation(),
            pin_dir = %options.pin_dir.display(),
            "adopted the pinned filter; it kept enforcing while no daemon ran"
        );
    }

    // Fill the maps before attaching, so the first packet already meets
    // the configured allowlist.
    let report = applier.apply(&config)?;
    tracing::info!(
        generation = report.generation,
        services = config.services.len(),
        writes = report.writes,
        elapsed_ms = report.elapsed.as_millis() as u64,
        "allowlist applied"
    );
    if !report.unchanged {
        let mut record = audit::Record::new(audit::Actor::current("daemon"), "apply", "applied");
        record.trigger = Some("start");
        record.generation = Some(report.generation);
        record.changes = describe_changes(None, &config);
        audit::record(config.audit_log.as_deref(), &record);
    }

    if !config.alerts.track_sources {
        tracing::info!("per-source accounting is off (`track_sources = false` in [alerts]): stats, top, alerts and access records have nothing to show");
    }

    // What the source table holds before the filter is attached is no news
    // to the alerts; what comes after is.
    let sources = match crate::sources::SourceTable::open(&options.pin_dir)
        .and_then(crate::stream::SourceSweep::start)
    {
        Ok(sweep) => Some(sweep),
        Err(err) => {
            tracing::warn!(error = %format!("{err:#}"), "cannot read the source map: alerts see only the kernel's events");
            None
        }
    };

    let mut watched = Vec::new();
    for interface in &interfaces {
        let kept = bpf::attachments(&options.pin_dir)
            .iter()
            .any(|a| a.interface == *interface && Some(a.ifindex) == bpf::ifindex(interface));
        let attachment = bpf::attach(
            &mut loaded.program,
            &options.pin_dir,
            interface,
            config.xdp_mode,
        )?;
        if kept {
            tracing::info!(interface = %attachment.interface, mode = %attachment.mode, adopted = true, "filter attached (the pinned link was kept: no gap)");
        } else {
            tracing::info!(interface = %attachment.interface, mode = %attachment.mode, "filter attached");
        }
        watched.push(WatchedInterface {
            name: interface.clone(),
            ifindex: bpf::ifindex(interface),
        });
    }

    // The maps are filled and every interface is filtered: only now may
    // systemd (Type=notify) start what is ordered after us, the network.
    let summary = format!(
        "enforcing generation {} on {}",
        applier.generation(),
        interfaces.join(", ")
    );
    notify_service_manager(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&summary),
    ]);

    let logger = if options.kernel_log {
        Some(
            aya_log::EbpfLogger::init(&mut loaded.program)
                .context("cannot start the kernel log reader")?,
        )
    } else {
        None
    };
    // The links hold the program; the loader object stays for re-attaching
    // to an interface that is deleted and created again.
    let mut program = loaded.program;

    let gauges = Arc::new(AlertGauges::default());
    if let Some(listen) = config.metrics_listen {
        crate::metrics::serve(listen, &options.pin_dir, Arc::clone(&gauges))?;
    }

    let names = Arc::new(Mutex::new(invert(applier.ids())));
    let events = bpf::open_events(&options.pin_dir)?;
    let (alert_settings, alert_settings_rx) = watch::channel(config.alerts.clone());
    let events_task = tokio::spawn(crate::stream::stream_events(
        events,
        sources,
        Arc::clone(&names),
        alert_settings_rx,
        gauges,
    ));
    let log_task = logger.map(|logger| tokio::spawn(drain_kernel_log(logger)));

    let (tx, mut rx) = mpsc::channel::<&'static str>(16);
    let _watcher = watch(&options.config_path, tx.clone())?;
    let mut hangup = tokio::signal::unix::signal(SignalKind::hangup())?;
    let mut terminate = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut interrupt = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let mut last_text = fs::read_to_string(&options.config_path).ok();
    let mut current = config;
    let mut expiry = config::next_expiry(&current, std::time::SystemTime::now());
    let mut expiry_checked = std::time::SystemTime::now();
    tracing::info!(config = %options.config_path.display(), "watching the configuration; send SIGHUP to reload now");

    loop {
        let trigger = tokio::select! {
            Some(what) = rx.recv() => {
                tokio::time::sleep(DEBOUNCE).await;
                while rx.try_recv().is_ok() {}
                what
            }
            _ = hangup.recv() => "SIGHUP",
            _ = poll.tick() => "poll",
            _ = terminate.recv() => { tracing::info!("SIGTERM: stopping; the filter stays attached and enforcing"); break; }
            _ = interrupt.recv() => { tracing::info!("SIGINT: stopping; the filter stays attached and enforcing"); break; }
        };
        match crate::confirm::roll_back_if_due(&options.config_path, std::time::SystemTime::now()) {
            Ok(Some(pending)) => {
                tracing::warn!(
                    generation_before = pending.generation_before,
                    "the change was not confirmed in time: rolling back"
                );
                let mut record =
                    audit::Record::new(audit::Actor::current("daemon"), "apply", "rolled_back");
                record.generation = Some(applier.generation());
                record.reason = Some("not confirmed in time".to_owned());
                audit::record(current.audit_log.as_deref(), &record);
            }
            Ok(None) => {}
            Err(err) => tracing::error!("cannot roll back an unconfirmed change: {err:#}"),
        }
        if expiry.is_some_and(|at| std::time::SystemTime::now() >= at) {
            expire(&mut applier, &current, &names, expiry_checked);
            expiry_checked = std::time::SystemTime::now();
            expiry = config::next_expiry(&current, std::time::SystemTime::now());
        }
        if trigger == "poll" {
            for interface in &mut watched {
                reattach_if_recreated(&mut program, &options.pin_dir, interface, current.xdp_mode);
            }
        }
        let text = match fs::read_to_string(&options.config_path) {
            Ok(text) => text,
            Err(err) => {
                if trigger != "poll" {
                    tracing::error!(config = %options.config_path.display(), error = %err, "cannot read the configuration; the last good allowlist stays in force");
                }
                continue;
            }
        };
        if trigger == "poll" && last_text.as_deref() == Some(text.as_str()) {
            continue;
        }
        last_text = Some(text.clone());
        match config::parse_str(&text, &options.config_path) {
            Err(err) => {
                tracing::error!(
                    trigger,
                    "configuration refused; the last good allowlist stays in force\n{err}"
                );
                let mut record =
                    audit::Record::new(audit::Actor::current("daemon"), "apply", "rejected");
                record.trigger = Some(trigger);
                record.generation = Some(applier.generation());
                record.reason = Some(err.to_string());
                audit::record(current.audit_log.as_deref(), &record);
            }
            Ok(loaded) => {
                for warning in &loaded.warnings {
                    tracing::warn!(line = warning.line, "{}", warning.message);
                }
                for risk in crate::guard::new_risks(Some(&current), &loaded.config, None) {
                    tracing::warn!("applying as written: {risk}");
                }
                reload(&mut applier, &current, &loaded.config, trigger, &names);
                current = loaded.config;
                alert_settings.send_if_modified(|settings| {
                    let changed = *settings != current.alerts;
                    settings.clone_from(&current.alerts);
                    changed
                });
                expiry = config::next_expiry(&current, std::time::SystemTime::now());
            }
        }
    }

    notify_service_manager(&[sd_notify::NotifyState::Stopping]);
    events_task.abort();
    if let Some(task) = log_task {
        task.abort();
    }
    Ok(())
}

/// Tells systemd (`Type=notify`) how the daemon is doing; does nothing when
/// not started by systemd (no NOTIFY_SOCKET).
fn notify_service_manager(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(err) = sd_notify::notify(state) {
        tracing::warn!(error = %err, "cannot notify the service manager");
    }
}

/// An interface the filter should be on, and the index it had when the
/// filter was attached.
struct WatchedInterface {
    name: String,
    ifindex: Option<u32>,
}

/// A deleted interface takes its XDP link with it, and one created again
/// under the same name has a new index and no filter. Notice both, and
/// attach again.
fn reattach_if_recreated(
    program: &mut aya::Ebpf,
    pin_dir: &Path,
    interface: &mut WatchedInterface,
    mode: crate::config::XdpModeSetting,
) {
    let now = bpf::ifindex(&interface.name);
    if now == interface.ifindex {
        return;
    }
    match now {
        None => {
            tracing::warn!(interface = %interface.name, "interface is gone; the filter will be attached again when it returns");
            interface.ifindex = None;
        }
        Some(_) => {
            let _ = bpf::detach(pin_dir, &interface.name);
            match bpf::attach(program, pin_dir, &interface.name, mode) {
                Ok(attachment) => {
                    tracing::warn!(interface = %attachment.interface, mode = %attachment.mode, "interface came back; filter attached again");
                    interface.ifindex = now;
                }
                Err(err) => {
                    tracing::error!(interface = %interface.name, "interface came back but attaching failed: {err:#}");
                }
            }
        }
    }
}

/// Applies the configuration again without the entries whose time is up,
/// and logs each of them.
fn expire(
    applier: &mut Applier<BpfMaps>,
    current: &Config,
    names: &Arc<Mutex<BTreeMap<u32, String>>>,
    since: std::time::SystemTime,
) {
    let now = std::time::SystemTime::now();
    for (service, entry) in current
        .services
        .iter()
        .flat_map(|(name, s)| s.allow.iter().map(move |e| (name, e)))
        .filter(|(_, e)| !e.is_live(now) && e.expires.is_some_and(|at| at >= since))
    {
        tracing::info!(
            service = %service,
            cidr = %entry.net,
            note = entry.note.as_deref().unwrap_or(""),
            "allowlist entry expired; no longer admitted"
        );
    }
    reload(applier, current, current, "expiry", names);
}

fn reload(
    applier: &mut Applier<BpfMaps>,
    current: &Config,
    next: &Config,
    trigger: &str,
    names: &Arc<Mutex<BTreeMap<u32, String>>>,
) {
    let changes = describe_changes(Some(current), next);
    let mut record = audit::Record::new(audit::Actor::current("daemon"), "apply", "applied");
    record.trigger = Some(trigger);
    if trigger == "expiry" {
        record.action = "expire";
    }
    match applier.apply(next) {
        Ok(report) if report.unchanged => {
            tracing::debug!(trigger, "configuration unchanged");
        }
        Ok(report) => {
            for (service, change) in &changes {
                tracing::info!(
                    service = %service,
                    added = ?change.added,
                    removed = ?change.removed,
                    "allowlist changed"
                );
            }
            tracing::info!(
                trigger,
                generation = report.generation,
                writes = report.writes,
                elapsed_ms = report.elapsed.as_millis() as u64,
                "new generation applied"
            );
            if let Ok(mut names) = names.lock() {
                *names = invert(applier.ids());
            }
            record.generation = Some(report.generation);
            record.changes = changes;
            audit::record(next.audit_log.as_deref(), &record);
        }
        Err(err) => {
            tracing::error!(trigger, "applying the configuration failed: {err:#}");
            record.outcome = "failed";
            record.generation = Some(applier.generation());
            record.reason = Some(format!("{err:#}"));
            audit::record(next.audit_log.as_deref(), &record);
        }
    }
}

fn invert(ids: &BTreeMap<String, u32>) -> BTreeMap<u32, String> {
    ids.iter().map(|(name, id)| (*id, name.clone())).collect()
}

/// One daemon per pin directory: a lock file in /run keyed by the directory.
fn lock_pin_dir(pin_dir: &Path) -> anyhow::Result<fs::File> {
    let dir = Path::new("/run/xdp-allowlist");
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let key: String = pin_dir
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let path = dir.join(format!("{key}.lock"));
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    file.try_lock_exclusive().map_err(|_| {
        crate::UsageError(format!(
            "another xdp-allowlist daemon already runs for pin dir {} (lock {}); stop it first or use another --pin-dir",
            pin_dir.display(),
            path.display()
        ))
    })?;
    Ok(file)
}

/// Watches the directory of the configuration rather than the file, so that
/// editors that write and rename, and ConfigMap symlink swaps, are seen.
fn watch(
    path: &Path,
    tx: mpsc::Sender<&'static str>,
) -> anyhow::Result<notify::RecommendedWatcher> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reads (ours and the CLI's) are not changes.
        if event.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
            let _ = tx.try_send("file change");
        }
    })?;
    watcher
        .watch(&dir, notify::RecursiveMode::NonRecursive)
        .with_context(|| format!("cannot watch {}", dir.display()))?;
    Ok(watcher)
}

async fn drain_kernel_log(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its ring buffer fd and lives inside the AsyncFd.
    let mut fd = match unsafe { AsyncFd::register(logger) } {
        Ok(fd) => fd,
        Err(err) => {
            tracing::error!(error = %err, "cannot poll the kernel log");
            return;
        }
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
