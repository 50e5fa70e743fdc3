//! The address and port a cgroup sock_addr program's call names (the
//! destination of connect and sendmsg, the local address of bind).

use aya_ebpf::programs::SockAddrContext;

/// An IPv4 program's address (in the first word) and `user_port` (the
/// port in network byte order in its low 16 bits).
#[inline(always)]
pub fn v4(ctx: &SockAddrContext) -> ([u32; 4], u32) {
    // SAFETY: the context is valid for the program's run; user_ip4 and
    // user_port are readable in every IPv4 sock_addr program.
    unsafe {
        let sa = &*ctx.sock_addr;
        ([sa.user_ip4, 0, 0, 0], sa.user_port)
    }
}

/// An IPv6 program's address and `user_port`.
#[inline(always)]
pub fn v6(ctx: &SockAddrContext) -> ([u32; 4], u32) {
    // SAFETY: as above; user_ip6 is readable (word by word) in every IPv6
    // sock_addr program.
    unsafe {
        let sa = &*ctx.sock_addr;
        (
            [
                sa.user_ip6[0],
                sa.user_ip6[1],
                sa.user_ip6[2],
                sa.user_ip6[3],
            ],
            sa.user_port,
        )
    }
}
