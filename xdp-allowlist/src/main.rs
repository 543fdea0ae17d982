//! The `xdp-allowlist` binary: parses the command line and hands over to the
//! library. Errors are printed with their whole chain; see `exit_code`.

use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _};
use serde_json::json;
use xdp_allowlist::{
    bpf,
    cli::{AllowCommand, Cli, Command, LogFormat},
    config, daemon, edit, exit_code, features, status, UsageError,
};

fn main() -> ExitCode {
    let cli = parse();
    init_tracing(cli.log_format);
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(exit_code(&err) as u8)
        }
    }
}

/// Parses the command line. `--version` also reports the kernel features,
/// which takes a few probing syscalls, so they run only when it is asked for.
fn parse() -> Cli {
    let mut command = Cli::command();
    if std::env::args_os().any(|arg| arg == "--version") {
        // Built once per process, for clap, which keeps `&'static str`s.
        let long_version: &'static str = features::long_version(env!("CARGO_PKG_VERSION")).leak();
        command = command.long_version(long_version);
    }
    let matches = command.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|err| err.exit())
}

fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal as _;

    let filter = tracing_subscriber::EnvFilter::try_from_env("XDP_ALLOWLIST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // journald stamps each line itself and shows no colours.
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    match format {
        LogFormat::Json => builder.json().with_current_span(false).init(),
        LogFormat::Text if journal => builder.without_time().with_ansi(false).init(),
        LogFormat::Text => builder.with_ansi(colour).init(),
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let Cli {
        config: config_path,
        pin_dir,
        command,
        log_format: _,
    } = cli;
    match command {
        Command::Run(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(daemon::run(daemon::RunOptions {
                config_path,
                pin_dir,
                interfaces: args.interfaces,
                kernel_log: args.kernel_log,
            }))
        }
        Command::Check => {
            let loaded = config::load(&config_path)?;
            for warning in &loaded.warnings {
                eprintln!(
                    "warning: {}:{}:{}: {}",
                    config_path.display(),
                    warning.line,
                    warning.column,
                    warning.message
                );
            }
            for risk in xdp_allowlist::guard::risks(
                &loaded.config,
                xdp_allowlist::guard::SshSession::from_env(),
            ) {
                eprintln!("warning: {}: {risk}", config_path.display());
            }
            let shadowed = xdp_allowlist::guard::shadowed(&loaded.config);
            for line in shadowed.iter().take(20) {
                eprintln!("warning: {}: {line}", config_path.display());
            }
            if shadowed.len() > 20 {
                eprintln!(
                    "warning: {}: {} more entries are covered by other entries",
                    config_path.display(),
                    shadowed.len() - 20
                );
            }
            let cidrs: usize = loaded.config.services.values().map(|s| s.allow.len()).sum();
            println!(
                "{}: valid ({} services, {} allowed CIDRs)",
                config_path.display(),
                loaded.config.services.len(),
                cidrs
            );
            Ok(())
        }
        Command::Allow(AllowCommand::Add {
            service,
            cidr,
            note,
            ttl,
            force,
        }) => {
            let guard = edit::Guard::from_env(force);
            let expires = ttl.map(|ttl| std::time::SystemTime::now() + ttl);
            let result = edit::allow_add(
                &config_path,
                &service,
                &cidr,
                note.as_deref(),
                expires,
                guard,
            );
            audit_edit(&config_path, &result, &service, &cidr, true);
            match result? {
                edit::EditOutcome::Changed => println!("added {cidr} to {service}"),
                edit::EditOutcome::AlreadyThere => {
                    println!("{cidr} is already allowed for {service}; nothing changed")
                }
            }
            Ok(())
        }
        Command::Allow(AllowCommand::Remove {
            service,
            cidr,
            force,
        }) => {
            let result =
                edit::allow_remove(&config_path, &service, &cidr, edit::Guard::from_env(force));
            audit_edit(&config_path, &result, &service, &cidr, false);
            result?;
            println!("removed {cidr} from {service}");
            Ok(())
        }
        Command::Allow(AllowCommand::Import {
            service,
            file,
            format,
            key,
            filter,
            force,
        }) => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| UsageError(format!("cannot read `{}`: {e}", file.display())))?;
            let nets =
                xdp_allowlist::import::parse(&text, format, key.as_deref(), filter.as_deref())?;
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let selection = key.or(filter).map(|s| format!(" {s}")).unwrap_or_default();
            let source = format!("{name} ({format:?}{selection})").to_lowercase();
            let report = edit::allow_import(
                &config_path,
                &service,
                &nets,
                &source,
                force,
                edit::Guard::from_env(false),
            )?;
            for net in &report.added {
                println!("+ {net}");
            }
            for net in &report.removed {
                println!("- {net}");
            }
            println!(
                "{service}: {} added, {} removed, {} unchanged (imported from {source})",
                report.added.len(),
                report.removed.len(),
                report.kept
            );
            Ok(())
        }
        Command::Allow(AllowCommand::List { service, json }) => {
            list(&config_path, service.as_deref(), json)
        }
        Command::Status { json } => {
            let status = status::read(&pin_dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status::render(&status));
            }
            Ok(())
        }
        Command::Stats(args) => {
            let report = xdp_allowlist::stats::read(&pin_dir, args.since, args.limit)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", xdp_allowlist::stats::render(&report));
            }
            Ok(())
        }
        Command::Top(args) => xdp_allowlist::top::run(&pin_dir, args.interval),
        Command::Apply {
            candidate,
            confirm,
            force,
        } => apply(&config_path, &pin_dir, &candidate, confirm, force),
        Command::Confirm => {
            if xdp_allowlist::confirm::clear(&config_path)? {
                println!("confirmed: the change stays");
                let record = xdp_allowlist::audit::Record::new(
                    xdp_allowlist::audit::Actor::current("cli"),
                    "confirm",
                    "confirmed",
                );
                let audit_log = config::load(&config_path)
                    .ok()
                    .and_then(|l| l.config.audit_log);
                xdp_allowlist::audit::record(audit_log.as_deref(), &record);
                Ok(())
            } else {
                Err(UsageError("there is no change waiting for confirmation".to_owned()).into())
            }
        }
        Command::Explain {
            address,
            port,
            json,
        } => explain(&config_path, &pin_dir, &address, &port, json),
        Command::Events { follow, json } => xdp_allowlist::events::show(&config_path, follow, json),
        Command::Completions { shell } => {
            // Into a buffer first: the generator panics on a write error,
            // such as a closed pipe.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "xdp-allowlist", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script)?;
            Ok(())
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command())
                .section("8")
                .render(&mut std::io::stdout())?;
            Ok(())
        }
        Command::Detach { interfaces } => {
            if interfaces.is_empty() {
                let attached = bpf::attachments(&pin_dir);
                bpf::remove_all_pins(&pin_dir)?;
                for a in &attached {
                    println!("detached from {} ({} XDP)", a.interface, a.mode);
                }
                println!("removed the pins in {}", pin_dir.display());
            } else {
                for interface in &interfaces {
                    if bpf::detach(&pin_dir, interface)? {
                        println!("detached from {interface}");
                    } else {
                        return Err(UsageError(format!(
                            "the filter is not attached to `{interface}` (pin dir {})",
                            pin_dir.display()
                        ))
                        .into());
                    }
                }
            }
            Ok(())
        }
    }
}

fn apply(
    config_path: &std::path::Path,
    pin_dir: &std::path::Path,
    candidate: &std::path::Path,
    confirm: Option<std::time::Duration>,
    force: bool,
) -> anyhow::Result<()> {
    use xdp_allowlist::confirm as pending;

    let new_text = std::fs::read_to_string(candidate)
        .map_err(|e| UsageError(format!("cannot read `{}`: {e}", candidate.display())))?;
    let next = config::parse_str(&new_text, candidate)?.config;
    let old_text = std::fs::read_to_string(config_path).unwrap_or_default();
    let current = config::parse_str(&old_text, config_path)
        .ok()
        .map(|l| l.config);
    if let Some(current) = &current {
        edit::Guard::from_env(force).check(current, &next)?;
    }
    if pending::read(config_path)?.is_some() {
        return Err(UsageError(
            "another change is waiting for confirmation; run `xdp-allowlist confirm` or wait for its rollback".to_owned(),
        )
        .into());
    }
    let generation_before = status::read(pin_dir).map(|s| s.generation).unwrap_or(0);
    if let Some(within) = confirm {
        pending::write(
            config_path,
            &pending::Pending::new(old_text, generation_before, within),
        )?;
    }
    edit::write_atomically(config_path, &new_text)?;

    let mut record = xdp_allowlist::audit::Record::new(
        xdp_allowlist::audit::Actor::current("cli"),
        "apply",
        if confirm.is_some() {
            "pending"
        } else {
            "written"
        },
    );
    record.changes = xdp_allowlist::policy::describe_changes(current.as_ref(), &next);
    xdp_allowlist::audit::record(next.audit_log.as_deref(), &record);

    // Wait for the daemon to pick it up, so the operator can test now.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut applied = None;
    while std::time::Instant::now() < deadline {
        if let Ok(s) = status::read(pin_dir) {
            if s.generation > generation_before {
                applied = Some(s.generation);
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    match (applied, confirm) {
        (Some(g), Some(within)) => println!(
            "applied generation {g}; run `xdp-allowlist confirm` within {} or generation {generation_before}'s configuration comes back",
            humantime::format_duration(within)
        ),
        (Some(g), None) => println!("applied generation {g}"),
        (None, _) => println!(
            "written to {}; no running daemon applied it within 5 seconds (is `xdp-allowlist run` running with this --pin-dir?)",
            config_path.display()
        ),
    }
    Ok(())
}

/// Records a CLI edit in the audit log named by the (edited) file.
fn audit_edit(
    config_path: &std::path::Path,
    result: &anyhow::Result<edit::EditOutcome>,
    service: &str,
    cidr: &str,
    added: bool,
) {
    use xdp_allowlist::{audit, policy::ServiceChange};

    let Ok(loaded) = config::load(config_path) else {
        return;
    };
    let outcome = match result {
        Ok(edit::EditOutcome::Changed) => "written",
        Ok(edit::EditOutcome::AlreadyThere) => return,
        Err(_) => "refused",
    };
    let mut record = audit::Record::new(audit::Actor::current("cli"), "edit", outcome);
    let entry = vec![cidr.to_owned()];
    let change = if added {
        ServiceChange {
            added: entry,
            removed: vec![],
        }
    } else {
        ServiceChange {
            added: vec![],
            removed: entry,
        }
    };
    record.changes.insert(service.to_owned(), change);
    if let Err(err) = result {
        record.reason = Some(format!("{err:#}"));
    }
    audit::record(loaded.config.audit_log.as_deref(), &record);
}

fn explain(
    config_path: &std::path::Path,
    pin_dir: &std::path::Path,
    address: &str,
    port: &str,
    as_json: bool,
) -> anyhow::Result<()> {
    use xdp_allowlist::explain as ex;

    let source = ex::parse_address(address).map_err(UsageError)?;
    let range = config::parse_port_spec(port).map_err(UsageError)?;
    if range.first != range.last {
        return Err(UsageError(format!("`{port}` is a range; explain takes one port")).into());
    }
    let loaded = config::load(config_path)?;
    let answer = ex::explain(&loaded.config, source, range.protocol, range.first);
    let kernel = ex::ask_kernel(pin_dir, source, range.protocol, range.first);
    if as_json {
        let kernel = kernel.as_ref().ok();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "config": answer, "kernel": kernel }))?
        );
        return Ok(());
    }
    println!("{}", answer.reason);
    if let Some(note) = &answer.note {
        println!("note: {note}");
    }
    println!("verdict: {:?}", answer.verdict);
    match kernel {
        Ok(k) if k.verdict == answer.verdict => {
            println!("kernel (generation {}): {:?}, the same", k.generation, k.verdict)
        }
        Ok(k) => println!(
            "kernel (generation {}): {:?}: the file differs from what is applied (a refused edit, or the daemon has not applied it yet)",
            k.generation, k.verdict
        ),
        Err(_) => println!("kernel: not asked (no filter pinned in {})", pin_dir.display()),
    }
    Ok(())
}

fn list(path: &std::path::Path, only: Option<&str>, as_json: bool) -> anyhow::Result<()> {
    let loaded = config::load(path)?;
    let services: Vec<_> = loaded
        .config
        .services
        .iter()
        .filter(|(name, _)| only.is_none_or(|o| o == name.as_str()))
        .collect();
    if let Some(name) = only {
        if services.is_empty() {
            return Err(UsageError(format!(
                "there is no service `{name}` in {}",
                path.display()
            ))
            .into());
        }
    }
    if as_json {
        let value: serde_json::Map<String, serde_json::Value> = services
            .iter()
            .map(|(name, s)| {
                let entries: Vec<_> = s
                    .allow
                    .iter()
                    .map(|e| {
                        json!({
                            "cidr": e.net.to_string(),
                            "note": e.note,
                            "expires": e.expires.map(|at| humantime::format_rfc3339_seconds(at).to_string()),
                        })
                    })
                    .collect();
                let ports: Vec<String> = s.ports.iter().map(ToString::to_string).collect();
                ((*name).clone(), json!({ "ports": ports, "allow": entries }))
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    for (name, service) in services {
        let ports: Vec<String> = service.ports.iter().map(ToString::to_string).collect();
        println!("{name} ({})", ports.join(", "));
        if service.allow.is_empty() {
            println!("  (no source allowed)");
        }
        let now = std::time::SystemTime::now();
        for entry in &service.allow {
            let mut remarks = Vec::new();
            if let Some(at) = entry.expires {
                let when = humantime::format_rfc3339_seconds(at);
                remarks.push(if entry.is_live(now) {
                    format!("expires {when}")
                } else {
                    format!("EXPIRED {when}")
                });
            }
            if let Some(note) = &entry.note {
                remarks.push(note.clone());
            }
            if remarks.is_empty() {
                println!("  {}", entry.net);
            } else {
                println!("  {:<43} # {}", entry.net, remarks.join("; "));
            }
        }
    }
    Ok(())
}
