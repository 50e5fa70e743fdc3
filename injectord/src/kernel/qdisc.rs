//! Qdiscs and tc filters over rtnetlink: a device's root qdisc (read,
//! replaced, deleted), its clsact qdisc, and the filters on clsact.
//!
//! The daemon speaks to the kernel directly rather than running tc(8): no
//! fork and exec per operation on the inject path, and no dependency on
//! iproute2 being installed.
//!
//! A netlink socket belongs to the network namespace of the thread that
//! opens it, so [`Rtnl::open`] is called inside `NsHandle::run` (or the
//! reaper's `setns`), never outside and carried in. Every call blocks (a
//! send, then receives of at most [`ANSWER_LIMIT`] each): callers are on
//! blocking threads (the request handlers' `spawn_blocking`, the reaper,
//! start-up), never on the async runtime.
//!
//! Requests are built with netlink-packet-route. Answers are read leniently:
//! only the tcmsg header and `TCA_KIND`. A qdisc dump lists every device of
//! the namespace, and one attribute the crate cannot decode (an exotic
//! qdisc's options, a newer kernel's statistics) must not fail a lookup that
//! needs none of it.

use std::{fmt, io, time::Duration};

use netlink_packet_core::{
    DefaultNla, DoneBuffer, ErrorBuffer, NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_CREATE,
    NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR,
    NLMSG_NOOP, NLMSG_OVERRUN, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NlasIterator, parse_string,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{TcAttribute, TcHandle, TcHeader, TcMessage, TcOption},
};
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};

/// How long the kernel may take to answer one receive. It answers in
/// microseconds; a namespace whose RTNL lock is held for long must still
/// not hold a request (or the reaper) for good. (A send waiting for that
/// lock cannot be bounded: the kernel serves rtnetlink requests in the
/// sender's `sendmsg`. tc(8), which this replaces, blocked the same way.)
pub const ANSWER_LIMIT: Duration = Duration::from_secs(10);

/// The root of a device's qdisc tree (`TC_H_ROOT`).
pub const ROOT: u32 = 0xFFFF_FFFF;
/// The clsact (and ingress) qdisc's parent (`TC_H_CLSACT`).
pub const CLSACT_PARENT: u32 = 0xFFFF_FFF1;
/// clsact's handle, `ffff:` (`TC_H_MAKE(TC_H_CLSACT, 0)`).
const CLSACT_HANDLE: u32 = 0xFFFF_0000;
/// Filters on clsact's ingress and egress hooks (`TC_H_MIN_INGRESS`,
/// `TC_H_MIN_EGRESS` under `TC_H_CLSACT`).
const CLSACT_INGRESS: u32 = 0xFFFF_FFF2;
const CLSACT_EGRESS: u32 = 0xFFFF_FFF3;

/// `TCA_KIND`, the qdisc's or filter's kind (the crate keeps its constant
/// private).
const TCA_KIND: u16 = 1;
/// `sizeof(struct tcmsg)`.
const TCMSG_LEN: usize = 20;
/// `NLMSGERR_ATTR_MSG`: the extended ack's text, such as "Specified qdisc
/// kind is unknown".
const NLMSGERR_ATTR_MSG: u16 = 1;
/// Dumps the kernel marked interrupted (the set changed under it) are
/// retried this many times before the last one is taken as it is.
const DUMP_TRIES: usize = 3;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// A device, or the state asked about: "device eth0 not found".
    #[error("{0} not found")]
    NotFound(String),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("no answer from the kernel within {:?}", ANSWER_LIMIT)]
    Timeout,
    /// The kernel refused: its errno (positive) and, when it said one, its
    /// extended ack message.
    #[error("kernel said {}", KernelSaid(.errno, .message))]
    Kernel { errno: i32, message: Option<String> },
    #[error("malformed answer from the kernel: {0}")]
    Malformed(String),
    /// A request this module will not make.
    #[error("not sent: {0}")]
    NotSent(&'static str),
}

impl NetlinkError {
    fn io(what: &'static str, source: io::Error) -> Self {
        Self::Io { what, source }
    }

    /// The kernel's errno, if it refused.
    pub fn errno(&self) -> Option<nix::errno::Errno> {
        match self {
            Self::Kernel { errno, .. } => Some(nix::errno::Errno::from_raw(*errno)),
            _ => None,
        }
    }

    /// Whether the device or the object asked about does not exist.
    pub fn is_gone(&self) -> bool {
        matches!(self, Self::NotFound(_))
            || matches!(
                self.errno(),
                Some(nix::errno::Errno::ENODEV | nix::errno::Errno::ENOENT)
            )
    }
}

/// "ENOENT (Specified qdisc kind is unknown)", or the errno's description
/// when the kernel gave no message.
struct KernelSaid<'a>(&'a i32, &'a Option<String>);

impl fmt::Display for KernelSaid<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let errno = nix::errno::Errno::from_raw(*self.0);
        match self.1 {
            Some(message) => write!(f, "{errno:?} ({message})"),
            None => write!(f, "{errno:?} ({})", errno.desc()),
        }
    }
}

/// The index of the device `name` in the calling thread's namespace.
pub fn ifindex(name: &str) -> Result<u32, NetlinkError> {
    nix::net::if_::if_nametoindex(name).map_err(|e| match e {
        nix::errno::Errno::ENODEV => NetlinkError::NotFound(format!("device {name}")),
        e => NetlinkError::io("looking up a device index", e.into()),
    })
}

/// A qdisc as the kernel lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Qdisc {
    pub kind: String,
    pub handle: u32,
}

impl Qdisc {
    /// Default qdiscs are made by the kernel with handle 0 (noqueue on
    /// virtual devices, pfifo_fast/fq_codel/mq per `net.core.default_qdisc`,
    /// noop on a device that is down); a configured one has a handle.
    pub fn is_default(&self) -> bool {
        self.handle == 0
    }

    /// The handle as tc(8) writes it: `0:`, `8001:`, `1:2`.
    pub fn handle_text(&self) -> String {
        let (major, minor) = (self.handle >> 16, self.handle & 0xFFFF);
        if minor == 0 {
            format!("{major:x}:")
        } else {
            format!("{major:x}:{minor:x}")
        }
    }
}

/// A qdisc option that is a u32 attribute inside `TCA_OPTIONS`, such as
/// fq's `TCA_FQ_PLIMIT`: (attribute type, value).
pub type U32Option = (u16, u32);

/// An rtnetlink socket in the namespace of the thread that opened it.
pub struct Rtnl {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

/// What a request got back: the payloads of the kernel's messages (for a
/// dump), and whether it marked the dump interrupted.
#[derive(Default)]
struct Answer {
    payloads: Vec<Vec<u8>>,
    interrupted: bool,
}

impl Rtnl {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, NetlinkError> {
        let mut socket = Socket::new(NETLINK_ROUTE)
            .map_err(|e| NetlinkError::io("opening an rtnetlink socket", e))?;
        socket
            .bind_auto()
            .map_err(|e| NetlinkError::io("binding the rtnetlink socket", e))?;
        let limit = nix::sys::time::TimeVal::new(ANSWER_LIMIT.as_secs() as _, 0);
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::ReceiveTimeout, &limit)
            .map_err(|e| NetlinkError::io("setting SO_RCVTIMEO", e.into()))?;
        // The kernel's own words on a refusal ("Specified qdisc kind is
        // unknown"), without the request echoed back. Both exist since
        // Linux 4.12; without them errors are a bare errno.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        Ok(Self {
            socket,
            seq: 0,
            // Dump answers come in datagrams of at most 32 KiB unless the
            // receive buffer asks for more; this is room enough.
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    /// The device's root qdisc. A device that is down has the kernel's
    /// built-in noop qdisc, which dumps leave out: that is reported as a
    /// default `noop`.
    pub fn root_qdisc(&mut self, ifindex: u32) -> Result<Qdisc, NetlinkError> {
        Ok(self
            .qdiscs(ifindex, ROOT)?
            .into_iter()
            .next()
            .unwrap_or_else(|| Qdisc {
                kind: "noop".into(),
                handle: 0,
            }))
    }

    /// The device's clsact qdisc, if it has one.
    pub fn clsact(&mut self, ifindex: u32) -> Result<Option<Qdisc>, NetlinkError> {
        Ok(self
            .qdiscs(ifindex, CLSACT_PARENT)?
            .into_iter()
            .find(|q| q.kind == "clsact"))
    }

    /// The device's qdiscs under `parent` (RTM_GETQDISC dump, filtered
    /// here: the kernel lists every device's).
    fn qdiscs(&mut self, ifindex: u32, parent: u32) -> Result<Vec<Qdisc>, NetlinkError> {
        let answer = self.dump(|| {
            RouteNetlinkMessage::GetQueueDiscipline(TcMessage::with_index(ifindex as i32))
        })?;
        let mut found = Vec::new();
        for payload in &answer.payloads {
            let (header, kind) = parse_tc(payload)?;
            if header.index as u32 == ifindex && u32::from(header.parent) == parent {
                found.push(Qdisc {
                    kind: kind.unwrap_or_default(),
                    handle: header.handle.into(),
                });
            }
        }
        Ok(found)
    }

    /// Puts a `kind` qdisc at the device's root with `options`
    /// (RTM_NEWQDISC): in place of what is there with `replace`
    /// (NLM_F_REPLACE), else only if the root has the default
    /// (NLM_F_EXCL).
    pub fn set_root(
        &mut self,
        ifindex: u32,
        kind: &str,
        options: &[U32Option],
        replace: bool,
    ) -> Result<(), NetlinkError> {
        let mut msg = TcMessage::with_index(ifindex as i32);
        msg.header.parent = TcHandle::from(ROOT);
        msg.attributes.push(TcAttribute::Kind(kind.to_string()));
        if !options.is_empty() {
            // TCA_OPTIONS nests the qdisc's own attributes; the crate has
            // no types for most qdiscs (fq among them), so each goes as a
            // raw attribute: its type and a native-endian u32.
            msg.attributes.push(TcAttribute::Options(
                options
                    .iter()
                    .map(|&(kind, value)| {
                        TcOption::Other(DefaultNla::new(kind, value.to_ne_bytes().to_vec()))
                    })
                    .collect(),
            ));
        }
        let how = if replace { NLM_F_REPLACE } else { NLM_F_EXCL };
        self.act(
            RouteNetlinkMessage::NewQueueDiscipline(msg),
            NLM_F_CREATE | how,
        )
    }

    /// Deletes the device's root qdisc if its handle is still `handle`
    /// (RTM_DELQDISC; the kernel checks the handle, so a qdisc put there by
    /// someone else since is refused, not deleted). The kernel restores
    /// the default.
    pub fn delete_root(&mut self, ifindex: u32, handle: u32) -> Result<(), NetlinkError> {
        let mut msg = TcMessage::with_index(ifindex as i32);
        msg.header.parent = TcHandle::from(ROOT);
        msg.header.handle = TcHandle::from(handle);
        self.act(RouteNetlinkMessage::DelQueueDiscipline(msg), 0)
    }

    /// Deletes the device's clsact qdisc, with every filter on it.
    pub fn delete_clsact(&mut self, ifindex: u32) -> Result<(), NetlinkError> {
        let mut msg = TcMessage::with_index(ifindex as i32);
        msg.header.parent = TcHandle::from(CLSACT_PARENT);
        msg.header.handle = TcHandle::from(CLSACT_HANDLE);
        msg.attributes.push(TcAttribute::Kind("clsact".into()));
        self.act(RouteNetlinkMessage::DelQueueDiscipline(msg), 0)
    }

    /// How many filters (anyone's) are on one hook of the device's clsact
    /// qdisc (RTM_GETTFILTER dump; 0 when there is no clsact).
    pub fn clsact_filters(&mut self, ifindex: u32, ingress: bool) -> Result<usize, NetlinkError> {
        let parent = if ingress {
            CLSACT_INGRESS
        } else {
            CLSACT_EGRESS
        };
        let answer = self.dump(|| {
            let mut msg = TcMessage::with_index(ifindex as i32);
            msg.header.parent = TcHandle::from(parent);
            RouteNetlinkMessage::GetTrafficFilter(msg)
        })?;
        Ok(answer.payloads.len())
    }

    /// Deletes the filters at `priority` on one hook of the device's clsact
    /// qdisc, whatever their protocol (RTM_DELTFILTER).
    pub fn delete_clsact_filter(
        &mut self,
        ifindex: u32,
        ingress: bool,
        priority: u16,
    ) -> Result<(), NetlinkError> {
        // Priority 0 would be no priority at all: the kernel flushes the
        // whole chain, everyone's filters with it.
        if priority == 0 {
            return Err(NetlinkError::NotSent(
                "deleting the filters at priority 0 would delete all of them",
            ));
        }
        let mut msg = TcMessage::with_index(ifindex as i32);
        msg.header.parent = TcHandle::from(if ingress {
            CLSACT_INGRESS
        } else {
            CLSACT_EGRESS
        });
        // tcm_info: the priority in the upper half, the protocol (0: any)
        // in the lower.
        msg.header.info = u32::from(priority) << 16;
        self.act(RouteNetlinkMessage::DelTrafficFilter(msg), 0)
    }

    /// A request that changes something: done when the kernel acks it.
    fn act(&mut self, message: RouteNetlinkMessage, flags: u16) -> Result<(), NetlinkError> {
        self.request(message, NLM_F_ACK | flags).map(drop)
    }

    /// A dump, tried again while the kernel marks it interrupted.
    fn dump(&mut self, message: impl Fn() -> RouteNetlinkMessage) -> Result<Answer, NetlinkError> {
        let mut tries = 0;
        loop {
            let answer = self.request(message(), NLM_F_DUMP)?;
            tries += 1;
            if !answer.interrupted || tries == DUMP_TRIES {
                return Ok(answer);
            }
        }
    }

    /// Sends one request and reads its answer: the kernel's messages until
    /// its ack (NLMSG_ERROR with code 0) or the end of a dump (NLMSG_DONE).
    fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Answer, NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let mut bytes = vec![0; packet.buffer_len()];
        packet.serialize(&mut bytes);
        self.socket
            .send(&bytes, 0)
            .map_err(|e| NetlinkError::io("sending to the kernel", e))?;
        let mut answer = Answer::default();
        loop {
            self.buf.clear();
            // MSG_TRUNC: the datagram's real length, so a truncated one is
            // noticed rather than misread.
            let len = match self.socket.recv(&mut self.buf, libc::MSG_TRUNC) {
                Ok(len) => len,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(NetlinkError::Timeout);
                }
                Err(e) => return Err(NetlinkError::io("receiving from the kernel", e)),
            };
            if len > self.buf.len() {
                return Err(NetlinkError::Malformed(format!(
                    "a {len}-byte datagram does not fit {} bytes",
                    self.buf.capacity()
                )));
            }
            if let Some(end) = read_datagram(&self.buf[..len], self.seq, &mut answer)? {
                return end.map(|()| answer);
            }
        }
    }
}

/// Reads the messages of one datagram into `answer`. `Some` once the
/// answer is complete: `Ok` for an ack or the end of a dump, `Err` for a
/// refusal.
fn read_datagram(
    mut data: &[u8],
    seq: u32,
    answer: &mut Answer,
) -> Result<Option<Result<(), NetlinkError>>, NetlinkError> {
    let malformed = |e: netlink_packet_core::DecodeError| NetlinkError::Malformed(e.to_string());
    while !data.is_empty() {
        let msg = NetlinkBuffer::new_checked(data).map_err(malformed)?;
        let len = msg.length() as usize;
        // A message from an earlier request that timed out.
        if msg.sequence_number() == seq {
            match msg.message_type() {
                NLMSG_ERROR => {
                    let e = ErrorBuffer::new_checked(msg.payload()).map_err(malformed)?;
                    return Ok(Some(match e.code() {
                        None => Ok(()),
                        Some(code) => Err(NetlinkError::Kernel {
                            errno: -code.get(),
                            message: error_message(msg.flags(), e.payload()),
                        }),
                    }));
                }
                NLMSG_DONE => {
                    let done = DoneBuffer::new_checked(msg.payload()).map_err(malformed)?;
                    return Ok(Some(match done.code() {
                        code if code < 0 => Err(NetlinkError::Kernel {
                            errno: -code,
                            message: ack_message(msg.flags(), done.extended_ack()),
                        }),
                        _ => Ok(()),
                    }));
                }
                NLMSG_NOOP => {}
                NLMSG_OVERRUN => {
                    return Err(NetlinkError::Malformed(
                        "the kernel reported an overrun".into(),
                    ));
                }
                _ => {
                    answer.interrupted |= msg.flags() & NLM_F_DUMP_INTR != 0;
                    answer.payloads.push(msg.payload().to_vec());
                }
            }
        }
        // Messages are 4-byte aligned within a datagram.
        data = data.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    Ok(None)
}

/// The extended ack's message of an NLMSG_ERROR, whose payload after the
/// code is the request's header (all of the request unless capped), then
/// the ack's attributes.
fn error_message(flags: u16, after_code: &[u8]) -> Option<String> {
    let request_len = if flags & NLM_F_CAPPED != 0 {
        16
    } else {
        let len = u32::from_ne_bytes(after_code.get(..4)?.try_into().ok()?);
        (len as usize).next_multiple_of(4)
    };
    ack_message(flags, after_code.get(request_len..)?)
}

/// `NLMSGERR_ATTR_MSG` among an extended ack's attributes.
fn ack_message(flags: u16, attributes: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    NlasIterator::new(attributes)
        .filter_map(Result::ok)
        .find(|nla| nla.kind() == NLMSGERR_ATTR_MSG)
        .and_then(|nla| parse_string(nla.value()).ok())
        .filter(|m| !m.is_empty())
}

/// A tc message's header and `TCA_KIND`, nothing else.
fn parse_tc(payload: &[u8]) -> Result<(TcHeader, Option<String>), NetlinkError> {
    let header = TcHeader::parse(payload).map_err(|e| NetlinkError::Malformed(e.to_string()))?;
    let kind = NlasIterator::new(payload.get(TCMSG_LEN..).unwrap_or_default())
        .filter_map(Result::ok)
        .find(|nla| nla.kind() == TCA_KIND)
        .and_then(|nla| parse_string(nla.value()).ok());
    Ok((header, kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_read_as_tc_writes_them() {
        let q = |handle| Qdisc {
            kind: "fq".into(),
            handle,
        };
        assert_eq!(q(0).handle_text(), "0:");
        assert!(q(0).is_default());
        assert_eq!(q(0x8001_0000).handle_text(), "8001:");
        assert_eq!(q(0x0001_0002).handle_text(), "1:2");
        assert!(!q(0x8001_0000).is_default());
    }

    #[test]
    fn refusals_name_the_errno_and_the_kernels_words() {
        let e = NetlinkError::Kernel {
            errno: libc::ENOENT,
            message: Some("Specified qdisc kind is unknown".into()),
        };
        assert_eq!(
            e.to_string(),
            "kernel said ENOENT (Specified qdisc kind is unknown)"
        );
        let e = NetlinkError::Kernel {
            errno: libc::EOPNOTSUPP,
            message: None,
        };
        assert_eq!(
            e.to_string(),
            "kernel said EOPNOTSUPP (Operation not supported on transport endpoint)"
        );
        let gone = NetlinkError::NotFound("device x".into());
        assert_eq!(gone.to_string(), "device x not found");
        assert!(gone.is_gone());
    }

    /// Runs `f` in a new network namespace, on a thread of its own so that
    /// no other test moves; `None` (skipped) unless root.
    fn in_new_netns<R: Send>(f: impl FnOnce() -> R + Send) -> Option<R> {
        if !nix::unistd::geteuid().is_root() {
            return None;
        }
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
                f()
            })
            .join()
            .expect("test thread")
        })
        .into()
    }

    #[test]
    fn qdiscs_and_filters_in_a_throwaway_namespace() {
        in_new_netns(|| {
            assert!(matches!(
                ifindex("nosuchdev0"),
                Err(NetlinkError::NotFound(_))
            ));
            let lo = ifindex("lo").unwrap();
            let mut nl = Rtnl::open().unwrap();
            assert!(nl.root_qdisc(lo).unwrap().is_default());

            assert_eq!(nl.clsact(lo).unwrap(), None);
            aya::programs::tc::qdisc_add_clsact(lo).unwrap();
            assert_eq!(nl.clsact(lo).unwrap().unwrap().handle, CLSACT_HANDLE);
            assert_eq!(nl.clsact_filters(lo, true).unwrap(), 0);
            assert_eq!(nl.clsact_filters(lo, false).unwrap(), 0);
            assert!(nl.delete_clsact_filter(lo, true, 0).is_err());
            let missing = nl.delete_clsact_filter(lo, true, 49152).unwrap_err();
            assert!(missing.is_gone(), "{missing}");
            nl.delete_clsact(lo).unwrap();
            assert_eq!(nl.clsact(lo).unwrap(), None);

            // fq with options where the kernel has sch_fq; otherwise the
            // refusal must say why.
            match nl.set_root(lo, "fq", &[(1, 100_000), (2, 10_000)], true) {
                Ok(()) => {
                    let root = nl.root_qdisc(lo).unwrap();
                    assert_eq!(root.kind, "fq");
                    assert!(!root.is_default(), "{root:?}");
                    if let Ok(out) = std::process::Command::new("tc")
                        .args(["qdisc", "show", "dev", "lo", "root"])
                        .output()
                    {
                        let out = String::from_utf8_lossy(&out.stdout);
                        assert!(out.contains("limit 100000p flow_limit 10000p"), "{out}");
                    }
                    // Another handle than the root's: refused, not deleted.
                    assert!(nl.delete_root(lo, root.handle ^ 0x0001_0000).is_err());
                    nl.delete_root(lo, root.handle).unwrap();
                    assert!(nl.root_qdisc(lo).unwrap().is_default());
                }
                Err(e) => {
                    assert_eq!(e.errno(), Some(nix::errno::Errno::ENOENT), "{e}");
                    assert!(e.to_string().contains("unknown"), "{e}");
                }
            }
        });
    }
}
