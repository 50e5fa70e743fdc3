//! The cgroup backend: cgroup programs with `bpf_set_retval`, on every
//! kernel we support. Each hook's programs are attached to a target
//! cgroup while a fault there uses them (see `kernel::cgroup_links`);
//! connect() goes through the connect family's rule table.

use std::sync::Arc;

use aya::programs::{CgroupSock, CgroupSockAddr, CgroupSockopt, CgroupSysctl, Program};
use aya_obj::programs::{CgroupSockAddrAttachType, CgroupSockAttachType, CgroupSockoptAttachType};
use injector_common::syscall::{
    SYSCALL_BIND4, SYSCALL_BIND6, SYSCALL_GETSOCKOPT, SYSCALL_SENDMSG4, SYSCALL_SENDMSG6,
    SYSCALL_SETSOCKOPT, SYSCALL_SOCK_CREATE, SYSCALL_SYSCTL,
};

use super::table::CgroupHook;
use crate::{
    error::{Error, chain},
    family::{Request, connect::ConnectRules},
    kernel::{
        Kernel,
        cgroup_links::{CgroupLinks, CgroupProgram, SysctlAttach},
    },
    target::Cgroup,
};

static SOCK_CREATE: [(&str, CgroupSockAttachType); 1] =
    [(SYSCALL_SOCK_CREATE, CgroupSockAttachType::SockCreate)];
static BIND: [(&str, CgroupSockAddrAttachType); 2] = [
    (SYSCALL_BIND4, CgroupSockAddrAttachType::Bind4),
    (SYSCALL_BIND6, CgroupSockAddrAttachType::Bind6),
];
static UDP_SEND: [(&str, CgroupSockAddrAttachType); 2] = [
    (SYSCALL_SENDMSG4, CgroupSockAddrAttachType::UDPSendMsg4),
    (SYSCALL_SENDMSG6, CgroupSockAddrAttachType::UDPSendMsg6),
];
static GETSOCKOPT: [(&str, CgroupSockoptAttachType); 1] =
    [(SYSCALL_GETSOCKOPT, CgroupSockoptAttachType::Get)];
static SETSOCKOPT: [(&str, CgroupSockoptAttachType); 1] =
    [(SYSCALL_SETSOCKOPT, CgroupSockoptAttachType::Set)];
static SYSCTL: [(&str, SysctlAttach); 1] = [(SYSCALL_SYSCTL, SysctlAttach)];

pub struct CgroupHooks {
    /// Why the programs were refused, if they were.
    ready: Result<(), String>,
    sock_create: CgroupLinks<CgroupSock>,
    bind: CgroupLinks<CgroupSockAddr>,
    udp_send: CgroupLinks<CgroupSockAddr>,
    getsockopt: CgroupLinks<CgroupSockopt>,
    setsockopt: CgroupLinks<CgroupSockopt>,
    sysctl: CgroupLinks<CgroupSysctl>,
    connect: Option<ConnectRules>,
}

impl CgroupHooks {
    pub fn load(kernel: &mut Kernel, connect: Option<ConnectRules>) -> Self {
        Self {
            ready: load_programs(kernel),
            sock_create: CgroupLinks::new(&SOCK_CREATE),
            bind: CgroupLinks::new(&BIND),
            udp_send: CgroupLinks::new(&UDP_SEND),
            getsockopt: CgroupLinks::new(&GETSOCKOPT),
            setsockopt: CgroupLinks::new(&SETSOCKOPT),
            sysctl: CgroupLinks::new(&SYSCTL),
            connect,
        }
    }

    pub fn ready(&self, hook: CgroupHook) -> Result<(), String> {
        if hook == CgroupHook::Connect {
            return self.connect.as_ref().map(drop).ok_or_else(|| {
                "the connect family's programs were refused (see its capabilities)".to_string()
            });
        }
        self.ready.clone()
    }

    pub fn connect(&self) -> Option<&ConnectRules> {
        self.connect.as_ref()
    }

    /// The hook's programs attached to `cgroup`, now if needed.
    pub fn attach(
        &mut self,
        req: &mut Request<'_>,
        cgroup: &Cgroup,
        hook: CgroupHook,
    ) -> Result<Arc<dyn Send + Sync>, Error> {
        let dir = req.cgroup_dir(cgroup);
        let kernel = &mut *req.kernel;
        Ok(match hook {
            CgroupHook::SockCreate => self.sock_create.acquire(kernel, cgroup, &dir)?,
            CgroupHook::Bind => self.bind.acquire(kernel, cgroup, &dir)?,
            CgroupHook::UdpSend => self.udp_send.acquire(kernel, cgroup, &dir)?,
            CgroupHook::Getsockopt => self.getsockopt.acquire(kernel, cgroup, &dir)?,
            CgroupHook::Setsockopt => self.setsockopt.acquire(kernel, cgroup, &dir)?,
            CgroupHook::SysctlRead | CgroupHook::SysctlWrite => {
                self.sysctl.acquire(kernel, cgroup, &dir)?
            }
            CgroupHook::Connect => {
                return Err(Error::Internal(
                    "connect rules go through ConnectRules".into(),
                ));
            }
        })
    }
}

fn load_programs(kernel: &mut Kernel) -> Result<(), String> {
    load::<CgroupSock>(kernel, &[SYSCALL_SOCK_CREATE])?;
    load::<CgroupSockAddr>(
        kernel,
        &[
            SYSCALL_BIND4,
            SYSCALL_BIND6,
            SYSCALL_SENDMSG4,
            SYSCALL_SENDMSG6,
        ],
    )?;
    load::<CgroupSockopt>(kernel, &[SYSCALL_GETSOCKOPT, SYSCALL_SETSOCKOPT])?;
    load::<CgroupSysctl>(kernel, &[SYSCALL_SYSCTL])
}

/// Loads the named programs of type `P`.
fn load<P>(kernel: &mut Kernel, names: &[&str]) -> Result<(), String>
where
    P: CgroupProgram + Loadable,
    for<'a> &'a mut P: TryFrom<&'a mut Program>,
{
    for &name in names {
        let prog = kernel
            .ebpf
            .program_mut(name)
            .and_then(|p| <&mut P>::try_from(p).ok())
            .ok_or_else(|| format!("program {name} missing from the eBPF object"))?;
        prog.load_program().map_err(|e| {
            format!(
                "loading {name} (a cgroup program with bpf_set_retval, Linux 5.18+) failed: {e}"
            )
        })?;
    }
    Ok(())
}

/// aya's cgroup program types, loadable without arguments.
trait Loadable {
    fn load_program(&mut self) -> Result<(), String>;
}

macro_rules! loadable {
    ($($t:ty),*) => {$(
        impl Loadable for $t {
            fn load_program(&mut self) -> Result<(), String> {
                self.load().map_err(|e| chain(&e))
            }
        }
    )*};
}

loadable!(CgroupSock, CgroupSockAddr, CgroupSockopt, CgroupSysctl);
