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

/// Linux's AF_INET and AF_INET6, as rules hold them.
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// Whether the rule's family and type filters (0: any) accept a socket of
/// this family and type (as `bpf_sock` gives them).
#[inline(always)]
fn socket_matches(rule: &SyscallRule, family: u32, sock_type: u32) -> bool {
    (rule.family == 0 || u32::from(rule.family) == family)
        && (rule.sock_type == 0 || u32::from(rule.sock_type) == sock_type)
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

/// An address hook (bind, UDP send) of one family: the rule's address,
/// port, family and type filters against the call.
#[inline(always)]
fn by_address(nr: u32, ctx: &SockAddrContext, v6: bool) -> i32 {
    let Some(rule) = rule(nr) else {
        return ALLOW;
    };
    let (family, af, (addr, user_port)) = if v6 {
        (FAMILY_INET6, AF_INET6, sock_addr::v6(ctx))
    } else {
        (FAMILY_INET, AF_INET, sock_addr::v4(ctx))
    };
    // user_port holds the port in network byte order in its low 16 bits.
    let port = u16::from_be(user_port as u16);
    if !rule.addr.contains(family, &addr) || port < rule.ports[0] || port > rule.ports[1] {
        return ALLOW;
    }
    // SAFETY: the context is valid for the program's run.
    let sock_type = unsafe { (*ctx.sock_addr).type_ };
    if !socket_matches(rule, u32::from(af), sock_type) {
        return ALLOW;
    }
    decide(rule)
}

/// A sockopt hook: the rule's family and type filters against the socket.
#[inline(always)]
fn by_socket_option(nr: u32, ctx: &SockoptContext) -> i32 {
    let Some(rule) = rule(nr) else {
        return ALLOW;
    };
    if rule.family != 0 || rule.sock_type != 0 {
        // SAFETY: the context and its socket are valid for the program's
        // run (the verifier knows `sk` as a non-null socket here).
        let (family, sock_type) = unsafe {
            let sk = (*ctx.sockopt).__bindgen_anon_1.sk;
            ((*sk).family, (*sk).type_)
        };
        if !socket_matches(rule, family, sock_type) {
            return ALLOW;
        }
    }
    decide(rule)
}

#[cgroup_sock(sock_create)]
pub fn syscall_sock_create(ctx: SockContext) -> i32 {
    let Some(rule) = rule(NR_SOCKET) else {
        return ALLOW;
    };
    // SAFETY: the context is valid for the program's run.
    let (family, sock_type) = unsafe { ((*ctx.sock).family, (*ctx.sock).type_) };
    if !socket_matches(rule, family, sock_type) {
        return ALLOW;
    }
    decide(rule)
}

#[cgroup_sock_addr(bind4)]
pub fn syscall_bind4(ctx: SockAddrContext) -> i32 {
    by_address(NR_BIND, &ctx, false)
}

#[cgroup_sock_addr(bind6)]
pub fn syscall_bind6(ctx: SockAddrContext) -> i32 {
    by_address(NR_BIND, &ctx, true)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn syscall_sendmsg4(ctx: SockAddrContext) -> i32 {
    by_address(NR_UDP_SEND, &ctx, false)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn syscall_sendmsg6(ctx: SockAddrContext) -> i32 {
    by_address(NR_UDP_SEND, &ctx, true)
}

#[cgroup_sockopt(getsockopt)]
pub fn syscall_getsockopt(ctx: SockoptContext) -> i32 {
    by_socket_option(NR_GETSOCKOPT, &ctx)
}

#[cgroup_sockopt(setsockopt)]
pub fn syscall_setsockopt(ctx: SockoptContext) -> i32 {
    by_socket_option(NR_SETSOCKOPT, &ctx)
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
