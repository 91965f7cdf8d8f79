//! Building a VM from a validated [`VmConfig`] in one fallible step, and running it.
//!
//! Boot sequence: (1) check /dev/kvm, (2) block stop signals, (3) guest memory (memfd),
//! (4) KVM VM with irqchip and PIT, (5) kernel and initrd, (6) legacy devices on the port bus,
//! (7) virtio-mmio devices with irqfds/ioeventfds and their command-line entries,
//! (8) zero page, MP table, GDT and page tables, (9) vCPUs configured for 64-bit entry,
//! then [`Vmm::run`] starts the event loop and one thread per vCPU and waits for the end.
//! A VM restored from a template (`restore_from`, see `snapshot`) gets its RAM, chips,
//! serial, transports and vCPUs from the snapshot instead of steps 5, 8 and 9's boot state;
//! in template mode (`snapshot_to`) [`Vmm::run`] writes the snapshot when the guest agent
//! says it serves.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::IoEventAddress;
use linux_loader::loader::Cmdline;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::{boot, layout, mptable, regs};
use crate::bus::Bus;
use crate::check::{kvm_kind, KvmKind, RealHost};
use crate::config::{SerialOutput, VmConfig};
use crate::control::{block_stop_signals, Control};
use crate::devices::legacy::console::{
    spawn_output, ConsoleBuffer, ConsoleWriter, CONSOLE_BUFFER_BYTES,
};
use crate::devices::legacy::i8042::{I8042, I8042_PORTS};
use crate::devices::legacy::serial::{IrqTrigger, SerialDevice};
use crate::devices::virtio::blk::Block;
use crate::devices::virtio::mmio::{MmioTransport, SnapshotTransport, REG_QUEUE_NOTIFY};
use crate::devices::virtio::VirtioDevice;
use crate::exit::{ExitNotifier, ExitReason};
use crate::snapshot::{kvm_state, Snapshot, SnapshotError};
use crate::vcpu::{install_kick_handler, stop_all, Vcpu, VcpuShared};
use crate::vm::Vm;

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    UnsuitableKvm(String),
    #[error(transparent)]
    Memory(#[from] crate::memory::MemoryError),
    #[error(transparent)]
    Vm(#[from] crate::vm::VmError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    #[error(transparent)]
    MpTable(#[from] mptable::MpTableError),
    #[error(transparent)]
    Vcpu(#[from] crate::vcpu::VcpuError),
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error(transparent)]
    Block(#[from] crate::devices::virtio::blk::device::BlockError),
    #[error(transparent)]
    Vsock(#[from] crate::devices::virtio::vsock::VsockError),
    #[error("{what}: {err}")]
    Io {
        what: &'static str,
        err: std::io::Error,
    },
    #[error("{what}: {err}")]
    Kvm {
        what: &'static str,
        err: kvm_ioctls::Error,
    },
    #[error("kernel command line: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    #[error(transparent)]
    Bus(#[from] crate::bus::BusError),
    #[error("too many virtio devices: no IRQ left for device {0}")]
    NoIrq(usize),
    #[error("{0}")]
    Event(String),
    #[error(transparent)]
    Fs(#[from] crate::devices::virtio::fs::FsError),
    #[error(transparent)]
    Net(#[from] crate::devices::virtio::net::NetError),
    #[error("restoring from {dir}: {err}")]
    Restore { dir: PathBuf, err: SnapshotError },
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> VmmError {
    move |err| VmmError::Io { what, err }
}

/// Refuses a /dev/kvm that cannot run a normal guest at speed, unless forced.
pub fn ensure_usable_kvm(force: bool) -> Result<(), VmmError> {
    let line = match kvm_kind(&RealHost) {
        KvmKind::Hardware => return Ok(()),
        KvmKind::Absent => {
            return Err(VmmError::UnsuitableKvm(
                "no usable /dev/kvm on this host".into(),
            ))
        }
        KvmKind::Pvm => "this /dev/kvm is PVM (software KVM): a normal guest kernel is emulated instruction by instruction here; run inside the nested test host (make nested) or pass --force",
        KvmKind::EmulationOnly => "this /dev/kvm has no VMX/SVM behind it (emulation only): guests would crawl; run on hardware KVM or pass --force",
    };
    if force {
        log::warn!("{line} (forced)");
        Ok(())
    } else {
        Err(VmmError::UnsuitableKvm(line.into()))
    }
}

/// A built VM, ready to run.
pub struct Vmm {
    vm: Vm,
    vcpus: Vec<Vcpu>,
    shared: VcpuShared,
    exit_rx: Receiver<ExitReason>,
    events: EventManager<Subscriber>,
    stop_evt: EventFd,
    console: Arc<ConsoleBuffer>,
    console_thread: Option<JoinHandle<()>>,
    serial: Arc<Mutex<SerialDevice>>,
    transports: Vec<Arc<Mutex<dyn SnapshotTransport>>>,
    snapshot_to: Option<PathBuf>,
}

impl std::fmt::Debug for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmm")
            .field("vcpus", &self.vcpus.len())
            .finish()
    }
}

/// Where the guest starts: a kernel (and initrd) just loaded, or a template's snapshot
/// (its RAM already loaded).
enum Start {
    Boot {
        kernel: boot::KernelEntry,
        initrd: Option<boot::InitrdPlace>,
    },
    /// Boxed: a snapshot is kilobytes of register state.
    Restore(Box<Snapshot>),
}

struct Builder<'a> {
    vm: &'a Vm,
    mmio: Bus,
    events: &'a mut EventManager<Subscriber>,
    cmdline: Cmdline,
    slots: usize,
    transports: Vec<Arc<Mutex<dyn SnapshotTransport>>>,
}

impl Builder<'_> {
    fn attach_virtio<D: VirtioDevice + 'static>(&mut self, device: D) -> Result<(), VmmError> {
        let slot = self.slots;
        let irq = layout::VIRTIO_IRQ_BASE + slot as u32;
        if irq > layout::IRQ_MAX {
            return Err(VmmError::NoIrq(slot));
        }
        let base = layout::VIRTIO_MMIO_BASE + slot as u64 * layout::VIRTIO_MMIO_SIZE;
        let irq_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(io("creating an irqfd"))?;
        self.vm
            .fd()
            .register_irqfd(&irq_evt, irq)
            .map_err(|err| VmmError::Kvm {
                what: "KVM_IRQFD",
                err,
            })?;
        let transport = MmioTransport::new(device, self.vm.memory().clone(), irq_evt)
            .map_err(io("creating queue eventfds"))?;
        for (i, evt) in transport.queue_evts().iter().enumerate() {
            self.vm
                .fd()
                .register_ioevent(
                    evt,
                    &IoEventAddress::Mmio(base + REG_QUEUE_NOTIFY),
                    i as u32,
                )
                .map_err(|err| VmmError::Kvm {
                    what: "KVM_IOEVENTFD",
                    err,
                })?;
        }
        let transport = Arc::new(Mutex::new(transport));
        self.mmio
            .insert(transport.clone(), base, layout::VIRTIO_MMIO_SIZE)?;
        self.transports.push(transport.clone());
        self.events.add_subscriber(transport);
        self.cmdline
            .add_virtio_mmio_device(layout::VIRTIO_MMIO_SIZE, GuestAddress(base), irq, None)
            .map_err(VmmError::Cmdline)?;
        self.slots += 1;
        Ok(())
    }
}

fn console_sink(out: &SerialOutput) -> Result<Box<dyn Write + Send>, VmmError> {
    Ok(match out {
        SerialOutput::Stdout => Box::new(std::io::stdout()),
        SerialOutput::None => Box::new(std::io::sink()),
        SerialOutput::File(p) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(io("opening the serial output file"))?,
        ),
    })
}

impl TryFrom<&VmConfig> for Vmm {
    type Error = VmmError;

    fn try_from(cfg: &VmConfig) -> Result<Vmm, VmmError> {
        cfg.validate()?;
        ensure_usable_kvm(cfg.force)?;
        block_stop_signals().map_err(|e| io("blocking stop signals")(e.into()))?;
        let kernel_path = cfg
            .kernel
            .as_deref()
            .ok_or(crate::config::ConfigError::NoKernel)?;

        let mem = crate::memory::create(cfg.mem_mib << 20, cfg.mem_dir.as_deref())?;
        let restore_err = |err| VmmError::Restore {
            dir: cfg.restore_from.clone().unwrap_or_default(),
            err,
        };
        let snapshot = match &cfg.restore_from {
            Some(dir) => {
                let snap = Snapshot::read(dir).map_err(restore_err)?;
                let bytes = crate::snapshot::ram::load(&mem, &dir.join(crate::snapshot::RAM_FILE))
                    .map_err(restore_err)?;
                log::info!(
                    "restoring from {}: {} MiB of RAM",
                    dir.display(),
                    bytes >> 20
                );
                Some(snap)
            }
            None => None,
        };
        let vm = Vm::new(mem)?;
        let start = match snapshot {
            Some(snap) => {
                kvm_state::restore_vm(vm.fd(), &snap.vm).map_err(restore_err)?;
                Start::Restore(Box::new(snap))
            }
            None => {
                let kernel = boot::load_kernel(vm.memory(), kernel_path)?;
                let initrd = match &cfg.initrd {
                    Some(p) => Some(boot::load_initrd(vm.memory(), p, layout::HIMEM_START)?),
                    None => None,
                };
                Start::Boot { kernel, initrd }
            }
        };

        let (exit_tx, exit_rx) = mpsc::channel();
        let exit = ExitNotifier::new(exit_tx);
        let mut events: EventManager<Subscriber> =
            EventManager::new().map_err(|e| VmmError::Event(format!("{e:?}")))?;
        let control = Control::new(exit.clone()).map_err(io("creating the signalfd"))?;
        let stop_evt = control.stop_evt().map_err(io("creating the stop event"))?;
        events.add_subscriber(Arc::new(Mutex::new(control)));

        if cfg.seccomp {
            crate::seccomp::report_blocked_syscalls()
                .map_err(io("installing the SIGSYS reporter"))?;
        }

        // Legacy devices.
        let console = ConsoleBuffer::new(CONSOLE_BUFFER_BYTES);
        let console_thread = spawn_output(console.clone(), console_sink(&cfg.serial)?, cfg.seccomp)
            .map_err(io("spawning the console thread"))?;
        let serial_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(io("creating an irqfd"))?;
        vm.fd()
            .register_irqfd(&serial_evt, layout::SERIAL_IRQ)
            .map_err(|err| VmmError::Kvm {
                what: "KVM_IRQFD",
                err,
            })?;
        let mut pio = Bus::new();
        let serial_out = ConsoleWriter::new(console.clone(), exit.clone());
        let serial = match &start {
            Start::Restore(snap) => {
                SerialDevice::from_snapshot(&snap.serial, IrqTrigger(serial_evt), serial_out)
                    .map_err(|e| restore_err(SnapshotError::Mismatch(e)))?
            }
            Start::Boot { .. } => SerialDevice::new(IrqTrigger(serial_evt), serial_out),
        };
        let serial = Arc::new(Mutex::new(serial));
        pio.insert(serial.clone(), u64::from(layout::SERIAL_PORT), 8)?;
        pio.insert(
            Arc::new(Mutex::new(I8042::new(exit.clone()))),
            u64::from(layout::I8042_PORT),
            I8042_PORTS,
        )?;

        // virtio devices.
        let cmdline =
            Cmdline::try_from(&cfg.cmdline, layout::CMDLINE_MAX_SIZE).map_err(VmmError::Cmdline)?;
        let mut b = Builder {
            vm: &vm,
            mmio: Bus::new(),
            events: &mut events,
            cmdline,
            slots: 0,
            transports: Vec::new(),
        };
        for d in &cfg.drives {
            b.attach_virtio(Block::new(d)?)?;
        }
        if let Some(v) = &cfg.vsock {
            let mut vsock = crate::devices::virtio::vsock::Vsock::new(v)?;
            if cfg.snapshot_to.is_some() {
                let exit = exit.clone();
                vsock.muxer_mut().trap_port(
                    crate::snapshot::TRIGGER_PORT,
                    Box::new(move || exit.send(ExitReason::SnapshotRequested)),
                );
            }
            b.attach_virtio(vsock)?;
        }
        for n in &cfg.net {
            b.attach_virtio(crate::devices::virtio::net::Net::new(n)?)?;
        }
        for f in &cfg.fs {
            b.attach_virtio(crate::devices::virtio::fs::Fs::new(f)?)?;
        }
        if cfg.free_page_reporting {
            b.attach_virtio(crate::devices::virtio::balloon::Balloon::new())?;
        }
        let Builder {
            mmio,
            cmdline,
            transports,
            ..
        } = b;

        match &start {
            Start::Restore(snap) => {
                let types: Vec<u32> = transports
                    .iter()
                    .map(|t| t.lock().map(|t| t.device_type()).unwrap_or(0))
                    .collect();
                snap.check_fits(cfg.mem_mib << 20, cfg.vcpus, &types)
                    .map_err(restore_err)?;
                for (t, state) in transports.iter().zip(&snap.devices) {
                    t.lock()
                        .map_err(|_| restore_err(SnapshotError::Memory("poisoned".into())))?
                        .restore(state)
                        .map_err(restore_err)?;
                }
            }
            Start::Boot { kernel, initrd } => {
                boot::write_boot_params(vm.memory(), kernel, &cmdline, *initrd)?;
                mptable::setup(vm.memory(), cfg.vcpus)?;
                regs::write_boot_tables(vm.memory())?;
            }
        }

        if crate::arch::cpuid::host_is_tcg() {
            log::info!(
                "host is a QEMU TCG guest (nested test host): XSAVE/AVX hidden from the guest"
            );
        }
        let mut vcpus = Vec::with_capacity(usize::from(cfg.vcpus));
        for id in 0..cfg.vcpus {
            let v = Vcpu::new(&vm, id)?;
            match &start {
                Start::Restore(snap) => {
                    v.set_cpuid(&vm, cfg.vcpus)?;
                    kvm_state::restore_vcpu(v.fd(), &snap.vcpus[usize::from(id)])
                        .map_err(restore_err)?;
                }
                Start::Boot { kernel, .. } => v.configure_linux(&vm, cfg.vcpus, kernel.entry)?,
            }
            vcpus.push(v);
        }
        if let Start::Restore(snap) = &start {
            kvm_state::restore_clock(vm.fd(), &snap.vm).map_err(restore_err)?;
        }
        Ok(Vmm {
            vm,
            vcpus,
            shared: VcpuShared {
                pio: Arc::new(pio),
                mmio: Arc::new(mmio),
                stop: Arc::new(AtomicBool::new(false)),
                exit,
                seccomp: cfg.seccomp,
            },
            exit_rx,
            events,
            stop_evt,
            console,
            console_thread: Some(console_thread),
            serial,
            transports,
            snapshot_to: cfg.snapshot_to.clone(),
        })
    }
}

impl Vmm {
    /// Runs the VM until the guest or a signal ends it; returns why.
    pub fn run(mut self) -> Result<ExitReason, VmmError> {
        install_kick_handler()?;
        let stop = self.shared.stop.clone();
        let loop_stop = stop.clone();
        let mut events = self.events;
        let seccomp = self.shared.seccomp;
        let loop_exit = self.shared.exit.clone();
        let event_loop = std::thread::Builder::new()
            .name("events".into())
            .stack_size(crate::THREAD_STACK_SIZE)
            .spawn(move || {
                if seccomp {
                    if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::EventLoop) {
                        loop_exit.send(ExitReason::InternalError(e.to_string()));
                        return;
                    }
                }
                while !loop_stop.load(std::sync::atomic::Ordering::SeqCst) {
                    if let Err(e) = events.run() {
                        log::error!("event loop: {e:?}");
                        break;
                    }
                }
            })
            .map_err(io("spawning the event loop"))?;
        let mut handles = Vec::with_capacity(self.vcpus.len());
        for v in self.vcpus.drain(..) {
            handles.push(v.spawn(self.shared.clone())?);
        }
        // In template mode the main thread writes the snapshot (files, KVM state reads) and
        // keeps no filter; that VM runs only husk's own kernel and agent, no workload.
        if seccomp && self.snapshot_to.is_none() {
            crate::seccomp::apply(crate::seccomp::ThreadKind::Main)?;
        }
        let mut reason = self
            .exit_rx
            .recv()
            .unwrap_or_else(|_| ExitReason::InternalError("exit channel closed".into()));
        let n_vcpus = handles.len();
        let vcpus = stop_all(&stop, handles);
        let _ = self.stop_evt.write(1);
        let _ = event_loop.join();
        if reason == ExitReason::SnapshotRequested {
            reason = match self.snapshot_to.clone() {
                Some(dir) if vcpus.len() == n_vcpus => {
                    match write_snapshot(&self.vm, &self.transports, &self.serial, &vcpus, &dir) {
                        Ok(()) => ExitReason::Snapshotted(dir),
                        Err(e) => {
                            let _ = std::fs::remove_dir_all(&dir);
                            ExitReason::InternalError(format!(
                                "writing the snapshot to {}: {e}",
                                dir.display()
                            ))
                        }
                    }
                }
                _ => ExitReason::InternalError("a vCPU thread died before the snapshot".into()),
            };
        }
        drop(vcpus);
        self.console.close();
        if let Some(t) = self.console_thread.take() {
            let _ = t.join();
        }
        drop(self.vm);
        Ok(reason)
    }
}

/// Writes the stopped VM into `dir` (see `snapshot`).
fn write_snapshot(
    vm: &Vm,
    transports: &[Arc<Mutex<dyn SnapshotTransport>>],
    serial: &Mutex<SerialDevice>,
    vcpus: &[Vcpu],
    dir: &Path,
) -> Result<(), SnapshotError> {
    let started = std::time::Instant::now();
    let msrs = kvm_state::msr_list(vm.kvm())?;
    let vcpus = vcpus
        .iter()
        .map(|v| kvm_state::save_vcpu(vm.kvm(), v.fd(), &msrs))
        .collect::<Result<Vec<_>, _>>()?;
    let poisoned = || SnapshotError::Memory("a device lock is poisoned".into());
    let devices = transports
        .iter()
        .map(|t| t.lock().map_err(|_| poisoned())?.save())
        .collect::<Result<Vec<_>, _>>()?;
    let snap = Snapshot {
        version: crate::snapshot::FORMAT_VERSION,
        mem_size: vm.memory().iter().map(|r| r.len()).sum(),
        vm: kvm_state::save_vm(vm.fd())?,
        vcpus,
        serial: serial.lock().map_err(|_| poisoned())?.snapshot(),
        devices,
    };
    snap.write(dir, vm.memory())?;
    log::info!(
        "snapshot written to {} in {} ms",
        dir.display(),
        started.elapsed().as_millis()
    );
    Ok(())
}
