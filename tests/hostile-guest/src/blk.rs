//! virtio-blk rounds: malformed descriptor chains (catalogue cases 1-5), a runaway avail
//! index (case 6), and the health read of sector 0.

use crate::hw::{read8, write32, write64, write8};
use crate::virtio::{Dev, Vq, F_INDIRECT, F_NEXT, F_WRITE};

pub const Q: u64 = 0x0200_0000;
const HDR: u64 = 0x0201_0000;
const STATUS: u64 = 0x0202_0000;
const DATA: u64 = 0x0210_0000;
const IND: u64 = 0x0230_0000;
pub const SIZE: u16 = 256;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;

/// What the host test writes at the start of the disk; the health read checks it.
pub const SECTOR0_MAGIC: &[u8] = b"husk-hostile-sector0:";

/// The status byte the device writes when it completes a request (0xee: never written).
pub fn status(slot: u16) -> u8 {
    read8(STATUS + u64::from(slot))
}

fn header(slot: u16, rtype: u32, sector: u64) -> u64 {
    let h = HDR + u64::from(slot) * 16;
    write32(h, rtype);
    write32(h + 4, 0);
    write64(h + 8, sector);
    write8(STATUS + u64::from(slot), 0xee);
    h
}

/// A well-formed three-descriptor read of `len` bytes at `sector` into `data`, using
/// descriptors `d..d+3`.
pub fn read_req(q: &mut Vq, d: u16, sector: u64, data: u64, len: u32) {
    let h = header(d, T_IN, sector);
    q.set_desc(d, h, 16, F_NEXT, d + 1);
    q.set_desc(d + 1, data, len, F_WRITE | F_NEXT, d + 2);
    q.set_desc(d + 2, STATUS + u64::from(d), 1, F_WRITE, 0);
    q.push(d);
}

/// A fresh, active device with its one queue.
pub fn bring_up(dev: &Dev) -> Option<Vq> {
    if !dev.begin_init() {
        return None;
    }
    let q = dev.setup_queue(0, SIZE, Q);
    dev.driver_ok();
    Some(q)
}

/// Reads sector 0 with a correct request and checks the host's pattern.
pub fn health_read(dev: &Dev) -> Result<(), &'static str> {
    let mut q = bring_up(dev).ok_or("blk: FEATURES_OK refused")?;
    for i in 0..512u64 {
        write8(DATA + i, 0);
    }
    read_req(&mut q, 0, 0, DATA, 512);
    dev.kick(0);
    q.wait_used(5000)
        .ok_or("blk: health read never completed")?;
    if status(0) != 0 {
        return Err("blk: health read status not OK");
    }
    for (i, c) in SECTOR0_MAGIC.iter().enumerate() {
        if read8(DATA + i as u64) != *c {
            return Err("blk: sector 0 does not hold the host's pattern");
        }
    }
    for i in SECTOR0_MAGIC.len()..512 {
        if read8(DATA + i as u64) != (i as u8).wrapping_mul(7).wrapping_add(3) {
            return Err("blk: sector 0 bytes differ from the host's pattern");
        }
    }
    Ok(())
}

fn settle(q: &mut Vq) {
    q.settle(30, 1000);
}

/// Case 1: chains that loop: a self-loop, a 3-cycle, a full table of NEXT.
pub fn desc_loop(dev: &Dev, q: &mut Vq) {
    let h = header(0, T_IN, 0);
    q.set_desc(0, h, 16, F_NEXT, 0);
    q.push(0);
    dev.kick(0);
    settle(q);
    let h = header(10, T_IN, 0);
    q.set_desc(10, h, 16, F_NEXT, 11);
    q.set_desc(11, DATA, 512, F_WRITE | F_NEXT, 12);
    q.set_desc(12, STATUS + 10, 1, F_WRITE | F_NEXT, 10);
    q.push(10);
    dev.kick(0);
    settle(q);
    for i in 0..SIZE {
        let h = header(i, T_IN, 0);
        let flags = if i == 0 { F_NEXT } else { F_WRITE | F_NEXT };
        let addr = if i == 0 { h } else { DATA + u64::from(i) * 512 };
        q.set_desc(i, addr, 512, flags, (i + 1) % SIZE);
    }
    q.push(0);
    q.push(128);
    dev.kick(0);
    settle(q);
}

/// Case 2: `next` past the table, and heads past the table in the avail ring.
pub fn next_oob(dev: &Dev, q: &mut Vq) {
    let h = header(30, T_IN, 0);
    q.set_desc(30, h, 16, F_NEXT, SIZE + 44);
    q.push(30);
    let h = header(33, T_IN, 0);
    q.set_desc(33, h, 16, F_NEXT, 34);
    q.set_desc(34, DATA, 512, F_WRITE | F_NEXT, 0xffff);
    q.push(33);
    q.push(SIZE);
    q.push(999);
    q.push(0xffff);
    dev.kick(0);
    settle(q);
}

/// Case 3: buffers outside guest RAM, straddling its end, in the MMIO gap, wrapping u64.
pub fn addr_range(dev: &Dev, q: &mut Vq, ram_end: u64) {
    let bad: [(u64, u32); 8] = [
        (0xd000_0000, 16),
        (ram_end - 8, 16),
        (ram_end, 16),
        (u64::MAX, 16),
        (u64::MAX - 4, 16),
        (0xfee0_0000, 4096),
        (0x1_0000_0000, 4096),
        (0xffff_ffff_ffff_0000, 0x2_0000),
    ];
    for (k, (addr, len)) in bad.iter().enumerate() {
        let d = 40 + (k as u16) * 3;
        // Bad header.
        q.set_desc(d, *addr, 16, F_NEXT, d + 1);
        q.set_desc(d + 1, DATA, 512, F_WRITE | F_NEXT, d + 2);
        q.set_desc(d + 2, STATUS + u64::from(d), 1, F_WRITE, 0);
        q.push(d);
        dev.kick(0);
        settle(q);
        // Bad data buffer (device-writable: a read would land there).
        let h = header(d, T_IN, 0);
        q.set_desc(d, h, 16, F_NEXT, d + 1);
        q.set_desc(d + 1, *addr, (*len).max(512), F_WRITE | F_NEXT, d + 2);
        q.push(d);
        dev.kick(0);
        settle(q);
        // Bad status byte.
        q.set_desc(d + 1, DATA, 512, F_WRITE | F_NEXT, d + 2);
        q.set_desc(d + 2, *addr, 1, F_WRITE, 0);
        q.push(d);
        dev.kick(0);
        settle(q);
    }
}

/// Case 4: len u32::MAX, a chain of more than 4 GiB, many 4 GiB descriptors, and a
/// write of u32::MAX bytes (at sector 8, so sector 0 stays the host's).
pub fn huge_len(dev: &Dev, q: &mut Vq) {
    read_req(q, 70, 0, DATA, u32::MAX);
    dev.kick(0);
    settle(q);
    let h = header(80, T_IN, 0);
    q.set_desc(80, h, 16, F_NEXT, 81);
    q.set_desc(81, DATA, 0x8000_0000, F_WRITE | F_NEXT, 82);
    q.set_desc(82, DATA, 0x8000_0000, F_WRITE | F_NEXT, 83);
    q.set_desc(83, DATA, 0x8000_0000, F_WRITE | F_NEXT, 84);
    q.set_desc(84, STATUS + 80, 1, F_WRITE, 0);
    q.push(80);
    dev.kick(0);
    settle(q);
    let h = header(100, T_IN, 0);
    q.set_desc(100, h, 16, F_NEXT, 101);
    for i in 101..250u16 {
        q.set_desc(i, DATA, u32::MAX, F_WRITE | F_NEXT, i + 1);
    }
    q.set_desc(250, STATUS + 100, 1, F_WRITE, 0);
    q.push(100);
    dev.kick(0);
    settle(q);
    let h = header(90, T_OUT, 8);
    q.set_desc(90, h, 16, F_NEXT, 91);
    q.set_desc(91, DATA, u32::MAX, F_NEXT, 92);
    q.set_desc(92, STATUS + 90, 1, F_WRITE, 0);
    q.push(90);
    dev.kick(0);
    settle(q);
}

/// Case 5: indirect tables: a length not a multiple of 16, nested INDIRECT, INDIRECT with
/// NEXT, more than 65,535 entries, an empty table, a table outside RAM, a loop inside one.
pub fn indirect(dev: &Dev, q: &mut Vq) {
    let t = Vq::new(0, SIZE, IND);
    let h = header(120, T_IN, 0);
    t.set_desc(0, h, 16, F_NEXT, 1);
    t.set_desc(1, DATA, 512, F_WRITE | F_NEXT, 2);
    t.set_desc(2, STATUS + 120, 1, F_WRITE, 0);
    let cases: [(u64, u32, u16); 6] = [
        (IND, 3 * 16 + 1, F_INDIRECT),
        (IND, 3 * 16, F_INDIRECT | F_NEXT),
        (IND, 0x10_0000 * 16, F_INDIRECT),
        (IND, 0, F_INDIRECT),
        (0xd000_0000, 3 * 16, F_INDIRECT),
        (u64::MAX - 8, 3 * 16, F_INDIRECT),
    ];
    for (addr, len, flags) in cases {
        q.set_desc(120, addr, len, flags, 121);
        q.set_desc(121, DATA, 512, F_WRITE, 0);
        q.push(120);
        dev.kick(0);
        settle(q);
    }
    // Nested: the table's first entry is itself INDIRECT.
    let t2 = Vq::new(0, SIZE, IND + 0x1000);
    t2.set_desc(0, IND, 3 * 16, F_INDIRECT, 0);
    q.set_desc(120, IND + 0x1000, 16, F_INDIRECT, 0);
    q.push(120);
    dev.kick(0);
    settle(q);
    // A loop inside the table.
    t.set_desc(2, STATUS + 120, 1, F_WRITE | F_NEXT, 0);
    q.set_desc(120, IND, 3 * 16, F_INDIRECT, 0);
    q.push(120);
    dev.kick(0);
    settle(q);
}

/// Case 6: avail.idx far more than the queue size ahead, then a kick storm.
pub fn avail_runaway(dev: &Dev, q: &mut Vq, kicks: u32) {
    q.publish_raw(q.avail_idx.wrapping_add(1000));
    for _ in 0..kicks {
        dev.kick(0);
    }
}
