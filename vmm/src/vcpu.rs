//! vCPUs: creation, boot state, and the run loop that turns exits into bus accesses. Each
//! vCPU runs on its own thread; from its first instruction the guest is hostile, so every
//! exit is handled without trusting its contents beyond what KVM guarantees.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::arch::{cpuid, regs};
use crate::bus::Bus;
use crate::exit::{ExitNotifier, ExitReason};
use crate::vm::Vm;

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("{op} on vCPU {id} failed: {err}")]
    Kvm {
        op: &'static str,
        id: u8,
        err: kvm_ioctls::Error,
    },
    #[error("setting up vCPU {id}: {err}")]
    Regs { id: u8, err: regs::RegsError },
    #[error("spawning the vCPU {id} thread: {err}")]
    Spawn { id: u8, err: std::io::Error },
    #[error("installing the vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
}

/// The signal used to kick a vCPU out of KVM_RUN.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn noop_handler(_: i32, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) kick handler: the signal only has to interrupt KVM_RUN.
pub fn install_kick_handler() -> Result<(), VcpuError> {
    register_signal_handler(kick_signal(), noop_handler).map_err(VcpuError::Signal)
}

/// What the vCPUs share: the buses, the stop flag and the exit channel.
#[derive(Clone, Debug)]
pub struct VcpuShared {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub stop: Arc<AtomicBool>,
    pub exit: ExitNotifier,
    /// Install the vCPU seccomp filter when the thread starts.
    pub seccomp: bool,
}

pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
}

impl std::fmt::Debug for Vcpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vcpu").field("id", &self.id).finish()
    }
}

/// How a vCPU leaves its run loop.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Continue,
    Exit(ExitReason),
}

impl Vcpu {
    pub fn new(vm: &Vm, id: u8) -> Result<Vcpu, VcpuError> {
        let fd = vm
            .fd()
            .create_vcpu(u64::from(id))
            .map_err(|err| VcpuError::Kvm {
                op: "KVM_CREATE_VCPU",
                id,
                err,
            })?;
        Ok(Vcpu { id, fd })
    }

    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    pub fn id(&self) -> u8 {
        self.id
    }

    /// Normalized CPUID, MSRs, FPU, LINT pins, and registers for 64-bit entry at `entry`.
    pub fn configure_linux(&self, vm: &Vm, n_vcpus: u8, entry: u64) -> Result<(), VcpuError> {
        self.set_cpuid(vm, n_vcpus)?;
        let id = self.id;
        let r = |err| VcpuError::Regs { id, err };
        regs::setup_msrs(&self.fd).map_err(r)?;
        regs::setup_regs(&self.fd, entry).map_err(r)?;
        regs::setup_fpu(&self.fd).map_err(r)?;
        regs::setup_sregs(&self.fd).map_err(r)?;
        regs::setup_lint(&self.fd).map_err(r)?;
        Ok(())
    }

    /// The normalized CPUID (at boot, and before a template's state is put back).
    pub fn set_cpuid(&self, vm: &Vm, n_vcpus: u8) -> Result<(), VcpuError> {
        let mut cpuid = vm.supported_cpuid().clone();
        let extras = cpuid::Extras {
            tsc_deadline: vm.kvm().check_extension(kvm_ioctls::Cap::TscDeadlineTimer),
            hide_xsave: cpuid::host_is_tcg(),
        };
        cpuid::normalize(&mut cpuid, self.id, n_vcpus, extras);
        self.fd.set_cpuid2(&cpuid).map_err(|err| VcpuError::Kvm {
            op: "KVM_SET_CPUID2",
            id: self.id,
            err,
        })?;
        Ok(())
    }

    /// The vCPU's state after a triple fault, in one line: where it was (rip, rsp, the
    /// mode in cr0/cr4/efer, the page table in cr3, the last page fault in cr2), its
    /// descriptor tables, and any exception KVM still held pending. A guest that dies once
    /// in hundreds of boots can only be diagnosed from this. On Intel KVM leaves the state
    /// as the fault left it; on AMD it re-initializes the vCPU at the shutdown intercept
    /// (the VMCB is undefined after it), so there the registers read as after INIT (rip
    /// 0xfff0) and only the exception vector, which the reset does not clear, is a hint:
    /// the last one KVM itself queued for the guest.
    pub fn fault_state(&self) -> String {
        let mut out = String::new();
        match self.fd.get_regs() {
            Ok(r) => out.push_str(&format!(
                "rip={:#x} rsp={:#x} rflags={:#x} rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} \
                 rsi={:#x} rdi={:#x} rbp={:#x}",
                r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp
            )),
            Err(e) => out.push_str(&format!("regs: {e}")),
        }
        match self.fd.get_sregs() {
            Ok(s) => out.push_str(&format!(
                " cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x}/{:#x} \
                 ss={:#x} idt={:#x}/{:#x} gdt={:#x}/{:#x} tr={:#x}/{:#x}",
                s.cr0,
                s.cr2,
                s.cr3,
                s.cr4,
                s.efer,
                s.cs.selector,
                s.cs.base,
                s.ss.selector,
                s.idt.base,
                s.idt.limit,
                s.gdt.base,
                s.gdt.limit,
                s.tr.selector,
                s.tr.base
            )),
            Err(e) => out.push_str(&format!(" sregs: {e}")),
        }
        match self.fd.get_vcpu_events() {
            Ok(ev) => out.push_str(&format!(
                " exception={}/{}/{:#x} nmi_pending={} interrupt={}/{}",
                ev.exception.injected,
                ev.exception.nr,
                ev.exception.error_code,
                ev.nmi.pending,
                ev.interrupt.injected,
                ev.interrupt.nr
            )),
            Err(e) => out.push_str(&format!(" events: {e}")),
        }
        out
    }

    /// Handles one exit. Public for tests; the run loop is [`Vcpu::run`].
    pub fn step(&mut self, shared: &VcpuShared) -> Step {
        let id = self.id;
        match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                if !shared.pio.read(u64::from(port), data) {
                    data.fill(0xff);
                }
                Step::Continue
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                shared.pio.write(u64::from(port), data);
                Step::Continue
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !shared.mmio.read(addr, data) {
                    data.fill(0);
                }
                Step::Continue
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                shared.mmio.write(addr, data);
                Step::Continue
            }
            Ok(VcpuExit::Hlt) => Step::Exit(ExitReason::GuestHalt),
            Ok(VcpuExit::Shutdown) => Step::Exit(ExitReason::TripleFault {
                vcpu: id,
                state: self.fault_state(),
            }),
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => Step::Exit(ExitReason::GuestReset),
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => Step::Exit(ExitReason::GuestHalt),
                _ => Step::Exit(ExitReason::InternalError(format!(
                    "vCPU {id}: unexpected system event {kind}"
                ))),
            },
            Ok(VcpuExit::FailEntry(reason, cpu)) => Step::Exit(ExitReason::InternalError(format!(
                "vCPU {id}: KVM entry failure, reason {reason:#x} on cpu {cpu}"
            ))),
            Ok(VcpuExit::InternalError) => Step::Exit(ExitReason::InternalError(format!(
                "vCPU {id}: KVM internal error (emulation failure?)"
            ))),
            Ok(VcpuExit::Intr) => Step::Continue,
            Ok(other) => Step::Exit(ExitReason::InternalError(format!(
                "vCPU {id}: unexpected exit {other:?}"
            ))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.fd.set_kvm_immediate_exit(0);
                Step::Continue
            }
            Err(e) => Step::Exit(ExitReason::InternalError(format!(
                "vCPU {id}: KVM_RUN failed: {e}"
            ))),
        }
    }

    /// Runs until the guest or the vmm ends the VM; gives the vCPU back (a template's
    /// state is read from it afterwards).
    pub fn run(mut self, shared: VcpuShared) -> Vcpu {
        if shared.seccomp {
            if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::Vcpu) {
                shared.exit.send(ExitReason::InternalError(e.to_string()));
                return self;
            }
        }
        while !shared.stop.load(Ordering::SeqCst) {
            if let Step::Exit(reason) = self.step(&shared) {
                shared.exit.send(reason);
                return self;
            }
        }
        self.complete_pending_io();
        self
    }

    /// Lets KVM finish the instruction of the last port or MMIO exit (an IN's value goes
    /// into the register only on the next KVM_RUN): KVM_RUN with `immediate_exit` set does
    /// that and returns at once without running the guest. Registers read before it would
    /// lose the access (KVM's API documentation asks for this before saving state).
    fn complete_pending_io(&mut self) {
        self.fd.set_kvm_immediate_exit(1);
        let _ = self.fd.run();
        self.fd.set_kvm_immediate_exit(0);
    }

    /// Starts the vCPU thread.
    pub fn spawn(self, shared: VcpuShared) -> Result<JoinHandle<Vcpu>, VcpuError> {
        let id = self.id;
        std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .stack_size(crate::THREAD_STACK_SIZE)
            .spawn(move || self.run(shared))
            .map_err(|err| VcpuError::Spawn { id, err })
    }
}

/// Stops vCPU threads: raises the stop flag, then kicks each thread until it has left.
/// Returns the vCPUs of the threads that ended normally.
pub fn stop_all(stop: &AtomicBool, handles: Vec<JoinHandle<Vcpu>>) -> Vec<Vcpu> {
    stop.store(true, Ordering::SeqCst);
    let mut vcpus = Vec::with_capacity(handles.len());
    for h in handles {
        // A kick can land just before the thread re-enters KVM_RUN; repeat until it leaves.
        while !h.is_finished() {
            let _ = h.kill(kick_signal());
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Ok(v) = h.join() {
            vcpus.push(v);
        }
    }
    vcpus
}
