//! A hostile guest for husk-vmm's device tests: a bare-metal x86_64 "kernel" (no Linux)
//! that husk-vmm boots as an ELF vmlinux. It finds the virtio-mmio devices on the kernel
//! command line, breaks every rule it can against them (malformed descriptors, runaway
//! ring indices, bad register writes, reset storms, vsock floods, a serial flood), prints
//! one `hostile: round <name> done` line per round on the serial port, then checks that
//! the devices still work (`hostile: healthy` or `hostile: UNHEALTHY <why>`) and ends the
//! VM with an i8042 reset. The host side (vmm/tests/hostile_guest.rs,
//! tests/vm/27-hostile-guest.sh) watches the vmm process meanwhile.
#![no_std]
#![no_main]
#![allow(dead_code)] // the hw helpers are a toolbox for the rounds

mod blk;
mod hw;
mod mem;
mod regs;
mod timer;
mod virtio;
mod vsock;

use core::arch::global_asm;

// Entry from husk-vmm: 64-bit mode, identity map of the first 1 GiB, rsi = zero page,
// a tiny boot stack. We take our own stack and call `hostile_main`. The crate is built
// without SSE (build.sh): PVM runs this guest through KVM's instruction emulator, which
// has no SSE arithmetic, and husk leaves CR4.OSFXSR to the kernel anyway.
global_asm!(
    ".section .text.boot, \"ax\"",
    ".global _start",
    "_start:",
    "cli",
    "lea rsp, [rip + {stack} + {stack_size}]",
    "mov rdi, rsi",
    "call {main}",
    "2: hlt",
    "jmp 2b",
    stack = sym STACK,
    stack_size = const STACK_SIZE,
    main = sym hostile_main,
);

const STACK_SIZE: usize = 64 * 1024;

#[repr(C, align(16))]
struct Stack([u8; STACK_SIZE]);

static mut STACK: Stack = Stack([0; STACK_SIZE]);

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("hostile: UNHEALTHY guest panic: {}", info.message());
    hw::reset()
}

/// Where the host's listener for guest-initiated vsock connections is (`<socket>_5000`),
/// one that never accepts (`<socket>_5001`), and where the health exchange connects.
const LISTEN_PORT: u32 = 5000;
const STUCK_PORT: u32 = 5001;
const HEALTH_PORT: u32 = 1234;
const IDLE_PORT: u32 = 999;
/// The idle window after the runaway-index round when there is no vsock device to end it.
const IDLE_MS: u64 = 8000;
const SERIAL_FLOOD_LINES: u32 = 1024;

/// Top of guest RAM below 4 GiB, from the zero page's e820 map.
fn ram_end(zero_page: u64) -> u64 {
    let n = u64::from(hw::read8(zero_page + 0x1e8)).min(128);
    let mut end = 0;
    for i in 0..n {
        let e = zero_page + 0x2d0 + i * 20;
        let (addr, size, ty) = (hw::read64(e), hw::read64(e + 8), hw::read32(e + 16));
        if ty == 1 && addr + size <= 0xc000_0000 {
            end = end.max(addr + size);
        }
    }
    end
}

fn name(id: u32) -> &'static str {
    match id {
        virtio::ID_BLOCK => "blk",
        virtio::ID_VSOCK => "vsock",
        virtio::ID_BALLOON => "balloon",
        virtio::ID_NET => "net",
        _ => "other",
    }
}

fn done(round: &str) {
    println!("hostile: round {} done", round);
}

fn unhealthy(why: &str) -> ! {
    println!("hostile: UNHEALTHY {}", why);
    hw::reset()
}

extern "C" fn hostile_main(zero_page: u64) -> ! {
    println!("hostile: start");
    hw::map_mmio_gap();
    timer::init();
    if virtio::cmdline_has(zero_page, b"hostile.mode=wait") {
        // For the process-level tests (signals, seccomp): a guest that idles and shows a
        // sign of life every second until the host ends the vmm.
        println!("hostile: waiting");
        let mut n = 0u64;
        loop {
            timer::halt_ms(1000);
            n += 1;
            println!("hostile: tick {}", hw::Dec(n));
        }
    }
    let devs = virtio::discover(zero_page);
    let ram_end = ram_end(zero_page);
    for d in devs.list.iter().flatten() {
        println!("hostile: device {} at {}", name(d.id), hw::Hex(d.base));
    }
    println!("hostile: ram end {}", hw::Hex(ram_end));
    let Some(blk) = devs.find(virtio::ID_BLOCK) else {
        unhealthy("no virtio-blk device on the command line");
    };
    let t0 = timer::now();

    // A. Descriptor chains (cases 1-5), one device bring-up for all of them.
    let Some(mut q) = blk::bring_up(&blk) else {
        unhealthy("blk refused FEATURES_OK");
    };
    blk::desc_loop(&blk, &mut q);
    done("blk-desc-loop");
    blk::next_oob(&blk, &mut q);
    done("blk-next-oob");
    blk::addr_range(&blk, &mut q, ram_end);
    done("blk-addr-range");
    blk::huge_len(&blk, &mut q);
    done("blk-huge-len");
    blk::indirect(&blk, &mut q);
    done("blk-indirect");
    // Case 6, then the idle window.
    blk::avail_runaway(&blk, &mut q, 2000);
    done("blk-avail-runaway");
    // The idle window: the host samples the vmm's CPU, then ends the window with a vsock
    // connection to IDLE_PORT (a host as slow as the nested test host sees the console
    // seconds late: a fixed window could end before it had sampled). Without vsock, 8 s.
    match devs.find(virtio::ID_VSOCK).and_then(vsock::Vsock::bring_up) {
        Some(mut v) => {
            timer::spin_ms(100);
            println!("hostile: idle begin");
            if !vsock::idle_until_request(&mut v, IDLE_PORT, 300_000) {
                unhealthy("the host never ended the idle window");
            }
        }
        None => {
            println!("hostile: idle begin");
            for _ in 0..IDLE_MS / 4000 {
                timer::halt_ms(4000);
            }
        }
    }
    println!("hostile: idle end");

    // B. Registers (cases 7 and 9) on every device; on blk, a request must still work
    // after the rewrite (the writes were ignored) unless the device asks for a reset.
    let Some(mut q) = blk::bring_up(&blk) else {
        unhealthy("blk refused FEATURES_OK after reset");
    };
    blk::read_req(&mut q, 0, 0, 0x0210_0000, 512);
    blk.kick(0);
    if q.wait_used(3000).is_none() || blk::status(0) != 0 {
        unhealthy("blk: a correct request after reset failed");
    }
    let cap = (blk.r(virtio::REG_CONFIG), blk.r(virtio::REG_CONFIG + 4));
    regs::rewrite_after_driver_ok(&blk);
    regs::bad_accesses(&blk);
    if (blk.r(virtio::REG_CONFIG), blk.r(virtio::REG_CONFIG + 4)) != cap {
        unhealthy("blk: config-space writes changed the capacity");
    }
    blk::read_req(&mut q, 3, 0, 0x0210_0000, 512);
    blk.kick(0);
    let completed = q.wait_used(3000).is_some() && blk::status(3) == 0;
    if !completed && blk.status() & virtio::S_NEEDS_RESET == 0 {
        unhealthy("blk: queue registers rewritten after DRIVER_OK took effect");
    }
    done("mmio-regs-blk");
    for d in devs
        .list
        .iter()
        .flatten()
        .filter(|d| d.id != virtio::ID_BLOCK)
    {
        if regs::bring_up_all(d, 0x0280_0000) {
            regs::rewrite_after_driver_ok(d);
            regs::bad_accesses(d);
        }
        d.w(virtio::REG_STATUS, 0);
        println!("hostile: round mmio-regs-{} done", name(d.id));
    }
    // Unclaimed MMIO: between and past the devices, the IOAPIC's neighbours.
    for a in [0xd000_8000u64, 0xd00f_f000, 0xcfff_fffc, 0xfebf_fffc] {
        hw::write32(a, 0xffff_ffff);
        let _ = hw::read32(a);
    }
    done("mmio-unclaimed");
    for d in devs.list.iter().flatten() {
        let fill = |q: &mut virtio::Vq, r: u32| {
            for i in 0..q.size / 3 {
                let d0 = i * 3;
                blk::read_req(
                    q,
                    d0,
                    u64::from(r % 8),
                    0x0210_0000 + u64::from(i) * 4096,
                    4096,
                );
            }
        };
        if regs::reset_storm(d, 0x0380_0000, 64, fill).is_err() {
            println!(
                "hostile: UNHEALTHY {}: a ring changed after its device was reset",
                name(d.id)
            );
            hw::reset()
        }
        println!("hostile: round reset-storm-{} done", name(d.id));
    }

    // C. vsock (cases 14 and 16).
    if let Some(vdev) = devs.find(virtio::ID_VSOCK) {
        let Some(mut v) = vsock::Vsock::bring_up(vdev) else {
            unhealthy("vsock refused FEATURES_OK");
        };
        let (resp, rsts) = vsock::flood(&mut v, 2000, LISTEN_PORT, 1100);
        println!(
            "hostile: note vsock-flood accepted={} refused={}",
            hw::Dec(resp.into()),
            hw::Dec(rsts.into())
        );
        done("vsock-flood");
        vsock::backlog(&mut v, STUCK_PORT, 300);
        done("vsock-backlog");
        vsock::bad_packets(&mut v, LISTEN_PORT);
        done("vsock-bad-packets");
    }

    // D. Serial flood (case 38).
    for _ in 0..SERIAL_FLOOD_LINES {
        for _ in 0..100 {
            hw::outb(hw::SERIAL, b'x');
        }
        hw::outb(hw::SERIAL, b'\n');
    }
    done("serial-flood");
    println!("hostile: attacks took {} ms", hw::Dec(timer::ms_since(t0)));

    // E. Health: reset and re-initialise properly, one correct request per device.
    if let Err(why) = blk::health_read(&blk) {
        unhealthy(why);
    }
    if let Some(vdev) = devs.find(virtio::ID_VSOCK) {
        let Some(mut v) = vsock::Vsock::bring_up(vdev) else {
            unhealthy("vsock refused FEATURES_OK at the health check");
        };
        if let Err(why) = vsock::health(&mut v, HEALTH_PORT, 60_000) {
            unhealthy(why);
        }
    }
    println!("hostile: healthy");
    hw::reset()
}
