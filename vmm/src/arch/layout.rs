//! Guest physical memory map. Everything the vmm places in guest memory has its address here.
//!
//! ```text
//! 0x0000_0500  GDT (4 entries)            0x0000_0520  IDT (empty)
//! 0x0000_7000  zero page (boot_params)    0x0000_8ff0  boot stack top
//! 0x0000_9000  PML4  0xa000 PDPTE  0xb000 PDE (identity map of the first 1 GiB, 2 MiB pages)
//! 0x0002_0000  kernel command line        0x0009_fc00  MP table (EBDA, reserved)
//! 0x0010_0000  high memory: the kernel is loaded from here up; the initrd at the top of low RAM
//! 0xc000_0000  32-bit MMIO gap: virtio-mmio devices from 0xd000_0000, IOAPIC, LAPIC
//! 0x1_0000_0000 RAM above 3 GiB continues here
//! ```

/// GDT location.
pub const GDT_START: u64 = 0x500;
/// IDT location (an empty IDT: the kernel installs its own).
pub const IDT_START: u64 = 0x520;
/// The Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page-table pages.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Kernel command line and its maximum length, including the NUL.
pub const CMDLINE_START: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Start of the extended BIOS data area: the MP table lives here, e820 reserves it.
pub const EBDA_START: u64 = 0x9fc00;
/// First byte above the legacy hole.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start and end of the 32-bit MMIO gap; RAM never overlaps it.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// virtio-mmio devices: one 4 KiB window each from here.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// First legacy IRQ (GSI) given to virtio devices; serial uses 4.
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Last usable IOAPIC pin.
pub const IRQ_MAX: u32 = 23;
/// IOAPIC and local APIC addresses (architectural defaults).
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const APIC_START: u64 = 0xfee0_0000;
/// TSS and identity map addresses required by KVM on Intel, just below the IOAPIC... in the gap.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// Legacy I/O ports.
pub const SERIAL_PORT: u16 = 0x3f8;
pub const SERIAL_IRQ: u32 = 4;
pub const I8042_PORT: u16 = 0x60;

/// The guest RAM ranges for `mem_size` bytes: low RAM up to the MMIO gap, the rest above 4 GiB.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_size - MMIO_GAP_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_split_around_gap() {
        assert_eq!(ram_ranges(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(
            ram_ranges(4 << 30),
            vec![(0, MMIO_GAP_START), (MMIO_GAP_END, 1 << 30)]
        );
    }

    #[test]
    fn fixed_areas_do_not_overlap() {
        const {
            assert!(GDT_START + 32 <= IDT_START);
            assert!(IDT_START + 8 <= ZERO_PAGE_START);
            assert!(ZERO_PAGE_START + 0x1000 <= BOOT_STACK_POINTER);
            assert!(PDE_START + 0x1000 <= CMDLINE_START);
            assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
            assert!(VIRTIO_MMIO_BASE > MMIO_GAP_START && VIRTIO_MMIO_BASE < IOAPIC_START);
        }
    }
}
