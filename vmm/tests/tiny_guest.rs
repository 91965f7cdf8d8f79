//! Tiny hand-written real-mode guests run on this machine's /dev/kvm to test the vCPU exit
//! plumbing (port I/O to the serial console, i8042 reset, triple fault). They need /dev/kvm
//! and say so when they skip. On PVM each instruction costs about a microsecond: keep them
//! to a handful of instructions.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use husk_vmm::arch::layout;
use husk_vmm::bus::Bus;
use husk_vmm::devices::legacy::console::{ConsoleBuffer, ConsoleWriter};
use husk_vmm::devices::legacy::i8042::{I8042, I8042_PORTS};
use husk_vmm::devices::legacy::serial::{IrqTrigger, SerialDevice};
use husk_vmm::exit::{ExitNotifier, ExitReason};
use husk_vmm::vcpu::{install_kick_handler, stop_all, Vcpu, VcpuShared};
use husk_vmm::vm::Vm;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

fn kvm_available() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Runs `code` in real mode at 0x1000 and returns the exit reason and console output.
fn run_real_mode(code: &[u8], idt_limit: Option<u16>) -> (ExitReason, Vec<u8>) {
    let mem = husk_vmm::memory::create(16 << 20, None).unwrap();
    mem.write_slice(code, GuestAddress(0x1000)).unwrap();
    let vm = Vm::new(mem).unwrap();
    let (tx, rx) = mpsc::channel();
    let exit = ExitNotifier::new(tx);
    let buf = ConsoleBuffer::new(1024);
    let mut pio = Bus::new();
    let serial = SerialDevice::new(
        IrqTrigger(EventFd::new(0).unwrap()),
        ConsoleWriter::new(buf.clone(), exit.clone()),
    );
    pio.insert(
        Arc::new(Mutex::new(serial)),
        u64::from(layout::SERIAL_PORT),
        8,
    )
    .unwrap();
    pio.insert(
        Arc::new(Mutex::new(I8042::new(exit.clone()))),
        u64::from(layout::I8042_PORT),
        I8042_PORTS,
    )
    .unwrap();
    let vcpu = Vcpu::new(&vm, 0).unwrap();
    let mut sregs = vcpu.fd().get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    if let Some(limit) = idt_limit {
        sregs.idt.limit = limit;
    }
    vcpu.fd().set_sregs(&sregs).unwrap();
    let regs = kvm_bindings::kvm_regs {
        rip: 0x1000,
        rflags: 2,
        ..Default::default()
    };
    vcpu.fd().set_regs(&regs).unwrap();
    install_kick_handler().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let shared = VcpuShared {
        pio: Arc::new(pio),
        mmio: Arc::new(Bus::new()),
        stop: stop.clone(),
        exit,
        seccomp: true,
    };
    let h = vcpu.spawn(shared).unwrap();
    let reason = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("tiny guest did not finish");
    stop_all(&stop, vec![h]);
    buf.close();
    let mut out = Vec::new();
    while let Some(b) = buf_take(&buf) {
        out.extend(b);
    }
    (reason, out)
}

fn buf_take(buf: &ConsoleBuffer) -> Option<Vec<u8>> {
    let mut sink = Vec::new();
    struct W<'a>(&'a mut Vec<u8>);
    impl std::io::Write for W<'_> {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    buf.drain_into(&mut W(&mut sink)).ok()?;
    (!sink.is_empty()).then_some(sink)
}

#[test]
fn serial_output_then_i8042_reset() {
    if !kvm_available() {
        eprintln!("SKIP: needs /dev/kvm");
        return;
    }
    let code = [
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'O', // mov al, 'O'
        0xee, // out dx, al
        0xb0, b'K', // mov al, 'K'
        0xee, // out dx, al
        0xb0, 0xfe, // mov al, 0xfe
        0xe6, 0x64, // out 0x64, al
        0xf4, // hlt
    ];
    let (reason, out) = run_real_mode(&code, None);
    assert_eq!(reason, ExitReason::GuestReset);
    assert_eq!(out, b"OK");
}

#[test]
fn triple_fault_is_reported() {
    if !kvm_available() {
        eprintln!("SKIP: needs /dev/kvm");
        return;
    }
    if husk_vmm::check::kvm_kind(&husk_vmm::check::RealHost) == husk_vmm::check::KvmKind::Pvm {
        // PVM's instruction emulator spins ~25 s on this and reports an emulation failure
        // instead of a shutdown: only hardware KVM models a triple fault.
        eprintln!("SKIP: triple fault needs hardware KVM (this /dev/kvm is PVM)");
        return;
    }
    // int3 with an empty IVT limit: #GP, double fault, shutdown.
    let (reason, _) = run_real_mode(&[0xcc], Some(0));
    let ExitReason::TripleFault { vcpu, state } = reason else {
        panic!("expected a triple fault, got {reason}");
    };
    assert_eq!(vcpu, 0);
    // Real mode, stopped at the int3 (the instruction that faulted).
    assert!(state.contains("cr0=0x"), "{state}");
    assert!(state.contains("rip=0x"), "{state}");
}
