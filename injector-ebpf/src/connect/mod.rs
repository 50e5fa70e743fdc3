//! connect() errors: cgroup sock_addr programs (connect4, connect6) that
//! refuse the call with a chosen errno through `bpf_set_retval`.
//!
//! The programs are attached to each targeted cgroup, so tasks outside every
//! target never run them. Cgroup local storage tells the program which
//! attachment (which target cgroup) it runs for; the rule is then one hash
//! lookup by (target, port), falling back to (target, any port).

use aya_ebpf::{
    helpers::bpf_set_retval,
    macros::{cgroup_sock_addr, map},
    maps::HashMap,
    programs::SockAddrContext,
};
use injector_common::{
    FAMILY_INET, FAMILY_INET6,
    connect::{ConnectKey, ConnectRule, MAX_CONNECT_RULES},
};

use aya_log_ebpf::debug;

use crate::{log::NO_CTX, maps::attached_cgroup, sock_addr, trigger};

/// `BPF_F_NO_PREALLOC`: values are freed after an RCU grace period, so a
/// rule replaced or removed by the daemon is never read half-rewritten.
const NO_PREALLOC: u32 = 1;

#[map]
static CONNECT_RULES: HashMap<ConnectKey, ConnectRule> =
    HashMap::with_max_entries(MAX_CONNECT_RULES, NO_PREALLOC);

/// Return codes of cgroup sock_addr programs.
const ALLOW: i32 = 1;
const REJECT: i32 = 0;

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    let (ip, port) = sock_addr::v4(&ctx);
    decide(FAMILY_INET, &ip, port)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    let (ip, port) = sock_addr::v6(&ctx);
    decide(FAMILY_INET6, &ip, port)
}

#[inline(always)]
fn decide(family: u8, addr: &[u32; 4], user_port: u32) -> i32 {
    let cgroup_id = attached_cgroup();
    if cgroup_id == 0 {
        // Attached, but the daemon has not published the target yet: only
        // in the moment between attaching and publishing.
        debug!(
            &NO_CTX,
            "connect program runs before its target is published"
        );
        return ALLOW;
    }
    // user_port holds the port in network byte order in its low 16 bits.
    let port = u16::from_be(user_port as u16);
    let Some(rule) = matching_rule(cgroup_id, port, family, addr) else {
        return ALLOW;
    };
    if !trigger::evaluate(rule.slot, &rule.trigger) {
        return ALLOW;
    }
    // SAFETY: helper valid in cgroup sock_addr programs (Linux 5.18+, probed
    // by the daemon before it attaches).
    unsafe { bpf_set_retval(-(rule.errno as i32)) };
    REJECT
}

/// The rule for this exact port if its destination matches, else the
/// any-port rule if its destination matches.
#[inline(always)]
fn matching_rule(cgroup_id: u64, port: u16, family: u8, addr: &[u32; 4]) -> Option<ConnectRule> {
    for key in [
        ConnectKey::new(cgroup_id, port),
        ConnectKey::new(cgroup_id, 0),
    ] {
        if let Some(rule) = CONNECT_RULES.get_ptr(&key) {
            // SAFETY: the map is BPF_F_NO_PREALLOC, so the value stays valid
            // and unmodified for this RCU read section; copy it out.
            let rule = unsafe { *rule };
            if rule.dst.contains(family, addr) && port >= rule.ports[0] && port <= rule.ports[1] {
                return Some(rule);
            }
        }
    }
    None
}
