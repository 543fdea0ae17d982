//! `cargo xtask demo`: a live demonstration in throwaway network namespaces.
//!
//! A server namespace runs the daemon on its veth end and listens on a
//! protected port (tcp/8443) and an unprotected one (tcp/8080). A client
//! namespace holds an allowed address and a refused one. The demo shows the
//! connections, a scan alert when the refused address probes three protected
//! ports, the counters and per-source statistics, and an `allow add` taking
//! effect without a restart, then removes everything it created.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::run;

const SERVER_ADDR: &str = "203.0.113.1";
const ALLOWED_ADDR: &str = "203.0.113.10";
const REFUSED_ADDR: &str = "203.0.113.20";

/// Everything the demo created, removed on drop even when a step fails.
struct World {
    server_ns: String,
    client_ns: String,
    pin_dir: PathBuf,
    dir: PathBuf,
    binary: PathBuf,
    children: Vec<Child>,
}

impl Drop for World {
    fn drop(&mut self) {
        for child in &mut self.children {
            // SIGTERM first: the daemon leaves the filter pinned, removed below.
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new(&self.binary)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("detach")
            .stdout(Stdio::null())
            .status();
        for ns in [&self.server_ns, &self.client_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Runs the demonstration.
///
/// # Errors
///
/// When a step does not behave as the demo expects; the world is removed.
pub fn demo(binary: &Path) -> anyhow::Result<()> {
    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("xa-demo-{pid}"));
    fs::create_dir_all(&dir)?;
    let mut world = World {
        server_ns: format!("xa-demo-srv-{pid}"),
        client_ns: format!("xa-demo-cli-{pid}"),
        pin_dir: PathBuf::from(format!("/sys/fs/bpf/xa-demo-{pid}")),
        dir,
        binary: binary.to_owned(),
        children: Vec::new(),
    };
    let server_if = format!("xad{}s", pid % 100_000);
    let client_if = format!("xad{}c", pid % 100_000);

    step("creating a server and a client namespace joined by a veth pair");
    for ns in [&world.server_ns, &world.client_ns] {
        run(Command::new("ip").args(["netns", "add", ns]))?;
    }
    run(Command::new("ip").args([
        "link", "add", &server_if, "type", "veth", "peer", "name", &client_if,
    ]))?;
    run(Command::new("ip").args(["link", "set", &server_if, "netns", &world.server_ns]))?;
    run(Command::new("ip").args(["link", "set", &client_if, "netns", &world.client_ns]))?;
    for (ns, ifname, addrs) in [
        (&world.server_ns, &server_if, vec![SERVER_ADDR]),
        (
            &world.client_ns,
            &client_if,
            vec![ALLOWED_ADDR, REFUSED_ADDR],
        ),
    ] {
        for addr in addrs {
            run(Command::new("ip").args([
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                ifname,
            ]))?;
        }
        run(Command::new("ip").args(["-n", ns, "link", "set", ifname, "up"]))?;
        run(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]))?;
    }

    let config = world.dir.join("config.toml");
    fs::write(
        &config,
        format!(
            "# xdp-allowlist demo configuration\n\
             interfaces = [\"{server_if}\"]\n\n\
             [services.admin]\n\
             ports = [\"tcp/8443\", \"tcp/22\", \"tcp/9000\"]\n\
             allow = [\"{ALLOWED_ADDR}/32\"]  # the office\n\n\
             [alerts]\n\
             scan_ports = 3   # one source touching 3 protected ports is a scan\n\
             file = \"{}\"\n",
            world.dir.join("alerts.jsonl").display()
        ),
    )?;
    println!("{}", fs::read_to_string(&config)?);

    step("listening on tcp/8443, 22, 9000 (protected) and tcp/8080 (not protected) in the server namespace");
    let me = std::env::current_exe()?;
    let listener = Command::new("ip")
        .args(["netns", "exec", &world.server_ns])
        .arg(&me)
        .args(["demo-listen", "8443", "22", "9000", "8080"])
        .stdout(Stdio::null())
        .spawn()?;
    world.children.push(listener);

    step("starting the daemon in the server namespace");
    let log_path = world.dir.join("daemon.log");
    let log = fs::File::create(&log_path)?;
    let daemon = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", world.server_ns))
        .arg(binary)
        .arg("--config")
        .arg(&config)
        .arg("--pin-dir")
        .arg(&world.pin_dir)
        .arg("run")
        .env("NO_COLOR", "1")
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    world.children.push(daemon);
    wait_for_log(&log_path, "filter attached", Duration::from_secs(30))?;
    print_log(&log_path, &["attached", "applied"]);

    step("connecting to the protected port from the allowed and the refused address");
    let allowed = connect(&world.client_ns, ALLOWED_ADDR, 8443)?;
    report(ALLOWED_ADDR, 8443, allowed);
    let refused = connect(&world.client_ns, REFUSED_ADDR, 8443)?;
    report(REFUSED_ADDR, 8443, refused);
    let unprotected = connect(&world.client_ns, REFUSED_ADDR, 8080)?;
    report(REFUSED_ADDR, 8080, unprotected);
    if !allowed || refused || !unprotected {
        bail!("the filter did not behave as expected (allowed={allowed}, refused={refused}, unprotected={unprotected})");
    }

    step(&format!(
        "{REFUSED_ADDR} probes the other protected ports: a scan alert"
    ));
    for port in [22, 9000] {
        let reached = connect(&world.client_ns, REFUSED_ADDR, port)?;
        report(REFUSED_ADDR, port, reached);
    }
    wait_for_log(&log_path, "probing alert", Duration::from_secs(10))?;
    print_log(&log_path, &["access", "probing alert"]);

    step("the counters (xdp-allowlist status) and who was refused (xdp-allowlist stats)");
    for command in ["status", "stats"] {
        show(
            Command::new(binary)
                .arg("--pin-dir")
                .arg(&world.pin_dir)
                .arg(command),
        )?;
    }
    show(
        Command::new(binary)
            .arg("--config")
            .arg(&config)
            .arg("events"),
    )?;

    step(&format!(
        "allowing {REFUSED_ADDR} with `xdp-allowlist allow add` (no restart)"
    ));
    show(Command::new(binary).arg("--config").arg(&config).args([
        "allow",
        "add",
        "admin",
        &format!("{REFUSED_ADDR}/32"),
        "--note",
        "added in the demo",
    ]))?;
    thread::sleep(Duration::from_millis(500));
    let now_allowed = connect(&world.client_ns, REFUSED_ADDR, 8443)?;
    report(REFUSED_ADDR, 8443, now_allowed);
    print_log(&log_path, &["changed", "generation applied"]);
    if !now_allowed {
        bail!("{REFUSED_ADDR} was added to the allowlist but still cannot connect");
    }

    step("cleaning up: stopping the daemon, detaching, deleting the namespaces");
    drop(world);
    println!("\ndemo finished: everything it created is gone");
    Ok(())
}

fn step(text: &str) {
    println!("\n==> {text}");
}

fn report(from: &str, port: u16, connected: bool) {
    let what = if connected {
        "connected"
    } else {
        "no answer (dropped by the filter)"
    };
    println!("    {from} -> {SERVER_ADDR}:{port}: {what}");
}

fn show(command: &mut Command) -> anyhow::Result<()> {
    let out = command.output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("{command:?} failed");
    }
    Ok(())
}

/// Connects from `source` in the client namespace, with a short timeout.
fn connect(ns: &str, source: &str, port: u16) -> anyhow::Result<bool> {
    let me = std::env::current_exe()?;
    let status = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(me)
        .args(["demo-connect", &format!("{SERVER_ADDR}:{port}"), source])
        .status()?;
    Ok(status.success())
}

fn wait_for_log(path: &Path, needle: &str, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if fs::read_to_string(path)
            .unwrap_or_default()
            .contains(needle)
        {
            return Ok(());
        }
        if fs::read_to_string(path)
            .unwrap_or_default()
            .contains("error:")
        {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "the daemon did not log `{needle}` in time; its log:\n{}",
        fs::read_to_string(path).unwrap_or_default()
    )
}

fn print_log(path: &Path, needles: &[&str]) {
    for line in fs::read_to_string(path).unwrap_or_default().lines() {
        if needles.iter().any(|n| line.contains(n)) {
            println!("    daemon: {line}");
        }
    }
}

/// `demo-listen PORT...`: accepts connections and answers each with a line.
/// Runs inside the server namespace; ends when the demo kills it.
pub fn listen(ports: &[u16]) -> anyhow::Result<()> {
    let mut handles = Vec::new();
    for &port in ports {
        let listener = TcpListener::bind(("0.0.0.0", port))
            .with_context(|| format!("cannot listen on {port}"))?;
        handles.push(thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let _ = stream.write_all(b"hello\n");
            }
        }));
    }
    for handle in handles {
        let _ = handle.join();
    }
    Ok(())
}

/// `demo-connect ADDR:PORT SOURCE`: exit 0 when a connection from `SOURCE`
/// is answered within two seconds.
pub fn connect_from(target: &str, source: &str) -> anyhow::Result<bool> {
    let target: SocketAddr = target.parse()?;
    let source: SocketAddr = SocketAddr::new(source.parse()?, 0);
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(target),
        socket2::Type::STREAM,
        None,
    )?;
    socket.bind(&source.into())?;
    if socket
        .connect_timeout(&target.into(), Duration::from_secs(2))
        .is_err()
    {
        return Ok(false);
    }
    let mut stream = TcpStream::from(socket);
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 6];
    Ok(matches!(stream.read(&mut buf), Ok(n) if n > 0))
}
