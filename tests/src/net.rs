//! Network namespaces, veth pairs and bridges for the packet-fault tests,
//! and the traffic tools run inside them (ping, a UDP counter, iperf3,
//! an HTTP server and curl).

use std::{
    fs::File,
    os::fd::AsFd as _,
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use aya::programs::{SchedClassifier, TcAttachType};
use serde_json::Value;

use crate::{TestCgroup, counts, helper, unique};

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Self {
        let name = unique(prefix);
        sh_ok("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> args...`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        sh_ok("ip", &full);
    }

    /// Runs a program in the namespace and waits for it (at most
    /// [`RUN_LIMIT`]: a stuck tool fails the test instead of hanging it).
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        let out = Command::new("timeout")
            .args(["--kill-after=5", &RUN_LIMIT.as_secs().to_string()])
            .args(["ip", "netns", "exec", &self.name, program])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {program} in {}: {e}", self.name));
        assert!(
            !matches!(out.status.code(), Some(124 | 137)),
            "{program} {args:?} in {} still running after {RUN_LIMIT:?}: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs a program in the namespace; panics unless it succeeds; stdout.
    pub fn run_ok(&self, program: &str, args: &[&str]) -> String {
        let out = self.run(program, args);
        assert!(
            out.status.success(),
            "{program} {args:?} in {}: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn spawn(&self, program: &str, args: &[&str]) -> Child {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {program} in {}: {e}", self.name))
    }

    /// The MAC address of `dev`, as `ip` prints it (`aa:bb:...`).
    pub fn mac(&self, dev: &str) -> String {
        self.run_ok("cat", &[&format!("/sys/class/net/{dev}/address")])
            .trim()
            .to_string()
    }

    /// The namespace's file, for `setns`.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// /proc/net/snmp counters of this namespace: ("Udp", "InCsumErrors").
    pub fn snmp(&self, proto: &str, field: &str) -> u64 {
        let text = self.run_ok("cat", &["/proc/net/snmp"]);
        let mut lines = text.lines().filter(|l| l.starts_with(&format!("{proto}:")));
        let (Some(head), Some(vals)) = (lines.next(), lines.next()) else {
            panic!("no {proto} in /proc/net/snmp");
        };
        let i = head
            .split_whitespace()
            .position(|h| h == field)
            .unwrap_or_else(|| panic!("no {proto} {field}"));
        vals.split_whitespace()
            .nth(i)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Everything attached to `dev` that a fault injector could leave
    /// behind: qdiscs, clsact filters, XDP, tcx programs.
    pub fn attachments(&self, dev: &str) -> Attachments {
        let tc = |args: &[&str]| self.run_ok("tc", args).trim().to_string();
        let link = self.run_ok("ip", &["-d", "link", "show", "dev", dev]);
        let ns = File::open(self.path()).expect("netns file");
        let dev_name = std::ffi::CString::new(dev).expect("no NUL in device names");
        let tcx = std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                [TcAttachType::Ingress, TcAttachType::Egress]
                    .iter()
                    .map(|t| {
                        SchedClassifier::query_tcx(&dev_name, *t)
                            .map(|(_, progs)| {
                                progs
                                    .iter()
                                    .map(|p| p.name_as_str().unwrap_or("?").to_string())
                                    .collect::<Vec<_>>()
                                    .join(",")
                            })
                            .unwrap_or_else(|e| format!("query failed: {e}"))
                    })
                    .collect::<Vec<_>>()
            })
            .join()
            .expect("tcx query thread")
        });
        Attachments {
            qdiscs: tc(&["qdisc", "show", "dev", dev]),
            ingress_filters: tc(&["filter", "show", "dev", dev, "ingress"]),
            egress_filters: tc(&["filter", "show", "dev", dev, "egress"]),
            // Only the XDP mode word and the attached program, not the
            // link's state (attaching XDP to a veth bounces its carrier).
            xdp: link
                .split_whitespace()
                .collect::<Vec<_>>()
                .windows(5)
                .filter_map(|w| match w {
                    ["prog/xdp", "id", _, "name", name] => Some(format!("prog/xdp {name}")),
                    _ => None,
                })
                .chain(
                    link.split_whitespace()
                        .filter(|w| w.starts_with("xdp"))
                        .map(str::to_string),
                )
                .collect::<Vec<_>>()
                .join(" "),
            tcx,
        }
    }
}

impl Netns {
    /// [`Self::attachments`] once `settled` holds of them (polled for up
    /// to 15 s, room for a stalled TCG guest), or as they are then. After
    /// `remove` the daemon detaches a device's programs in the background:
    /// the fault's effect is over when the call returns, its programs are
    /// gone a moment later.
    pub fn attachments_when(
        &self,
        dev: &str,
        settled: impl Fn(&Attachments) -> bool,
    ) -> Attachments {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let now = self.attachments(dev);
            if settled(&now) || std::time::Instant::now() > deadline {
                return now;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes still inside would keep it alive; kill them first.
        let _ = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        // SAFETY: plain kill(2).
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            });
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// What sits on a device, as text, for before/after comparisons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachments {
    pub qdiscs: String,
    pub ingress_filters: String,
    pub egress_filters: String,
    pub xdp: String,
    /// Program names at tcx ingress and egress.
    pub tcx: Vec<String>,
}

impl Attachments {
    /// Whether any of our programs is attached.
    pub fn has_ours(&self) -> bool {
        let ours = |s: &str| s.contains("packet_");
        ours(&self.ingress_filters)
            || ours(&self.egress_filters)
            || self.tcx.iter().any(|t| ours(t))
            || !self.xdp.is_empty()
    }
}

/// Two namespaces joined by a veth pair, both ends named `eth0`, with the
/// `a` addresses of a [`Subnet`] on `a` and the `b` ones on `b`.
pub struct Link {
    pub a: Netns,
    pub b: Netns,
}

/// Upper bound for one tool run inside a namespace (iperf3 runs take 10 s).
pub const RUN_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

pub const A_IP: &str = "10.99.0.1";
pub const B_IP: &str = "10.99.0.2";
pub const A_IP6: &str = "fd99::1";
pub const B_IP6: &str = "fd99::2";

/// The addresses of a [`Link`]'s ends, on a /24 and a /64.
pub struct Subnet {
    pub a: &'static str,
    pub b: &'static str,
    pub a6: &'static str,
    pub b6: &'static str,
}

/// The tests' link: 10.99.0.1/24 + fd99::1/64 on `a`, .2 / ::2 on `b`.
pub const TEST_SUBNET: Subnet = Subnet {
    a: A_IP,
    b: B_IP,
    a6: A_IP6,
    b6: B_IP6,
};

impl Link {
    /// A link on [`TEST_SUBNET`].
    pub fn new(prefix: &str) -> Self {
        Self::on(prefix, &TEST_SUBNET)
    }

    /// A link on `subnet` (a benchmark's traffic generator writes its own
    /// addresses into the frames it sends); returns once `a` reaches `b`.
    pub fn on(prefix: &str, subnet: &Subnet) -> Self {
        let a = Netns::new(&format!("{prefix}-a"));
        let b = Netns::new(&format!("{prefix}-b"));
        a.ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &b.name,
        ]);
        for (ns, ip, ip6) in [(&a, subnet.a, subnet.a6), (&b, subnet.b, subnet.b6)] {
            ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
            ns.ip(&["addr", "add", &format!("{ip6}/64"), "dev", "eth0", "nodad"]);
            ns.ip(&["link", "set", "eth0", "up"]);
        }
        let link = Self { a, b };
        // Wait for the link (and neighbour discovery) to work.
        link.a.run_ok("ping", &["-c", "1", "-W", "2", subnet.b]);
        link
    }
}

/// A bridge in namespace `hub` (address 10.98.0.1/24) with one veth port
/// per "container" namespace (10.98.0.2, .3, ...), like a container
/// runtime's default network.
pub struct Bridge {
    pub hub: Netns,
    pub containers: Vec<Netns>,
}

pub const HUB_IP: &str = "10.98.0.1";

impl Bridge {
    pub fn new(prefix: &str, containers: usize) -> Self {
        let hub = Netns::new(&format!("{prefix}-hub"));
        hub.ip(&["link", "add", "br0", "type", "bridge"]);
        hub.ip(&["addr", "add", &format!("{HUB_IP}/24"), "dev", "br0"]);
        hub.ip(&["link", "set", "br0", "up"]);
        let mut list = Vec::new();
        for i in 0..containers {
            let c = Netns::new(&format!("{prefix}-c{i}"));
            let port = format!("port{i}");
            hub.ip(&[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &c.name,
            ]);
            hub.ip(&["link", "set", &port, "master", "br0", "up"]);
            c.ip(&[
                "addr",
                "add",
                &format!("10.98.0.{}/24", i + 2),
                "dev",
                "eth0",
            ]);
            c.ip(&["link", "set", "eth0", "up"]);
            c.run_ok("ping", &["-c", "1", "-W", "2", HUB_IP]);
            list.push(c);
        }
        Self {
            hub,
            containers: list,
        }
    }
}

/// Result of the UDP counting receiver.
#[derive(Debug, Clone, Default)]
pub struct UdpReport {
    pub received: u64,
    /// Datagrams whose payload differs from what the sender put in.
    pub changed: u64,
    /// Datagrams whose sequence number was seen before.
    pub duplicates: u64,
    /// Received per source address.
    pub by_source: Vec<(String, u64)>,
}

impl UdpReport {
    /// Datagrams received from `ip` (duplicates included).
    pub fn from_source(&self, ip: &str) -> u64 {
        self.by_source
            .iter()
            .find(|(s, _)| s == ip)
            .map_or(0, |(_, n)| *n)
    }
}

/// Starts the UDP receiver in `ns` on `port`; it stops after `idle` without
/// traffic. Call [`finish_udp`] to collect its report.
pub fn udp_receiver(ns: &Netns, port: u16, idle: Duration) -> Child {
    udp_receiver_within(ns, port, idle, Duration::from_secs(60))
}

/// A receiver that gives up after `first` without any datagram: for ports
/// whose traffic is expected to be dropped entirely.
pub fn udp_receiver_within(ns: &Netns, port: u16, idle: Duration, first: Duration) -> Child {
    let mut child = ns.spawn(
        "python3",
        &[
            helper("udp.py").to_str().expect("utf-8"),
            "recv",
            &port.to_string(),
            &format!("{}", idle.as_secs_f64()),
            &format!("{}", first.as_secs_f64()),
        ],
    );
    crate::wait_line(&mut child, "ready").expect("udp receiver ready");
    child
}

pub fn finish_udp(child: Child) -> UdpReport {
    let out = child.wait_with_output().expect("udp receiver");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "udp.py output {:?} / {:?}: {e}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    UdpReport {
        received: v["received"].as_u64().unwrap_or(0),
        changed: v["changed"].as_u64().unwrap_or(0),
        duplicates: v["duplicates"].as_u64().unwrap_or(0),
        by_source: counts(&v["by_source"]),
    }
}

/// Sends `count` numbered datagrams to host:port from `ns`, paced at `pps`.
pub fn udp_send(ns: &Netns, host: &str, port: u16, count: u64, pps: u64) {
    ns.run_ok(
        "python3",
        &[
            helper("udp.py").to_str().expect("utf-8"),
            "send",
            host,
            &port.to_string(),
            &count.to_string(),
            &pps.to_string(),
        ],
    );
}

/// The same sender, run inside a cgroup (and the namespace).
pub fn udp_send_in(cg: &TestCgroup, ns: &Netns, host: &str, port: u16, count: u64, pps: u64) {
    let out = cg.run(
        "ip",
        &[
            "netns",
            "exec",
            &ns.name,
            "python3",
            helper("udp.py").to_str().expect("utf-8"),
            "send",
            host,
            &port.to_string(),
            &count.to_string(),
            &pps.to_string(),
        ],
    );
    assert!(
        out.status.success(),
        "udp send in {}: {}",
        cg.rel,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Echo replies to `count` pings, each seen by its sequence number.
#[derive(Debug, Clone, Default)]
pub struct Pings {
    /// How many of the `count` requests were answered.
    pub received: u64,
    /// Their round-trip times in ms, in sequence order.
    pub rtts: Vec<f64>,
}

/// `count` pings that are all expected to be answered: ping waits for every
/// reply (up to 10 s more), so a reply a stalled guest makes late is not
/// taken for a lost one (plain `ping -c` waits only an interval or two RTTs
/// after the last request). A request really lost is not answered: ping
/// sends more, whose replies do not count.
pub fn ping_all(ns: &Netns, host: &str, count: u32, interval: &str) -> Pings {
    let gap: f64 = interval.parse().expect("an interval in seconds");
    let deadline = (f64::from(count) * gap).ceil() as u64 + 10;
    let out = ns.run(
        "ping",
        &[
            "-n",
            "-c",
            &count.to_string(),
            "-i",
            interval,
            "-w",
            &deadline.to_string(),
            host,
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut seen = std::collections::BTreeMap::new();
    for line in text.lines().filter(|l| !l.contains("DUP!")) {
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name)?.parse::<f64>().ok())
        };
        if let (Some(seq), Some(ms)) = (field("icmp_seq="), field("time=")) {
            let seq = seq as u32;
            if (1..=count).contains(&seq) {
                seen.entry(seq).or_insert(ms);
            }
        }
    }
    Pings {
        received: seen.len() as u64,
        rtts: seen.into_values().collect(),
    }
}

/// Ping statistics: (transmitted, received, average RTT in ms, mdev in ms).
pub fn ping(ns: &Netns, host: &str, count: u32, interval: &str) -> (u64, u64, f64, f64) {
    let out = ns.run(
        "ping",
        &[
            "-q",
            "-n",
            "-c",
            &count.to_string(),
            "-i",
            interval,
            "-W",
            "1",
            host,
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut tx = 0;
    let mut rx = 0;
    let (mut avg, mut mdev) = (0.0, 0.0);
    for line in text.lines() {
        if line.contains("packets transmitted") {
            let nums: Vec<u64> = line
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|t| t.parse().ok())
                .collect();
            tx = nums.first().copied().unwrap_or(0);
            rx = nums.get(1).copied().unwrap_or(0);
        }
        if let Some(stats) = line.split("= ").nth(1)
            && line.starts_with("rtt")
        {
            let v: Vec<f64> = stats
                .split(['/', ' '])
                .filter_map(|t| t.parse().ok())
                .collect();
            avg = v.get(1).copied().unwrap_or(0.0);
            mdev = v.get(3).copied().unwrap_or(0.0);
        }
    }
    (tx, rx, avg, mdev)
}

/// The benchmarks' 64-byte frame: Ethernet + IPv4 + UDP,
/// 10.97.0.1:1234 -> 10.97.0.2:9 (the bench's veth pair), with a valid
/// IPv4 header checksum. Shared by the AF_PACKET and XDP generators.
pub fn bench_frame(src: [u8; 6], dst: [u8; 6]) -> [u8; 64] {
    let mut f = [0u8; 64];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&50u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[10, 97, 0, 1]);
    ip[16..20].copy_from_slice(&[10, 97, 0, 2]);
    let mut sum: u32 = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    let udp = &mut f[34..42];
    udp[0..2].copy_from_slice(&1234u16.to_be_bytes());
    udp[2..4].copy_from_slice(&9u16.to_be_bytes());
    udp[4..6].copy_from_slice(&30u16.to_be_bytes());
    f
}

/// A MAC address in its usual notation (`aa:bb:cc:dd:ee:ff`).
pub fn parse_mac(s: &str) -> anyhow::Result<[u8; 6]> {
    let v: Vec<u8> = s
        .split(':')
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<Result<_, _>>()?;
    v.try_into()
        .map_err(|_| anyhow::anyhow!("bad MAC address {s}"))
}

fn sh_ok(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
