//! Register abuse on any virtio-mmio device (catalogue cases 7 and 9): queue registers
//! rewritten after DRIVER_OK, wrong access widths, unaligned and out-of-range offsets,
//! config-space writes, and reset storms with requests in flight.

use crate::hw::{read16, read32, read64, read8, write16, write32, write64, write8};
use crate::virtio::*;

/// How many queues the device has (QueueNumMax non-zero), at most 8.
pub fn queue_count(dev: &Dev) -> u32 {
    let mut n = 0;
    while n < 8 {
        dev.w(REG_QUEUE_SEL, n);
        if dev.r(REG_QUEUE_NUM_MAX) == 0 {
            break;
        }
        n += 1;
    }
    n
}

/// Brings the device up with every queue at `at + i * 0x4000` (size 16).
pub fn bring_up_all(dev: &Dev, at: u64) -> bool {
    if !dev.begin_init() {
        return false;
    }
    for i in 0..queue_count(dev) {
        dev.setup_queue(i, 16, at + u64::from(i) * 0x4000);
    }
    dev.driver_ok();
    true
}

/// Queue registers rewritten while the device is live (case 7): sizes 0, 3 and beyond the
/// maximum, rings moved out of RAM and into the MMIO gap, ready cleared, a queue past the
/// last selected; then features and selectors out of range.
pub fn rewrite_after_driver_ok(dev: &Dev) {
    for sel in [0u32, 1, 2, 7, 0xffff_ffff] {
        dev.w(REG_QUEUE_SEL, sel);
        for num in [0u32, 3, 1024, 0x1_0000, 0xffff_ffff] {
            dev.w(REG_QUEUE_NUM, num);
        }
        dev.w(REG_QUEUE_DESC, 0xffff_f000);
        dev.w(REG_QUEUE_DESC + 4, 0xffff_ffff);
        dev.w(REG_QUEUE_AVAIL, 0xd000_0000);
        dev.w(REG_QUEUE_AVAIL + 4, 0);
        dev.w(REG_QUEUE_USED, 0xfee0_0000);
        dev.w(REG_QUEUE_USED + 4, 0);
        dev.w(REG_QUEUE_READY, 0);
        dev.w(REG_QUEUE_READY, 2);
        let _ = dev.r(REG_QUEUE_NUM_MAX);
        let _ = dev.r(REG_QUEUE_READY);
    }
    dev.w(REG_QUEUE_SEL, 0);
    dev.w(REG_DEVICE_FEATURES_SEL, 0xffff_ffff);
    let _ = dev.r(REG_DEVICE_FEATURES);
    dev.w(REG_DRIVER_FEATURES_SEL, 7);
    dev.w(REG_DRIVER_FEATURES, 0xffff_ffff);
    dev.w(REG_DRIVER_FEATURES_SEL, 1);
    dev.w(REG_DRIVER_FEATURES, 0xffff_ffff);
    dev.w(REG_INTERRUPT_ACK, 0xffff_ffff);
    // Status bits taken away or added out of order.
    dev.w(REG_STATUS, S_ACKNOWLEDGE);
    dev.w(REG_STATUS, 0xffff_ff7f);
    // Notifications for queues that do not exist (no ioeventfd matches: the transport's
    // own path).
    for q in [3u32, 8, 0xffff, 0xffff_ffff] {
        dev.w(REG_QUEUE_NOTIFY, q);
    }
}

/// Wrong widths, unaligned offsets, offsets past the registers, config-space writes, and
/// accesses that straddle the end of the window (case 9, first half).
pub fn bad_accesses(dev: &Dev) {
    let b = dev.base;
    for off in [
        0x00u64, 0x08, 0x30, 0x38, 0x44, 0x50, 0x64, 0x70, 0x80, 0xfc,
    ] {
        write8(b + off, 0);
        write8(b + off + 1, 0xff);
        write16(b + off, 0);
        write16(b + off + 2, 0xffff);
        let _ = read8(b + off + 3);
        let _ = read16(b + off + 1);
        let _ = read64(b + off);
    }
    write64(b + REG_QUEUE_DESC, u64::MAX);
    write64(b + REG_STATUS, 0);
    for off in [0x71u64, 0x73, 0x51, 0x35, 0xfd] {
        write32(b + off, 0);
        let _ = read32(b + off);
    }
    // Past the registers, inside the window.
    for off in (0x200u64..0x1000).step_by(0x1f4) {
        write32(b + off, 0xdead_beef);
        let _ = read32(b + off);
    }
    // Config space in every width, including its end and past it.
    for off in [0u64, 1, 7, 8, 0x20, 0x3c, 0xefc, 0xeff] {
        write8(b + REG_CONFIG + off, 0xff);
        write16(b + REG_CONFIG + off, 0xffff);
        write32(b + REG_CONFIG + off, 0xffff_ffff);
        write64(b + REG_CONFIG + off, u64::MAX);
        let _ = read64(b + REG_CONFIG + off);
    }
    // Straddling the end of the window into the next one.
    write32(b + 0xffe, 0xffff_ffff);
    write64(b + 0xffc, u64::MAX);
    let _ = read64(b + 0xffc);
}

/// Reset storm with requests in flight (case 9, second half): each round brings the device
/// up on fresh rings, makes every descriptor available, kicks, and resets at once. After
/// the storm no old ring may have moved: a device that completed an in-flight request
/// after the reset would have written the ring it no longer owns.
pub fn reset_storm(
    dev: &Dev,
    area: u64,
    rounds: u32,
    fill: impl Fn(&mut Vq, u32),
) -> Result<(), ()> {
    let mut seen = [0u16; 64];
    let rounds = rounds.min(64);
    let nq = queue_count(dev);
    for r in 0..rounds {
        let at = area + u64::from(r) * 0x1_0000;
        if !dev.begin_init() {
            dev.w(REG_STATUS, 0);
            continue;
        }
        let mut qs: [Option<Vq>; 4] = [None, None, None, None];
        for i in 0..nq.min(4) {
            qs[i as usize] = Some(dev.setup_queue(i, 16, at + u64::from(i) * 0x4000));
        }
        dev.driver_ok();
        for q in qs.iter_mut().flatten() {
            fill(q, r);
            dev.kick(q.index);
        }
        dev.w(REG_STATUS, 0);
        seen[r as usize] = qs[0].as_ref().map_or(0, |q| q.used_idx());
        if r % 8 == 7 {
            // Re-init without resetting in between: a second DRIVER_OK on a live device.
            let _ = bring_up_all(dev, at);
            let _ = bring_up_all(dev, at);
            dev.w(REG_STATUS, 0);
            seen[r as usize] = Vq::new(0, 16, at).used_idx();
        }
    }
    crate::timer::spin_ms(200);
    for r in 0..rounds {
        let at = area + u64::from(r) * 0x1_0000;
        if Vq::new(0, 16, at).used_idx() != seen[r as usize] {
            return Err(());
        }
    }
    Ok(())
}
