use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use husk_vmm::builder::Vmm;
use husk_vmm::config::{DriveConfig, FsConfig, NetConfig, SerialOutput, VmConfig, VsockConfig};

/// husk's KVM microVM monitor: one process per pod.
#[derive(Parser)]
#[command(name = "husk-vmm", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Say what this host can do for husk, one line per item (exit 1 if VMs cannot run).
    Check,
    /// Boot a VM and run it until the guest or a signal ends it.
    ///
    /// Exit codes: 0 guest reset or halt, 1 internal error, 2 usage, 3 triple fault,
    /// 4 guest kernel panic, 5 stopped by SIGTERM/SIGINT.
    Run(Box<RunArgs>),
}

#[derive(Args)]
struct RunArgs {
    /// Config file (.json or .toml); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Kernel: ELF vmlinux or bzImage.
    #[arg(long)]
    kernel: Option<PathBuf>,
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line (devices are appended).
    #[arg(long)]
    cmdline: Option<String>,
    #[arg(long)]
    vcpus: Option<u8>,
    /// Guest memory in MiB.
    #[arg(long)]
    mem: Option<u64>,
    /// Serial console: stdout, none, or a file path.
    #[arg(long)]
    serial: Option<String>,
    /// Disk: path=IMG[,ro][,id=SERIAL] (repeatable). Rate limiters (`rate_limiter` per
    /// drive, `rx_rate_limiter`/`tx_rate_limiter` per NIC) are set in the --config file.
    #[arg(long = "drive")]
    drives: Vec<String>,
    /// vsock: cid=N,socket=PATH.
    #[arg(long)]
    vsock: Option<String>,
    /// Network: tap=NAME[,mac=MAC] (repeatable).
    #[arg(long)]
    net: Vec<String>,
    /// virtio-fs: tag=TAG,socket=PATH (repeatable).
    #[arg(long)]
    fs: Vec<String>,
    /// Attach a virtio-balloon device for free page reporting: the guest's freed memory
    /// goes back to the host.
    #[arg(long)]
    free_page_reporting: bool,
    /// Put guest RAM in an unlinked file in this directory (a tmpfs mounted huge=within_size
    /// gives the guest transparent huge pages) instead of a memfd.
    #[arg(long)]
    mem_dir: Option<PathBuf>,
    /// Run even on a PVM or emulation-only /dev/kvm.
    #[arg(long)]
    force: bool,
    /// Do not install the per-thread seccomp filters (debugging only).
    #[arg(long)]
    no_seccomp: bool,
}

fn config(a: Box<RunArgs>) -> Result<VmConfig> {
    let mut c = match &a.config {
        Some(p) => VmConfig::from_file(p)?,
        None => VmConfig::default(),
    };
    if a.kernel.is_some() {
        c.kernel = a.kernel;
    }
    if a.initrd.is_some() {
        c.initrd = a.initrd;
    }
    if let Some(s) = a.cmdline {
        c.cmdline = s;
    }
    if let Some(v) = a.vcpus {
        c.vcpus = v;
    }
    if let Some(m) = a.mem {
        c.mem_mib = m;
    }
    if let Some(s) = a.serial {
        c.serial = SerialOutput::parse(&s);
    }
    for d in &a.drives {
        c.drives.push(DriveConfig::parse(d)?);
    }
    if let Some(v) = a.vsock {
        c.vsock = Some(VsockConfig::parse(&v)?);
    }
    for n in &a.net {
        c.net.push(NetConfig::parse(n)?);
    }
    for f in &a.fs {
        c.fs.push(FsConfig::parse(f)?);
    }
    c.force |= a.force;
    c.free_page_reporting |= a.free_page_reporting;
    if a.mem_dir.is_some() {
        c.mem_dir = a.mem_dir;
    }
    if a.no_seccomp {
        c.seccomp = false;
    }
    Ok(c)
}

/// Errors end the process with one line, `husk-vmm: error: <cause>: <cause>...`, and
/// status 1. Returning them from `main` would print anyhow's multi-line report, and with
/// RUST_BACKTRACE set a backtrace after it: the shim quotes the last line of this log to
/// containerd, which then named a stack frame instead of the missing kernel.
fn main() {
    if let Err(e) = run() {
        eprintln!("husk-vmm: error: {e:#}");
        std::process::exit(1);
    }
}

/// The signals that end the vmm, and the line each leaves on stderr. SIGSYS has its own
/// reporter (seccomp); SIGPIPE is ignored (Rust's runtime) and the vCPU kick signal has a
/// handler that does nothing.
const FATAL_SIGNALS: [(libc::c_int, &[u8]); 6] = [
    (libc::SIGHUP, b"husk-vmm: fatal signal SIGHUP\n"),
    (libc::SIGBUS, b"husk-vmm: fatal signal SIGBUS\n"),
    (libc::SIGSEGV, b"husk-vmm: fatal signal SIGSEGV\n"),
    (libc::SIGILL, b"husk-vmm: fatal signal SIGILL\n"),
    (libc::SIGXCPU, b"husk-vmm: fatal signal SIGXCPU\n"),
    (libc::SIGXFSZ, b"husk-vmm: fatal signal SIGXFSZ\n"),
];

/// A fatal signal (sent, or a fault in the vmm) leaves one line in the log and ends the
/// process with 128 + the signal number: without it the shim saw a vmm killed by a signal
/// and no word of why. The handler only calls write(2) and exit_group(2), which every
/// thread's seccomp filter allows.
fn log_fatal_signals() -> Result<()> {
    extern "C" fn on_fatal(sig: libc::c_int) {
        if let Some((_, line)) = FATAL_SIGNALS.iter().find(|(s, _)| *s == sig) {
            // SAFETY: write(2) of a static buffer is async-signal-safe.
            unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
        }
        // SAFETY: _exit is async-signal-safe and never returns.
        unsafe { libc::_exit(128 + sig) };
    }
    for (sig, _) in FATAL_SIGNALS {
        // SAFETY: a zeroed sigaction is valid; we set the handler and an empty mask.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = on_fatal as *const () as libc::sighandler_t;
        // SAFETY: sigemptyset initialises the mask we own; sigaction installs a handler
        // that only does async-signal-safe work.
        let r = unsafe {
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(sig, &act, std::ptr::null_mut())
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error()).context("installing a signal handler");
        }
    }
    Ok(())
}

fn run() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Check => {
            let findings = husk_vmm::check::run(&husk_vmm::check::RealHost);
            for f in &findings {
                println!("{f}");
            }
            let runnable = findings
                .iter()
                .any(|f| f.item == "kvm" && f.level == husk_vmm::check::Level::Ok);
            std::process::exit(if runnable { 0 } else { 1 });
        }
        Cmd::Run(args) => {
            husk_vmm::logger::init();
            log_fatal_signals()?;
            // Replaces the fatal handler for SIGXFSZ: a write past RLIMIT_FSIZE fails
            // (EFBIG, an I/O error for the guest) instead of ending the VM; a SIGXFSZ that
            // another process sends is still fatal, with the same line and exit status.
            husk_vmm::file_size::handle_signal().context("installing the SIGXFSZ handler")?;
            let cfg = config(args)?;
            let vmm = Vmm::try_from(&cfg).context("building the VM")?;
            let reason = vmm.run().context("running the VM")?;
            eprintln!("husk-vmm: {reason}");
            std::process::exit(reason.code());
        }
    }
}
