//! Probes: each runs on a thread of its own (inside its network namespace,
//! entered with setns on that thread only), sampling at its interval until
//! told to stop, and sends every sample to the runner.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream, ToSocketAddrs as _, UdpSocket},
    os::{fd::AsFd as _, unix::process::CommandExt as _},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::Sender,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{
    kpi::Sample,
    plan::{
        CommandProbe, DnsProbe, DnsType, HttpProbe, IcmpProbe, Netns, Probe, ProbeId, ProbeKind,
        UdpProbe,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("probe {probe}: opening network namespace {path}: {source}")]
    Netns {
        probe: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("probe {probe}: cgroup {path}: {message}")]
    Cgroup {
        probe: String,
        path: PathBuf,
        message: String,
    },
    #[error("probe {probe}: starting its thread: {source}")]
    Thread {
        probe: String,
        source: std::io::Error,
    },
}

/// A running probe's thread.
pub struct Running {
    handle: JoinHandle<()>,
}

impl Running {
    pub fn join(self) {
        if self.handle.join().is_err() {
            tracing::error!("a probe thread panicked");
        }
    }
}

/// Starts `probe` on a thread of its own: samples (with times relative to
/// `epoch`) go to `tx` until `stop` is set. The namespace file and cgroup
/// are checked here, so a plan naming a missing one fails before anything
/// is injected.
pub fn start(
    id: ProbeId,
    probe: &Probe,
    cgroup2: Option<&std::path::Path>,
    epoch: Instant,
    stop: Arc<AtomicBool>,
    tx: Sender<(ProbeId, Sample)>,
) -> Result<Running, ProbeError> {
    let netns = match &probe.netns {
        Netns::Own => None,
        Netns::Path(p) => Some(File::open(p).map_err(|source| ProbeError::Netns {
            probe: probe.name.to_string(),
            path: p.clone(),
            source,
        })?),
    };
    let cgroup_procs = match &probe.cgroup {
        None => None,
        Some(c) => {
            let base = cgroup2.ok_or_else(|| ProbeError::Cgroup {
                probe: probe.name.to_string(),
                path: c.into(),
                message: "no cgroup2 mount in /proc/mounts".into(),
            })?;
            let dir = if c.starts_with('/') && std::path::Path::new(c).starts_with(base) {
                PathBuf::from(c)
            } else {
                base.join(c.trim_start_matches('/'))
            };
            let procs = dir.join("cgroup.procs");
            if !procs.exists() {
                return Err(ProbeError::Cgroup {
                    probe: probe.name.to_string(),
                    path: dir,
                    message: "no such cgroup".into(),
                });
            }
            Some(procs)
        }
    };
    let probe = probe.clone();
    let name = probe.name.to_string();
    let handle = std::thread::Builder::new()
        .name(format!("probe-{name}"))
        .spawn(move || {
            if let Some(ns) = netns
                && let Err(e) = nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            {
                tracing::error!(probe = %probe.name, error = %e, "setns failed: the probe reports every sample failed");
                sample_loop(&probe, epoch, &stop, |_| Err(format!("setns: {e}")), id, &tx);
                return;
            }
            let mut seq: u16 = 0;
            sample_loop(
                &probe,
                epoch,
                &stop,
                |timeout| {
                    seq = seq.wrapping_add(1);
                    once(&probe.kind, timeout, seq, cgroup_procs.as_ref())
                },
                id,
                &tx,
            );
        })
        .map_err(|source| ProbeError::Thread {
            probe: name,
            source,
        })?;
    Ok(Running { handle })
}

/// Samples at `probe.interval` (ticks missed while a sample ran are
/// skipped, not caught up) until `stop`.
fn sample_loop(
    probe: &Probe,
    epoch: Instant,
    stop: &AtomicBool,
    mut sample: impl FnMut(Duration) -> Result<(), String>,
    id: ProbeId,
    tx: &Sender<(ProbeId, Sample)>,
) {
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        let result = sample(probe.timeout);
        let latency = start.elapsed();
        // A probe call returns within its timeout, give or take the
        // scheduler; one that returned later failed all the same.
        let (ok, error) = match result {
            Ok(()) if latency <= probe.timeout => (true, None),
            Ok(()) => (false, Some("timeout".to_string())),
            Err(e) => (false, Some(e)),
        };
        let s = Sample {
            t: start.duration_since(epoch).as_secs_f64(),
            latency_s: latency.as_secs_f64(),
            ok,
            error,
        };
        if tx.send((id, s)).is_err() {
            return;
        }
        next += probe.interval;
        let now = Instant::now();
        while next < now {
            next += probe.interval;
        }
        // Sleep in short steps so a stop is seen promptly.
        while !stop.load(Ordering::Relaxed) {
            let left = next.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(Duration::from_millis(20)));
        }
    }
}

/// One sample of `kind`, within `timeout`.
fn once(
    kind: &ProbeKind,
    timeout: Duration,
    seq: u16,
    cgroup_procs: Option<&PathBuf>,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    match kind {
        ProbeKind::Http(h) if h.url.starts_with("https://") => https(h, timeout),
        ProbeKind::Http(h) => http(h, deadline),
        ProbeKind::Tcp(t) => {
            let addr = resolve(&t.address)?;
            TcpStream::connect_timeout(&addr, timeout)
                .map(drop)
                .map_err(|e| e.to_string())
        }
        ProbeKind::Udp(u) => udp(u, deadline),
        ProbeKind::Dns(d) => dns(d, deadline, seq),
        ProbeKind::Icmp(i) => icmp(i, deadline, seq),
        ProbeKind::Command(c) => command(c, deadline, cgroup_procs),
    }
}

fn left(deadline: Instant) -> Result<Duration, String> {
    let l = deadline.saturating_duration_since(Instant::now());
    if l.is_zero() {
        Err("timeout".into())
    } else {
        Ok(l)
    }
}

fn io_err(e: std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => "timeout".into(),
        _ => e.to_string(),
    }
}

fn resolve(address: &str) -> Result<SocketAddr, String> {
    address
        .to_socket_addrs()
        .map_err(|e| format!("resolving {address}: {e}"))?
        .next()
        .ok_or_else(|| format!("{address} resolves to nothing"))
}

fn http(h: &HttpProbe, deadline: Instant) -> Result<(), String> {
    let rest = h.url.trim_start_matches("http://");
    let (hostport, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let addr = if hostport.contains(':') && !hostport.ends_with(']') {
        resolve(hostport)?
    } else {
        resolve(&format!("{hostport}:80"))?
    };
    let mut s = TcpStream::connect_timeout(&addr, left(deadline)?).map_err(io_err)?;
    s.set_write_timeout(Some(left(deadline)?)).map_err(io_err)?;
    // One write, no Nagle: a request written in pieces waits for the
    // server's delayed ACK (40 ms on Linux) before its last piece leaves.
    s.set_nodelay(true).map_err(io_err)?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nUser-Agent: injectctl-experiment\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).map_err(io_err)?;
    let mut resp = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        s.set_read_timeout(Some(left(deadline)?)).map_err(io_err)?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => resp.extend_from_slice(&buf[..n]),
            Err(e) => return Err(io_err(e)),
        }
    }
    let head = String::from_utf8_lossy(&resp[..resp.len().min(64)]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {head:?}"))?;
    let ok = match h.expect_status {
        Some(want) => status == want,
        None => (200..400).contains(&status),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("HTTP {status}"))
    }
}

fn https(h: &HttpProbe, timeout: Duration) -> Result<(), String> {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-k",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
        ])
        .arg(format!("{:.3}", timeout.as_secs_f64()))
        .arg(&h.url)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running curl: {e}"))?;
    let status: u16 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    let ok = match h.expect_status {
        Some(want) => status == want,
        None => (200..400).contains(&status),
    };
    if ok {
        Ok(())
    } else if status == 0 {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    } else {
        Err(format!("HTTP {status}"))
    }
}

fn udp_socket(to: SocketAddr, deadline: Instant) -> Result<UdpSocket, String> {
    let bind = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let s = UdpSocket::bind(bind).map_err(io_err)?;
    s.connect(to).map_err(io_err)?;
    s.set_read_timeout(Some(left(deadline)?)).map_err(io_err)?;
    Ok(s)
}

fn udp(u: &UdpProbe, deadline: Instant) -> Result<(), String> {
    // A fresh socket (and port) per sample: a late reply to an earlier
    // request cannot pass for this one's.
    let s = udp_socket(resolve(&u.address)?, deadline)?;
    s.send(u.payload.as_bytes()).map_err(io_err)?;
    let mut buf = [0u8; 2048];
    let n = s.recv(&mut buf).map_err(io_err)?;
    match &u.expect {
        Some(want) if !String::from_utf8_lossy(&buf[..n]).contains(want.as_str()) => {
            Err(format!("reply without {want:?}"))
        }
        _ => Ok(()),
    }
}

/// A DNS query for `name` (type A or AAAA, recursion desired).
pub fn dns_query(id: u16, name: &str, record: DnsType) -> Vec<u8> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        q.push(label.len().min(63) as u8);
        q.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
    }
    q.push(0);
    let qtype: u16 = match record {
        DnsType::A => 1,
        DnsType::AAAA => 28,
    };
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    q
}

/// Whether a DNS response answers query `id`: `Ok(true)` with answers,
/// an error for an rcode or an empty answer, `Ok(false)` for another id.
pub fn dns_answered(resp: &[u8], id: u16) -> Result<bool, String> {
    if resp.len() < 12 {
        return Err("short DNS response".into());
    }
    if u16::from_be_bytes([resp[0], resp[1]]) != id || resp[2] & 0x80 == 0 {
        return Ok(false);
    }
    let rcode = resp[3] & 0x0f;
    if rcode != 0 {
        return Err(format!("rcode {rcode}"));
    }
    if u16::from_be_bytes([resp[6], resp[7]]) == 0 {
        return Err("no answer".into());
    }
    Ok(true)
}

fn dns(d: &DnsProbe, deadline: Instant, seq: u16) -> Result<(), String> {
    let server = if d.server.parse::<std::net::IpAddr>().is_ok() {
        SocketAddr::new(
            d.server
                .parse()
                .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
            53,
        )
    } else {
        resolve(&d.server)?
    };
    let s = udp_socket(server, deadline)?;
    let id = seq ^ (std::process::id() as u16);
    s.send(&dns_query(id, &d.name, d.record)).map_err(io_err)?;
    let mut buf = [0u8; 1500];
    loop {
        s.set_read_timeout(Some(left(deadline)?)).map_err(io_err)?;
        let n = s.recv(&mut buf).map_err(io_err)?;
        if dns_answered(&buf[..n], id)? {
            return Ok(());
        }
    }
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn icmp(i: &IcmpProbe, deadline: Instant, seq: u16) -> Result<(), String> {
    use std::os::fd::{FromRawFd as _, OwnedFd};
    // SAFETY: socket(2); the descriptor is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMP,
        )
    };
    if fd < 0 {
        return Err(format!(
            "raw ICMP socket: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: fd is a new descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let sock = UdpSocket::from(fd);
    let ident = (std::process::id() as u16) ^ 0x5a5a;
    let mut pkt = vec![8u8, 0, 0, 0];
    pkt.extend_from_slice(&ident.to_be_bytes());
    pkt.extend_from_slice(&seq.to_be_bytes());
    pkt.extend_from_slice(b"injectord-experiment");
    let c = checksum(&pkt);
    pkt[2..4].copy_from_slice(&c.to_be_bytes());
    sock.send_to(&pkt, SocketAddr::new(i.host.into(), 0))
        .map_err(io_err)?;
    let mut buf = [0u8; 1500];
    loop {
        sock.set_read_timeout(Some(left(deadline)?))
            .map_err(io_err)?;
        let (n, from) = sock.recv_from(&mut buf).map_err(io_err)?;
        if from.ip() != std::net::IpAddr::V4(i.host) || n < 20 {
            continue;
        }
        let ihl = usize::from(buf[0] & 0x0f) * 4;
        let icmp = &buf[ihl.min(n)..n];
        if icmp.len() >= 8
            && icmp[0] == 0
            && u16::from_be_bytes([icmp[4], icmp[5]]) == ident
            && u16::from_be_bytes([icmp[6], icmp[7]]) == seq
        {
            return Ok(());
        }
    }
}

fn command(
    c: &CommandProbe,
    deadline: Instant,
    cgroup_procs: Option<&PathBuf>,
) -> Result<(), String> {
    let mut cmd = Command::new(&c.argv[0]);
    cmd.args(&c.argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    if let Some(procs) = cgroup_procs {
        let path = std::ffi::CString::new(procs.as_os_str().as_encoded_bytes())
            .map_err(|_| "a cgroup path with a NUL".to_string())?;
        // SAFETY: between fork and exec only async-signal-safe calls:
        // open, write, close on a path made before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let r = libc::write(fd, b"0\n".as_ptr().cast(), 2);
                libc::close(fd);
                if r < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().map_err(|e| format!("{}: {e}", c.argv[0]))?;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("{status}")),
            Ok(None) if Instant::now() >= deadline => {
                // SAFETY: kill(2) on the child's own process group.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                return Err("timeout".into());
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_queries_and_answers() {
        let q = dns_query(0x1234, "svc.test.", DnsType::A);
        assert_eq!(&q[..2], &[0x12, 0x34]);
        assert_eq!(&q[12..22], b"\x03svc\x04test\x00");
        assert_eq!(&q[22..], &[0, 1, 0, 1]);
        let mut resp = q.clone();
        resp[2] |= 0x80;
        assert_eq!(dns_answered(&resp, 0x1234), Err("no answer".into()));
        resp[7] = 1;
        assert_eq!(dns_answered(&resp, 0x1234), Ok(true));
        assert_eq!(dns_answered(&resp, 0x9999), Ok(false));
        resp[3] |= 3;
        assert_eq!(dns_answered(&resp, 0x1234), Err("rcode 3".into()));
    }

    #[test]
    fn icmp_checksum_verifies() {
        let mut pkt = vec![8u8, 0, 0, 0, 1, 2, 0, 7, b'x'];
        let c = checksum(&pkt);
        pkt[2..4].copy_from_slice(&c.to_be_bytes());
        assert_eq!(checksum(&pkt), 0);
    }

    #[test]
    fn samples_of_a_local_tcp_listener_and_a_closed_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t = Duration::from_millis(200);
        let tcp = |address: String| {
            ProbeKind::Tcp(crate::plan::TcpProbe {
                address,
                timeout: None,
            })
        };
        assert_eq!(once(&tcp(format!("127.0.0.1:{port}")), t, 1, None), Ok(()));
        drop(l);
        assert!(once(&tcp(format!("127.0.0.1:{port}")), t, 2, None).is_err());
        let cmd = |argv: &[&str]| {
            ProbeKind::Command(CommandProbe {
                argv: argv.iter().map(|s| s.to_string()).collect(),
                timeout: None,
            })
        };
        assert_eq!(once(&cmd(&["true"]), t, 3, None), Ok(()));
        assert!(once(&cmd(&["false"]), t, 4, None).is_err());
        assert_eq!(
            once(&cmd(&["sleep", "5"]), t, 5, None),
            Err("timeout".into())
        );
    }
}
