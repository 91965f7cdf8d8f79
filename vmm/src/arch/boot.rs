//! Loading the kernel and initrd and writing the Linux zero page (boot_params) with the e820
//! map and the command line.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{load_cmdline, BzImage, Cmdline, Elf, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::layout;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x100_0000;
/// Offset of the 64-bit entry point from the start of a bzImage's protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const PAGE_SIZE: u64 = 0x1000;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("opening {path}: {err}")]
    Open { path: PathBuf, err: std::io::Error },
    #[error("reading {path}: {err}")]
    Read { path: PathBuf, err: std::io::Error },
    #[error("loading kernel {path}: {err}")]
    Load {
        path: PathBuf,
        err: linux_loader::loader::Error,
    },
    #[error("{path} is neither an ELF vmlinux nor a bzImage")]
    UnknownKernelFormat { path: PathBuf },
    #[error("initrd of {size} bytes does not fit in guest memory")]
    InitrdTooBig { size: u64 },
    #[error("writing the initrd to guest memory failed")]
    InitrdWrite,
    #[error("writing the command line to guest memory failed: {0}")]
    Cmdline(linux_loader::loader::Error),
    #[error("invalid command line: {0}")]
    CmdlineString(linux_loader::cmdline::Error),
    #[error("writing the zero page failed: {0}")]
    ZeroPage(linux_loader::configurator::Error),
}

/// Where the kernel landed and how to enter it.
#[derive(Debug, Clone, Copy)]
pub struct KernelEntry {
    /// 64-bit entry point.
    pub entry: u64,
    /// The bzImage setup header, to be copied into the zero page.
    pub setup_header: Option<setup_header>,
}

/// Kernel image formats husk loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    Elf,
    BzImage,
}

/// Tells an ELF vmlinux from a bzImage by their magic numbers.
pub fn kernel_format(header: &[u8]) -> Option<KernelFormat> {
    if header.len() >= 4 && header[..4] == *b"\x7fELF" {
        return Some(KernelFormat::Elf);
    }
    if header.len() >= 0x206 && header[0x202..0x206] == *b"HdrS" {
        return Some(KernelFormat::BzImage);
    }
    None
}

/// Loads the kernel at `path` into guest memory.
pub fn load_kernel<M: GuestMemoryBackend>(mem: &M, path: &Path) -> Result<KernelEntry, BootError> {
    let mut file = File::open(path).map_err(|err| BootError::Open {
        path: path.into(),
        err,
    })?;
    let mut head = [0u8; 0x206];
    let n = read_up_to(&mut file, &mut head).map_err(|err| BootError::Read {
        path: path.into(),
        err,
    })?;
    file.seek(SeekFrom::Start(0))
        .map_err(|err| BootError::Read {
            path: path.into(),
            err,
        })?;
    let load_err = |err| BootError::Load {
        path: path.into(),
        err,
    };
    let himem = Some(GuestAddress(layout::HIMEM_START));
    match kernel_format(&head[..n]) {
        Some(KernelFormat::Elf) => {
            let r = Elf::load(mem, None, &mut file, himem).map_err(load_err)?;
            Ok(KernelEntry {
                entry: r.kernel_load.raw_value(),
                setup_header: None,
            })
        }
        Some(KernelFormat::BzImage) => {
            let r = BzImage::load(mem, None, &mut file, himem).map_err(load_err)?;
            Ok(KernelEntry {
                entry: r.kernel_load.raw_value() + BZIMAGE_64BIT_ENTRY_OFFSET,
                setup_header: r.setup_header,
            })
        }
        None => Err(BootError::UnknownKernelFormat { path: path.into() }),
    }
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Where the initrd went.
#[derive(Debug, Clone, Copy)]
pub struct InitrdPlace {
    pub addr: u64,
    pub size: u64,
}

/// Loads the initrd page-aligned at the top of low RAM (below the MMIO gap).
pub fn load_initrd<M: GuestMemoryBackend>(
    mem: &M,
    path: &Path,
    kernel_end_hint: u64,
) -> Result<InitrdPlace, BootError> {
    let mut file = File::open(path).map_err(|err| BootError::Open {
        path: path.into(),
        err,
    })?;
    let size = file
        .seek(SeekFrom::End(0))
        .and_then(|s| file.seek(SeekFrom::Start(0)).map(|_| s))
        .map_err(|err| BootError::Read {
            path: path.into(),
            err,
        })?;
    let low_end = mem
        .last_addr()
        .raw_value()
        .saturating_add(1)
        .min(layout::MMIO_GAP_START);
    let addr = low_end
        .checked_sub(size)
        .map(|a| a & !(PAGE_SIZE - 1))
        .filter(|a| *a >= kernel_end_hint)
        .ok_or(BootError::InitrdTooBig { size })?;
    let size_usize = usize::try_from(size).map_err(|_| BootError::InitrdTooBig { size })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size_usize)
        .map_err(|_| BootError::InitrdWrite)?;
    Ok(InitrdPlace { addr, size })
}

/// The e820 map for `mem`: low RAM below the EBDA, the EBDA reserved, RAM from 1 MiB.
pub fn e820_map<M: GuestMemoryBackend>(mem: &M) -> Vec<boot_e820_entry> {
    let mut map = vec![
        boot_e820_entry {
            addr: 0,
            size: layout::EBDA_START,
            r#type: E820_RAM,
        },
        boot_e820_entry {
            addr: layout::EBDA_START,
            size: layout::HIMEM_START - layout::EBDA_START,
            r#type: E820_RESERVED,
        },
    ];
    let end = mem.last_addr().raw_value().saturating_add(1);
    let low_end = end.min(layout::MMIO_GAP_START);
    map.push(boot_e820_entry {
        addr: layout::HIMEM_START,
        size: low_end - layout::HIMEM_START,
        r#type: E820_RAM,
    });
    if end > layout::MMIO_GAP_END {
        map.push(boot_e820_entry {
            addr: layout::MMIO_GAP_END,
            size: end - layout::MMIO_GAP_END,
            r#type: E820_RAM,
        });
    }
    map
}

/// Writes the command line and the zero page.
pub fn write_boot_params<M: GuestMemoryBackend>(
    mem: &M,
    kernel: &KernelEntry,
    cmdline: &Cmdline,
    initrd: Option<InitrdPlace>,
) -> Result<(), BootError> {
    load_cmdline(mem, GuestAddress(layout::CMDLINE_START), cmdline).map_err(BootError::Cmdline)?;
    let cmdline_len = cmdline
        .as_cstring()
        .map(|c| c.as_bytes().len())
        .map_err(BootError::CmdlineString)?;
    let mut params = boot_params::default();
    if let Some(hdr) = kernel.setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = layout::CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    if let Some(i) = initrd {
        params.hdr.ramdisk_image = i.addr as u32;
        params.hdr.ramdisk_size = i.size as u32;
    }
    let map = e820_map(mem);
    for (slot, e) in params.e820_table.iter_mut().zip(map.iter()) {
        *slot = *e;
    }
    params.e820_entries = map.len().min(params.e820_table.len()) as u8;
    LinuxBootConfigurator::write_bootparams::<M>(
        &BootParams::new::<boot_params>(&params, GuestAddress(layout::ZERO_PAGE_START)),
        mem,
    )
    .map_err(BootError::ZeroPage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem(size: usize) -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap()
    }

    #[test]
    fn format_by_magic() {
        assert_eq!(kernel_format(b"\x7fELF\x02"), Some(KernelFormat::Elf));
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(kernel_format(&bz), Some(KernelFormat::BzImage));
        assert_eq!(kernel_format(b"garbage"), None);
    }

    #[test]
    fn e820_covers_ram_and_reserves_ebda() {
        let m = mem(64 << 20);
        let map = e820_map(&m);
        assert_eq!(map.len(), 3);
        assert_eq!({ map[0].size }, layout::EBDA_START);
        assert_eq!({ map[1].r#type }, E820_RESERVED);
        assert_eq!({ map[2].addr } + { map[2].size }, 64 << 20);
    }

    #[test]
    fn zero_page_written() {
        let m = mem(64 << 20);
        let mut cl = Cmdline::new(layout::CMDLINE_MAX_SIZE).unwrap();
        cl.insert_str("console=ttyS0").unwrap();
        let k = KernelEntry {
            entry: 0x100_0000,
            setup_header: None,
        };
        let initrd = InitrdPlace {
            addr: 0x300_0000,
            size: 0x1000,
        };
        write_boot_params(&m, &k, &cl, Some(initrd)).unwrap();
        let p: boot_params = m.read_obj(GuestAddress(layout::ZERO_PAGE_START)).unwrap();
        assert_eq!({ p.hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!({ p.hdr.cmd_line_ptr }, layout::CMDLINE_START as u32);
        assert_eq!({ p.hdr.cmdline_size }, 13);
        assert_eq!({ p.hdr.ramdisk_image }, 0x300_0000);
        assert_eq!(p.e820_entries, 3);
        let mut buf = [0u8; 14];
        m.read_slice(&mut buf, GuestAddress(layout::CMDLINE_START))
            .unwrap();
        assert_eq!(&buf, b"console=ttyS0\0");
    }

    #[test]
    fn initrd_at_top_of_low_ram() {
        let dir = std::env::temp_dir().join(format!("husk-initrd-{}", std::process::id()));
        std::fs::write(&dir, vec![7u8; 5000]).unwrap();
        let m = mem(32 << 20);
        let place = load_initrd(&m, &dir, layout::HIMEM_START).unwrap();
        assert_eq!(place.addr % PAGE_SIZE, 0);
        assert!(place.addr + place.size <= 32 << 20);
        let b: u8 = m.read_obj(GuestAddress(place.addr + 4999)).unwrap();
        assert_eq!(b, 7);
        let small = mem(16 << 20);
        std::fs::write(&dir, vec![0u8; 17 << 20]).unwrap();
        assert!(matches!(
            load_initrd(&small, &dir, layout::HIMEM_START),
            Err(BootError::InitrdTooBig { .. })
        ));
        std::fs::remove_file(&dir).unwrap();
    }
}
