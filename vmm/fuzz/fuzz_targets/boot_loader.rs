//! Booting from what a config names: a vm.json from arbitrary text (parsed, validated),
//! its kernel command line (linux-loader's `Cmdline`, as the builder makes it), and
//! arbitrary bytes as the kernel image (ELF or bzImage by magic, `load_kernel` into 16
//! MiB of guest memory) followed by the zero page. The first byte picks which. Errors are
//! fine; a panic is not. A kernel that loads gets its zero page, and the command line
//! the zero page points at is the one given. (The entry point is the image's to choose:
//! one outside RAM faults the guest, not the host.)
#![no_main]

use std::sync::OnceLock;

use husk_vmm::arch::boot::{load_kernel, write_boot_params, KernelEntry};
use husk_vmm::arch::layout::{CMDLINE_MAX_SIZE, CMDLINE_START};
use husk_vmm::config::VmConfig;
use libfuzzer_sys::fuzz_target;
use linux_loader::cmdline::Cmdline;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM: usize = 16 << 20;

fn kernel_path() -> &'static std::path::Path {
    static P: OnceLock<std::path::PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            std::path::PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        base.join(format!("husk-fuzz-kernel-{}", std::process::id()))
    })
}

fn cmdline_of(text: &str) -> Option<Cmdline> {
    let c = Cmdline::try_from(text, CMDLINE_MAX_SIZE).ok()?;
    match c.as_cstring() {
        Ok(s) => assert!(s.as_bytes().len() < CMDLINE_MAX_SIZE),
        // linux-loader takes some lines it cannot write (a NUL inside, init arguments
        // only): the vmm must then fail writing the zero page, with an error.
        Err(_) => {
            let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
            let entry = KernelEntry {
                entry: 0x100000,
                setup_header: None,
            };
            assert!(
                write_boot_params(&mem, &entry, &c, None).is_err(),
                "{text:?}"
            );
            return None;
        }
    }
    Some(c)
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    if pick & 1 == 0 {
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        if let Ok(cfg) = serde_json::from_str::<VmConfig>(text) {
            if cfg.validate().is_ok() {
                assert!(cfg.kernel.is_some() && cfg.vcpus >= 1);
            }
            let _ = cmdline_of(&cfg.cmdline);
        }
        let _ = cmdline_of(text);
        return;
    }
    std::fs::write(kernel_path(), rest).unwrap();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let Ok(entry) = load_kernel(&mem, kernel_path()) else {
        return;
    };
    let cmdline = cmdline_of("console=ttyS0 reboot=k panic=1").unwrap();
    write_boot_params(&mem, &entry, &cmdline, None).expect("the zero page fits in 16 MiB");
    let mut back = vec![0u8; 32];
    mem.read_slice(&mut back, GuestAddress(CMDLINE_START))
        .unwrap();
    assert!(back.starts_with(b"console=ttyS0 reboot=k panic=1\0"));
});
