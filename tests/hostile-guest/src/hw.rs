//! The machine as the guest sees it: port I/O, the serial port, MMIO, the i8042 reset, and
//! the page tables that map the MMIO gap (husk-vmm's boot tables map only the first 1 GiB).

use core::arch::asm;
use core::fmt::{self, Write};

pub const SERIAL: u16 = 0x3f8;
const I8042_COMMAND: u16 = 0x64;
const I8042_RESET: u8 = 0xfe;

pub fn outb(port: u16, v: u8) {
    // SAFETY: port I/O has no memory effects in this guest; the vmm decides what it means.
    unsafe { asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack)) };
}

pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as for `outb`.
    unsafe { asm!("in al, dx", out("al") v, in("dx") port, options(nomem, nostack)) };
    v
}

/// The serial port's transmit register: one exit per byte, no FIFO wait (husk's UART never
/// holds the guest back).
pub struct Serial;

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            outb(SERIAL, b);
        }
        Ok(())
    }
}

#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::hw::Serial, $($arg)*);
    }};
}

/// Ends the VM: husk-vmm treats the i8042 reset pulse as the guest's end (exit 0).
pub fn reset() -> ! {
    outb(I8042_COMMAND, I8042_RESET);
    loop {
        // SAFETY: halting with interrupts off only stops this vCPU.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

pub fn read32(addr: u64) -> u32 {
    // SAFETY: `addr` is in the MMIO gap (mapped by `map_mmio_gap`) or guest RAM; an access
    // nobody claims reads as zero in husk-vmm.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

pub fn write32(addr: u64, v: u32) {
    // SAFETY: as for `read32`.
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}

pub fn write16(addr: u64, v: u16) {
    // SAFETY: as for `read32`.
    unsafe { core::ptr::write_volatile(addr as *mut u16, v) }
}

pub fn write8(addr: u64, v: u8) {
    // SAFETY: as for `read32`.
    unsafe { core::ptr::write_volatile(addr as *mut u8, v) }
}

pub fn read8(addr: u64) -> u8 {
    // SAFETY: as for `read32`.
    unsafe { core::ptr::read_volatile(addr as *const u8) }
}

pub fn write64(addr: u64, v: u64) {
    // SAFETY: as for `read32`.
    unsafe { core::ptr::write_volatile(addr as *mut u64, v) }
}

pub fn read64(addr: u64) -> u64 {
    // SAFETY: as for `read32`.
    unsafe { core::ptr::read_volatile(addr as *const u64) }
}

pub fn read16(addr: u64) -> u16 {
    // SAFETY: as for `read32`.
    unsafe { core::ptr::read_volatile(addr as *const u16) }
}

/// A full barrier between writing a ring and telling the device.
pub fn fence() {
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
}

/// husk-vmm's page-directory-pointer table (layout::PDPTE_START).
const BOOT_PDPTE: u64 = 0xa000;

#[repr(C, align(4096))]
struct PageDir([u64; 512]);

static mut GAP_PD: PageDir = PageDir([0; 512]);

/// Maps 3..4 GiB (the MMIO gap: virtio-mmio at 0xd000_0000, IOAPIC, LAPIC) identity with
/// uncached 2 MiB pages, in a page directory of our own hung into the boot PDPT.
pub fn map_mmio_gap() {
    const PRESENT_RW_PS: u64 = 0x83;
    const PWT_PCD: u64 = 0x18;
    let pd = &raw mut GAP_PD;
    for i in 0..512u64 {
        let phys = 0xc000_0000 + (i << 21);
        // SAFETY: single vCPU, nothing else touches GAP_PD.
        unsafe { (*pd).0[i as usize] = phys | PRESENT_RW_PS | PWT_PCD };
    }
    write64(BOOT_PDPTE + 3 * 8, (pd as u64) | 0x3);
    // SAFETY: reloading CR3 with the same tables flushes the TLB.
    unsafe { asm!("mov rax, cr3", "mov cr3, rax", out("rax") _, options(nostack)) };
}

/// A number printed in decimal without core's integer formatting (whose padding code uses
/// SSE, which PVM's instruction emulator cannot run).
pub struct Dec(pub u64);
/// The same in hex with a 0x prefix.
pub struct Hex(pub u64);

fn digits(f: &mut fmt::Formatter<'_>, mut v: u64, base: u64) -> fmt::Result {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b"0123456789abcdef"[(v % base) as usize];
        v /= base;
        if v == 0 {
            break;
        }
    }
    for b in &buf[i..] {
        f.write_char(char::from(*b))?;
    }
    Ok(())
}

impl fmt::Display for Dec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        digits(f, self.0, 10)
    }
}

impl fmt::Display for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("0x")?;
        digits(f, self.0, 16)
    }
}
