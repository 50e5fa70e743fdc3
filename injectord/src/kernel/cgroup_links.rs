//! Attachments of cgroup programs, shared by every fault aimed at a cgroup:
//! made for the first, detached when the last one's [`Attachment`] is
//! dropped. Each attachment is a set of bpf_links owned by the daemon, and
//! publishes its target in `CGROUP_ATTACH`.

use std::{
    fmt,
    fs::File,
    os::fd::{AsFd as _, BorrowedFd},
    path::Path,
    sync::Arc,
};

use aya::programs::{
    CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, CgroupSockopt,
    CgroupSysctl, Program, ProgramError, cgroup_skb::CgroupSkbLink, cgroup_sock::CgroupSockLink,
    cgroup_sock_addr::CgroupSockAddrLink, cgroup_sockopt::CgroupSockoptLink,
    cgroup_sysctl::CgroupSysctlLink,
};
use aya_obj::{
    generated::bpf_attach_type,
    programs::{CgroupSockAddrAttachType, CgroupSockAttachType, CgroupSockoptAttachType},
};

use super::{Kernel, shared::SharedByKey};
use crate::{error::Error, target::Cgroup};

/// bpf_link cgroup attachments always coexist with other programs (multi
/// semantics), and the kernel rejects any flag on them (`BPF_F_ALLOW_MULTI`
/// gives EINVAL): "Single" means no flags.
const LINK_MODE: CgroupAttachMode = CgroupAttachMode::Single;

/// A cgroup program type aya can attach, with its owned link (dropping the
/// link detaches the program).
pub trait CgroupProgram {
    type AttachType: Copy + fmt::Debug + Into<bpf_attach_type> + 'static;
    type Link: Send + 'static;
    fn attach_cgroup(
        &mut self,
        cgroup: BorrowedFd<'_>,
        attach_type: Self::AttachType,
    ) -> Result<Self::Link, ProgramError>;
}

impl CgroupProgram for CgroupSkb {
    type AttachType = CgroupSkbAttachType;
    type Link = CgroupSkbLink;

    fn attach_cgroup(
        &mut self,
        cgroup: BorrowedFd<'_>,
        attach_type: Self::AttachType,
    ) -> Result<Self::Link, ProgramError> {
        let id = self.attach(cgroup, attach_type, LINK_MODE)?;
        self.take_link(id)
    }
}

/// Programs whose section fixes their attach type (all but cgroup_skb).
macro_rules! sectioned {
    ($($program:ty, $attach:ty, $link:ty;)*) => {$(
        impl CgroupProgram for $program {
            type AttachType = $attach;
            type Link = $link;

            fn attach_cgroup(
                &mut self,
                cgroup: BorrowedFd<'_>,
                _attach_type: Self::AttachType,
            ) -> Result<Self::Link, ProgramError> {
                let id = self.attach(cgroup, LINK_MODE)?;
                self.take_link(id)
            }
        }
    )*};
}

sectioned! {
    CgroupSockAddr, CgroupSockAddrAttachType, CgroupSockAddrLink;
    CgroupSock, CgroupSockAttachType, CgroupSockLink;
    CgroupSockopt, CgroupSockoptAttachType, CgroupSockoptLink;
    CgroupSysctl, SysctlAttach, CgroupSysctlLink;
}

/// cgroup/sysctl has a single attach type, which aya leaves unnamed.
#[derive(Clone, Copy, Debug)]
pub struct SysctlAttach;

impl From<SysctlAttach> for bpf_attach_type {
    fn from(_: SysctlAttach) -> Self {
        bpf_attach_type::BPF_CGROUP_SYSCTL
    }
}

/// One cgroup's attachment of a set of programs, shared by the faults
/// aimed there. Dropping the last reference detaches the programs.
pub struct Attachment<L> {
    cgroup: String,
    links: Vec<L>,
}

impl<L> Drop for Attachment<L> {
    fn drop(&mut self) {
        // The links detach as they drop.
        self.links.clear();
        tracing::debug!(cgroup = %self.cgroup, "detached");
    }
}

impl<L> fmt::Debug for Attachment<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attachment")
            .field("cgroup", &self.cgroup)
            .finish_non_exhaustive()
    }
}

/// The attachments of one set of programs (e.g. connect4 + connect6).
pub struct CgroupLinks<P: CgroupProgram> {
    /// Program name and attach type, in attach order.
    programs: &'static [(&'static str, P::AttachType)],
    by_cgroup: SharedByKey<u64, Attachment<P::Link>>,
}

impl<P> CgroupLinks<P>
where
    P: CgroupProgram,
    for<'a> &'a mut P: TryFrom<&'a mut Program>,
{
    pub fn new(programs: &'static [(&'static str, P::AttachType)]) -> Self {
        Self {
            programs,
            by_cgroup: SharedByKey::default(),
        }
    }

    /// The cgroup's attachment, made now if no fault holds one. On error
    /// nothing is left attached.
    pub fn acquire(
        &mut self,
        kernel: &mut Kernel,
        cgroup: &Cgroup,
        dir: &Path,
    ) -> Result<Arc<Attachment<P::Link>>, Error> {
        let programs = self.programs;
        self.by_cgroup
            .get_or_try_make(cgroup.id, || attach::<P>(kernel, programs, cgroup, dir))
    }
}

/// Attaches `programs` to the cgroup, in order; on error, what was
/// attached is dropped (detached) again.
fn attach<P>(
    kernel: &mut Kernel,
    programs: &'static [(&'static str, P::AttachType)],
    cgroup: &Cgroup,
    dir: &Path,
) -> Result<Attachment<P::Link>, Error>
where
    P: CgroupProgram,
    for<'a> &'a mut P: TryFrom<&'a mut Program>,
{
    {
        let file = File::open(dir)
            .map_err(|e| Error::TargetNotFound(format!("opening cgroup {}: {e}", dir.display())))?;
        let mut attachment = Attachment {
            cgroup: cgroup.path.clone(),
            links: Vec::with_capacity(programs.len()),
        };
        for &(name, attach_type) in programs {
            let link = program::<P>(kernel, name)?
                .attach_cgroup(file.as_fd(), attach_type)
                .map_err(|source| Error::Attach {
                    what: format!("{name} to cgroup {}", cgroup.path),
                    source,
                })?;
            attachment.links.push(link);
            let kernel_type = attach_type.into() as u32;
            kernel
                .publish_attachment(cgroup.id, kernel_type)
                .map_err(|e| Error::io(format!("publishing the target of {name}"), e))?;
        }
        tracing::debug!(cgroup = %cgroup.path, ?programs, "attached");
        Ok(attachment)
    }
}

fn program<'a, P>(kernel: &'a mut Kernel, name: &str) -> Result<&'a mut P, Error>
where
    &'a mut P: TryFrom<&'a mut Program>,
{
    // The families load (and so type-check) their programs before they
    // create a CgroupLinks for them.
    kernel
        .ebpf
        .program_mut(name)
        .and_then(|p| <&mut P>::try_from(p).ok())
        .ok_or_else(|| Error::Internal(format!("program {name} is not in the eBPF object")))
}
