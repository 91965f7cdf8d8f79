//! Intel MultiProcessor Specification 1.4 table: how a guest without ACPI finds its vCPUs,
//! its IOAPIC and the ISA interrupt routing. Written at the start of the EBDA where Linux
//! scans for it.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::layout;

/// At most this many vCPUs fit in the 1 KiB the table may use.
pub const MAX_VCPUS: u8 = 32;

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOT_PROCESSOR: u8 = 2;
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201; // FPU, APIC
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    #[error("{0} vCPUs do not fit in the MP table (1..={MAX_VCPUS})")]
    TooManyVcpus(u8),
    #[error("the MP table does not fit in guest memory")]
    Memory,
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |acc, b| acc.wrapping_add(*b))
        .wrapping_neg()
}

/// The bytes of the MP floating pointer followed by the configuration table, for a table
/// placed at guest address `base`.
pub fn build(base: u64, n_vcpus: u8) -> Result<Vec<u8>, MpTableError> {
    if n_vcpus == 0 || n_vcpus > MAX_VCPUS {
        return Err(MpTableError::TooManyVcpus(n_vcpus));
    }
    let ioapic_id = n_vcpus;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..n_vcpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOT_PROCESSOR } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(layout::IOAPIC_START as u32).to_le_bytes());
    count += 1;
    for irq in 0..=layout::IRQ_MAX as u8 {
        entries.extend_from_slice(&[
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            0,
            0,
            0,
            irq,
            ioapic_id,
            irq,
        ]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_addr = base + 16;
    let mut table: Vec<u8> = Vec::with_capacity(44 + entries.len());
    table.extend_from_slice(b"PCMP");
    let len = (44 + entries.len()) as u16;
    table.extend_from_slice(&len.to_le_bytes());
    table.extend_from_slice(&[4, 0]); // spec revision, checksum (filled below)
    table.extend_from_slice(b"HUSK    ");
    table.extend_from_slice(b"000000000000");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(layout::APIC_START as u32).to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes());
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut out = Vec::with_capacity(16 + table.len());
    out.extend_from_slice(b"_MP_");
    out.extend_from_slice(&(table_addr as u32).to_le_bytes());
    out.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]); // length in 16-byte units, revision
    out[10] = checksum(&out);
    out.extend_from_slice(&table);
    Ok(out)
}

/// Writes the MP table for `n_vcpus` at the start of the EBDA.
pub fn setup<M: GuestMemoryBackend>(mem: &M, n_vcpus: u8) -> Result<(), MpTableError> {
    let bytes = build(layout::EBDA_START, n_vcpus)?;
    mem.write_slice(&bytes, GuestAddress(layout::EBDA_START))
        .map_err(|_| MpTableError::Memory)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_layout() {
        let t = build(layout::EBDA_START, 2).unwrap();
        assert_eq!(&t[..4], b"_MP_");
        assert_eq!(sum(&t[..16]), 0);
        let ptr = u32::from_le_bytes([t[4], t[5], t[6], t[7]]) as u64;
        assert_eq!(ptr, layout::EBDA_START + 16);
        let table = &t[16..];
        assert_eq!(&table[..4], b"PCMP");
        let len = u16::from_le_bytes([table[4], table[5]]) as usize;
        assert_eq!(len, table.len());
        assert_eq!(sum(table), 0);
        // Two processors, the first is the boot processor.
        assert_eq!(table[44], ENTRY_PROCESSOR);
        assert_eq!(table[44 + 3], CPU_ENABLED | CPU_BOOT_PROCESSOR);
        assert_eq!(table[64 + 1], 1);
        assert_eq!(table[64 + 3], CPU_ENABLED);
    }

    #[test]
    fn largest_table_fits_the_ebda() {
        let t = build(layout::EBDA_START, MAX_VCPUS).unwrap();
        assert!(t.len() <= 1024);
    }

    #[test]
    fn vcpu_count_checked() {
        assert!(build(0, 0).is_err());
        assert!(build(0, MAX_VCPUS + 1).is_err());
    }
}
