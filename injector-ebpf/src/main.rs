//! injectord's eBPF programs: one module per hook family.
#![no_std]
#![no_main]
// Atomic fetch-and-add for exact triggers; see trigger::fetch_inc.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod bench;
mod block;
mod connect;
mod log;
mod maps;
mod packet;
mod probe;
mod sock_addr;
mod syscall;
mod trigger;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // No panic is reachable in release builds of this crate (all indexing is
    // checked through map helpers); the verifier rejects loops anyway.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
