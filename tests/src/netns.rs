//! A test's own little network: a server and a client namespace joined by a
//! veth pair, with unique names, removed on drop even when the test panics.
//!
//! Addresses (documentation ranges only; the host's uplink uses others):
//! server 198.51.100.1 and 2001:db8:1::1, client 198.51.100.2 and
//! 2001:db8:1::2, plus any extra client addresses a test asks for.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

pub const SERVER_V4: &str = "198.51.100.1";
pub const CLIENT_V4: &str = "198.51.100.2";
pub const SERVER_V6: &str = "2001:db8:1::1";
pub const CLIENT_V6: &str = "2001:db8:1::2";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs `command`, panicking with its output when it fails.
pub fn sh(command: &mut Command) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces and the veth pair between them.
pub struct Pair {
    pub server: String,
    pub client: String,
    pub server_if: String,
    pub client_if: String,
}

impl Pair {
    /// Creates the namespaces with the standard addresses plus `extra`
    /// client addresses (IPv4 /24 or IPv6 /64 of the same networks).
    pub fn new(extra: &[&str]) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let pair = Pair {
            server: format!("xa-e2e-{pid}-{n}-s"),
            client: format!("xa-e2e-{pid}-{n}-c"),
            server_if: format!("xe{}{n}s", pid % 100_000),
            client_if: format!("xe{}{n}c", pid % 100_000),
        };
        for ns in [&pair.server, &pair.client] {
            sh(Command::new("ip").args(["netns", "add", ns]));
        }
        sh(Command::new("ip").args([
            "link",
            "add",
            &pair.server_if,
            "type",
            "veth",
            "peer",
            "name",
            &pair.client_if,
        ]));
        sh(Command::new("ip").args(["link", "set", &pair.server_if, "netns", &pair.server]));
        sh(Command::new("ip").args(["link", "set", &pair.client_if, "netns", &pair.client]));
        let mut client_addrs = vec![CLIENT_V4, CLIENT_V6];
        client_addrs.extend_from_slice(extra);
        for (ns, ifname, addrs) in [
            (&pair.server, &pair.server_if, vec![SERVER_V4, SERVER_V6]),
            (&pair.client, &pair.client_if, client_addrs),
        ] {
            for addr in addrs {
                let cidr = if addr.contains(':') {
                    format!("{addr}/64")
                } else {
                    format!("{addr}/24")
                };
                sh(Command::new("ip")
                    .args(["-n", ns, "addr", "add", &cidr, "dev", ifname, "nodad"]));
            }
            sh(Command::new("ip").args(["-n", ns, "link", "set", ifname, "up"]));
            sh(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]));
        }
        pair
    }

    /// Runs `f` in a thread that entered namespace `ns`; sockets it creates
    /// stay in that namespace.
    pub fn run_in<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{ns}");
        thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("cannot enter {path}: {e}"));
            f()
        })
        .join()
        .unwrap_or_else(|_| panic!("thread in namespace {ns} panicked"))
    }

    /// A TCP listener on `port` (IPv4 and IPv6) in the server namespace that
    /// answers every connection with `hello`, for as long as the pair lives.
    pub fn serve_tcp(&self, port: u16) {
        for any in ["0.0.0.0", "::"] {
            let listener = Self::run_in(&self.server, move || {
                let addr: SocketAddr =
                    SocketAddr::new(any.parse().unwrap_or(IpAddr::from([0, 0, 0, 0])), port);
                let socket = socket2::Socket::new(
                    socket2::Domain::for_address(addr),
                    socket2::Type::STREAM,
                    None,
                )
                .unwrap_or_else(|e| panic!("socket: {e}"));
                if addr.is_ipv6() {
                    let _ = socket.set_only_v6(true);
                }
                let _ = socket.set_reuse_address(true);
                socket
                    .bind(&addr.into())
                    .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
                socket.listen(64).unwrap_or_else(|e| panic!("listen: {e}"));
                TcpListener::from(socket)
            });
            thread::spawn(move || {
                for mut stream in listener.incoming().flatten() {
                    let _ = stream.write_all(b"hello\n");
                }
            });
        }
    }

    /// Tries one TCP connection from `source` in the client namespace to
    /// `server:port`; true when the server answered within `timeout`.
    pub fn tcp_connects(&self, source: &str, server: &str, port: u16, timeout: Duration) -> bool {
        let source: IpAddr = source.parse().unwrap_or_else(|e| panic!("{source}: {e}"));
        let target = SocketAddr::new(
            server.parse().unwrap_or_else(|e| panic!("{server}: {e}")),
            port,
        );
        Self::run_in(&self.client, move || {
            let socket = match socket2::Socket::new(
                socket2::Domain::for_address(target),
                socket2::Type::STREAM,
                None,
            ) {
                Ok(s) => s,
                Err(e) => panic!("socket: {e}"),
            };
            socket
                .bind(&SocketAddr::new(source, 0).into())
                .unwrap_or_else(|e| panic!("bind {source}: {e}"));
            if socket.connect_timeout(&target.into(), timeout).is_err() {
                return false;
            }
            let mut stream = TcpStream::from(socket);
            let _ = stream.set_read_timeout(Some(timeout));
            let mut buf = [0u8; 6];
            matches!(stream.read(&mut buf), Ok(n) if n > 0)
        })
    }

    /// Retries [`Pair::tcp_connects`] until it returns `want` or `limit`
    /// passes; returns how long that took, or `None`.
    pub fn tcp_until(
        &self,
        want: bool,
        source: &str,
        server: &str,
        port: u16,
        limit: Duration,
    ) -> Option<Duration> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if self.tcp_connects(source, server, port, Duration::from_millis(250)) == want {
                return Some(started.elapsed());
            }
            thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Sends `count` UDP datagrams from `source` to `server:port` and
    /// returns how many a socket bound there received.
    pub fn udp_received(&self, source: &str, server: &str, port: u16, count: usize) -> usize {
        let bind: SocketAddr = SocketAddr::new(
            server.parse().unwrap_or_else(|e| panic!("{server}: {e}")),
            port,
        );
        let receiver = Self::run_in(&self.server, move || {
            let socket = UdpSocket::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
            let _ = socket.set_read_timeout(Some(Duration::from_millis(300)));
            socket
        });
        let source: IpAddr = source.parse().unwrap_or_else(|e| panic!("{source}: {e}"));
        Self::run_in(&self.client, move || {
            let socket = UdpSocket::bind(SocketAddr::new(source, 0))
                .unwrap_or_else(|e| panic!("bind {source}: {e}"));
            for i in 0..count {
                let _ = socket.send_to(format!("datagram {i}").as_bytes(), bind);
                thread::sleep(Duration::from_millis(2));
            }
        });
        let mut received = 0;
        let mut buf = [0u8; 64];
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && received < count {
            match receiver.recv(&mut buf) {
                Ok(_) => received += 1,
                Err(_) => break,
            }
        }
        received
    }
}

/// A bounded UDP stream running in the background; see [`Pair::udp_stream`].
pub struct Stream {
    sender: thread::JoinHandle<usize>,
    receiver: thread::JoinHandle<usize>,
}

impl Stream {
    /// Waits for the stream to end; returns (sent, received).
    pub fn finish(self) -> (usize, usize) {
        let sent = self
            .sender
            .join()
            .unwrap_or_else(|_| panic!("sender panicked"));
        let received = self
            .receiver
            .join()
            .unwrap_or_else(|_| panic!("receiver panicked"));
        (sent, received)
    }
}

impl Pair {
    /// Starts sending `count` datagrams, one every `gap`, from `source` to
    /// `server:port`, counting what a socket there receives. Bounded in
    /// count and in time (the receiver gives up two seconds after the last).
    pub fn udp_stream(
        &self,
        source: &str,
        server: &str,
        port: u16,
        count: usize,
        gap: Duration,
    ) -> Stream {
        let target = SocketAddr::new(
            server.parse().unwrap_or_else(|e| panic!("{server}: {e}")),
            port,
        );
        let socket = Self::run_in(&self.server, move || {
            let socket = UdpSocket::bind(target).unwrap_or_else(|e| panic!("bind {target}: {e}"));
            let _ = socket.set_read_timeout(Some(Duration::from_millis(100)));
            socket
        });
        let limit = gap * count as u32 + Duration::from_secs(2);
        let receiver = thread::spawn(move || {
            let mut received = 0;
            let mut buf = [0u8; 64];
            let started = Instant::now();
            let mut last = Instant::now();
            while received < count
                && started.elapsed() < limit
                && last.elapsed() < Duration::from_secs(2)
            {
                if socket.recv(&mut buf).is_ok() {
                    received += 1;
                    last = Instant::now();
                }
            }
            received
        });
        let source: IpAddr = source.parse().unwrap_or_else(|e| panic!("{source}: {e}"));
        let path = format!("/var/run/netns/{}", self.client);
        let sender = thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("cannot enter {path}: {e}"));
            let socket = UdpSocket::bind(SocketAddr::new(source, 0))
                .unwrap_or_else(|e| panic!("bind {source}: {e}"));
            let mut sent = 0;
            for i in 0..count {
                if socket.send_to(format!("{i}").as_bytes(), target).is_ok() {
                    sent += 1;
                }
                thread::sleep(gap);
            }
            sent
        });
        Stream { sender, receiver }
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.server, &self.client] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
