//! Cedille's eBPF programs. Built for `bpfel-unknown-none` by `cargo xtask build-ebpf`; on the
//! host this binary is empty, so the workspace still builds and lints on stable.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod redirect;

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach here, so this is never executed.
    loop {}
}

/// Our code is Apache-2.0 and uses no GPL-only helper.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 11] = *b"Apache-2.0\0";
