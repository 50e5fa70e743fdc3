//! The cgroup backend: cgroup programs that refuse the call with
//! `bpf_set_retval`, on every kernel we support (5.18+): socket creation,
//! bind, UDP sends, getsockopt, setsockopt, and sysctl reads and writes.
//! Attached to each target cgroup, so tasks elsewhere never run them; the
//! attachment's local storage names the target.

use aya_ebpf::{
    helpers::{bpf_set_retval, generated::bpf_sysctl_get_name},
    macros::{cgroup_sock, cgroup_sock_addr, cgroup_sockopt, cgroup_sysctl},
    programs::{SockAddrContext, SockContext, SockoptContext, SysctlContext},
};
use injector_common::{
    FAMILY_INET, FAMILY_INET6,
    syscall::{
        ACTION_ERROR, BACKEND_CGROUP, NR_SYSCTL_READ, NR_SYSCTL_WRITE, NR_UDP_SEND,
        PATH_PREFIX_MAX, SyscallRule,
    },
};

use super::{prefix_matches, rule_of};
use crate::{maps::attached_cgroup, sock_addr, trigger};

/// x86_64 syscall numbers these hooks stand for.
const NR_SOCKET: u32 = 41;
const NR_BIND: u32 = 49;
const NR_SETSOCKOPT: u32 = 54;
const NR_GETSOCKOPT: u32 = 55;

/// Return codes of cgroup programs.
const ALLOW: i32 = 1;
const REJECT: i32 = 0;

/// The rule for pseudo-syscall `nr` in this attachment's target.
#[inline(always)]
fn rule(nr: u32) -> Option<&'static SyscallRule> {
    let cgroup_id = attached_cgroup();
    if cgroup_id == 0 {
        return None;
    }
    rule_of(cgroup_id, nr, ACTION_ERROR).filter(|r| r.backend == BACKEND_CGROUP)
}

/// Refuses the call with the rule's errno if its trigger fires.
#[inline(always)]
fn decide(rule: &SyscallRule) -> i32 {
    if !trigger::evaluate(rule.slot, &rule.trigger) {
        return ALLOW;
    }
    // SAFETY: helper valid in cgroup programs (Linux 5.18+; the daemon
    // loads these programs only where the kernel accepts them).
    unsafe { bpf_set_retval(-(rule.errno as i32)) };
    REJECT
}

#[inline(always)]
fn by_address(nr: u32, family: u8, addr: &[u32; 4], user_port: u32) -> i32 {
    let Some(rule) = rule(nr) else {
        return ALLOW;
    };
    // user_port holds the port in network byte order in its low 16 bits.
    let port = u16::from_be(user_port as u16);
    if !rule.addr.contains(family, addr) || port < rule.ports[0] || port > rule.ports[1] {
        return ALLOW;
    }
    decide(rule)
}

#[cgroup_sock(sock_create)]
pub fn syscall_sock_create(_ctx: SockContext) -> i32 {
    rule(NR_SOCKET).map_or(ALLOW, decide)
}

#[cgroup_sock_addr(bind4)]
pub fn syscall_bind4(ctx: SockAddrContext) -> i32 {
    let (ip, port) = sock_addr::v4(&ctx);
    by_address(NR_BIND, FAMILY_INET, &ip, port)
}

#[cgroup_sock_addr(bind6)]
pub fn syscall_bind6(ctx: SockAddrContext) -> i32 {
    let (ip, port) = sock_addr::v6(&ctx);
    by_address(NR_BIND, FAMILY_INET6, &ip, port)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn syscall_sendmsg4(ctx: SockAddrContext) -> i32 {
    let (ip, port) = sock_addr::v4(&ctx);
    by_address(NR_UDP_SEND, FAMILY_INET, &ip, port)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn syscall_sendmsg6(ctx: SockAddrContext) -> i32 {
    let (ip, port) = sock_addr::v6(&ctx);
    by_address(NR_UDP_SEND, FAMILY_INET6, &ip, port)
}

#[cgroup_sockopt(getsockopt)]
pub fn syscall_getsockopt(_ctx: SockoptContext) -> i32 {
    rule(NR_GETSOCKOPT).map_or(ALLOW, decide)
}

#[cgroup_sockopt(setsockopt)]
pub fn syscall_setsockopt(_ctx: SockoptContext) -> i32 {
    rule(NR_SETSOCKOPT).map_or(ALLOW, decide)
}

#[cgroup_sysctl]
pub fn syscall_sysctl(ctx: SysctlContext) -> i32 {
    // SAFETY: the context is valid for the program's run.
    let write = unsafe { (*ctx.sysctl).write } != 0;
    let Some(rule) = rule(if write {
        NR_SYSCTL_WRITE
    } else {
        NR_SYSCTL_READ
    }) else {
        return ALLOW;
    };
    if rule.path_len != 0 {
        let mut name = [0u8; PATH_PREFIX_MAX + 1];
        // SAFETY: writes at most name.len() bytes into our buffer; flags 0
        // asks for the full name ("net/ipv4/ip_forward").
        let n = unsafe {
            bpf_sysctl_get_name(ctx.sysctl, name.as_mut_ptr().cast(), name.len() as _, 0)
        };
        // -E2BIG: longer than the buffer, so longer than any prefix we
        // hold; the part we got is still compared.
        if n < 0 && n != -7 {
            return ALLOW;
        }
        if !prefix_matches(&rule.path, rule.path_len as usize, &name) {
            return ALLOW;
        }
    }
    decide(rule)
}
