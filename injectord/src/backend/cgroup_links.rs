//! Attachments of cgroup programs, shared by every fault aimed at a cgroup:
//! made for the first, removed with the last. Each attachment is a bpf_link
//! owned by the daemon, and publishes its target in `CGROUP_ATTACH`.

use std::{
    collections::HashMap,
    fs::File,
    os::fd::{AsFd as _, BorrowedFd},
    path::Path,
};

use aya::{
    Ebpf,
    maps::MapData,
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, Program, ProgramError,
        cgroup_skb::CgroupSkbLinkId, cgroup_sock_addr::CgroupSockAddrLinkId,
    },
};

use super::{attach_error, publish_attachment};
use crate::{
    error::{ErrorCode, RpcError, chain},
    target::Cgroup,
};

/// bpf_link cgroup attachments always coexist with other programs (multi
/// semantics), and the kernel rejects any flag on them (`BPF_F_ALLOW_MULTI`
/// gives EINVAL): "Single" means no flags.
const LINK_MODE: CgroupAttachMode = CgroupAttachMode::Single;

/// A cgroup program type aya can attach and detach.
pub trait CgroupProgram {
    type LinkId;
    /// Attaches at `kernel_attach` (the kernel's `bpf_attach_type`).
    fn attach_cgroup(
        &mut self,
        cgroup: BorrowedFd<'_>,
        kernel_attach: u32,
    ) -> Result<Self::LinkId, ProgramError>;
    fn detach_link(&mut self, link: Self::LinkId) -> Result<(), ProgramError>;
}

impl CgroupProgram for CgroupSockAddr {
    type LinkId = CgroupSockAddrLinkId;

    fn attach_cgroup(
        &mut self,
        cgroup: BorrowedFd<'_>,
        _kernel_attach: u32,
    ) -> Result<Self::LinkId, ProgramError> {
        // The attach type comes from the program's section.
        self.attach(cgroup, LINK_MODE)
    }

    fn detach_link(&mut self, link: Self::LinkId) -> Result<(), ProgramError> {
        self.detach(link)
    }
}

impl CgroupProgram for CgroupSkb {
    type LinkId = CgroupSkbLinkId;

    fn attach_cgroup(
        &mut self,
        cgroup: BorrowedFd<'_>,
        kernel_attach: u32,
    ) -> Result<Self::LinkId, ProgramError> {
        // BPF_CGROUP_INET_INGRESS = 0, BPF_CGROUP_INET_EGRESS = 1.
        let attach = if kernel_attach == 0 {
            CgroupSkbAttachType::Ingress
        } else {
            CgroupSkbAttachType::Egress
        };
        self.attach(cgroup, attach, LINK_MODE)
    }

    fn detach_link(&mut self, link: Self::LinkId) -> Result<(), ProgramError> {
        self.detach(link)
    }
}

struct Attachment<L> {
    links: Vec<L>,
    users: usize,
}

/// The attachments of one set of programs (e.g. connect4 + connect6).
pub struct CgroupLinks<P: CgroupProgram> {
    /// Program name and kernel attach type, in attach order.
    programs: &'static [(&'static str, u32)],
    by_cgroup: HashMap<u64, Attachment<P::LinkId>>,
}

impl<P> CgroupLinks<P>
where
    P: CgroupProgram,
    for<'a> &'a mut P: TryFrom<&'a mut Program>,
{
    pub fn new(programs: &'static [(&'static str, u32)]) -> Self {
        Self {
            programs,
            by_cgroup: HashMap::new(),
        }
    }

    /// Counts one more fault on the cgroup, attaching first if it is the
    /// first. On error nothing is left attached.
    pub fn acquire(
        &mut self,
        ebpf: &mut Ebpf,
        storage: &MapData,
        cgroup: &Cgroup,
        dir: &Path,
    ) -> Result<(), RpcError> {
        if let Some(a) = self.by_cgroup.get_mut(&cgroup.id) {
            a.users += 1;
            return Ok(());
        }
        let file = File::open(dir).map_err(|e| {
            RpcError::new(
                ErrorCode::TargetNotFound,
                format!("opening cgroup {}: {e}", dir.display()),
            )
        })?;
        let mut links = Vec::new();
        for &(name, kernel_attach) in self.programs {
            let result = program::<P>(ebpf, name)
                .attach_cgroup(file.as_fd(), kernel_attach)
                .map_err(|e| format!("attaching {name} to {}: {}", cgroup.path, chain(&e)))
                .and_then(|link| {
                    links.push(link);
                    publish_attachment(storage, cgroup.id, kernel_attach)
                        .map_err(|e| format!("publishing the target of {name}: {e}"))
                });
            if let Err(msg) = result {
                self.detach_all(ebpf, links);
                return Err(attach_error(msg));
            }
        }
        self.by_cgroup
            .insert(cgroup.id, Attachment { links, users: 1 });
        tracing::debug!(cgroup = %cgroup.path, programs = ?self.programs, "attached");
        Ok(())
    }

    /// Counts one fault less; detaches with the last.
    pub fn release(&mut self, ebpf: &mut Ebpf, cgroup_id: u64) {
        let Some(a) = self.by_cgroup.get_mut(&cgroup_id) else {
            return;
        };
        a.users -= 1;
        if a.users == 0
            && let Some(a) = self.by_cgroup.remove(&cgroup_id)
        {
            self.detach_all(ebpf, a.links);
        }
    }

    fn detach_all(&self, ebpf: &mut Ebpf, links: Vec<P::LinkId>) {
        for (link, (name, _)) in links.into_iter().zip(self.programs) {
            if let Err(e) = program::<P>(ebpf, name).detach_link(link) {
                tracing::error!(error = %chain(&e), name, "detaching");
            }
        }
    }
}

fn program<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> &'a mut P
where
    &'a mut P: TryFrom<&'a mut Program>,
{
    // The backends load (and type-check) their programs before they can
    // create a CgroupLinks for them.
    ebpf.program_mut(name)
        .and_then(|p| <&mut P>::try_from(p).ok())
        .expect("cgroup programs are loaded")
}
