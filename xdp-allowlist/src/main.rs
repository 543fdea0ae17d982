//! The `xdp-allowlist` binary: parses the command line and hands over to the
//! library. Errors are printed with their whole chain; see `exit_code`.

use std::process::ExitCode;

use clap::Parser as _;
use serde_json::json;
use xdp_allowlist::{
    bpf,
    cli::{AllowCommand, Cli, Command},
    config, daemon, edit, exit_code, status, UsageError,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(exit_code(&err) as u8)
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("XDP_ALLOWLIST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let Cli {
        config: config_path,
        pin_dir,
        command,
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
            for shadowed in xdp_allowlist::guard::shadowed(&loaded.config) {
                eprintln!("warning: {}: {shadowed}", config_path.display());
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
            force,
        }) => {
            let guard = edit::Guard::from_env(force);
            match edit::allow_add(&config_path, &service, &cidr, note.as_deref(), guard)? {
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
            edit::allow_remove(&config_path, &service, &cidr, edit::Guard::from_env(force))?;
            println!("removed {cidr} from {service}");
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
                    .map(|e| json!({ "cidr": e.net.to_string(), "note": e.note }))
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
        for entry in &service.allow {
            match &entry.note {
                Some(note) => println!("  {:<43} # {note}", entry.net),
                None => println!("  {}", entry.net),
            }
        }
    }
    Ok(())
}
