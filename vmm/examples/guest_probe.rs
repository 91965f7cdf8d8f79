//! A static /init for the vmm's VM tests (tests/vm/2*-vmm-*.sh): it exercises the devices
//! from inside the guest and reports on the console, one `probe:` line per check. Which
//! checks run is chosen on the kernel command line: `probe=cpus,blk,vsock,reboot|panic`.
//!
//! - `cpus`: prints the number of online CPUs.
//! - `blk`: writes a 4 MiB pattern to /dev/vda, reads it back and compares; the host
//!   checks the image's sha256.
//! - `vsock`: listens on vsock port 1024 and echoes one connection (the host sends 64 MiB
//!   through it); then connects to host port 5000 and sends a greeting.
//! - `cpuinfo`: prints the first CPU's flags line from /proc/cpuinfo.
//! - `blkbench`: reads all of /dev/vda, then writes its first 64 MiB, with O_DIRECT 1 MiB
//!   requests, and prints the guest-timed MiB/s of each (the vmm benchmark compares them
//!   with QEMU's on the same image).
//! - `blkrate`: reads the first `blkrate_mib=N` MiB (default 32) of /dev/vda, then writes
//!   them, with O_DIRECT requests of `blkrate_req_kib=K` KiB (default 256), and prints the
//!   guest-timed MiB/s and requests/s of each (tests/vm/28-vmm-rate-limit.sh: a rate
//!   limiter's budget as the guest sees it).
//! - `fs`: mounts the virtio-fs tag `husk` at /mnt, reads `hello.txt`, writes
//!   `from-guest.txt`.
//! - `net`: gives eth0 the address 172.30.0.2/24 and brings it up, then waits (the host
//!   pings it).
//! - `nettx`: as `net`, then sends `nettx_mib=N` MiB (default 16) of 1400-byte UDP
//!   datagrams to 172.30.0.1:5001 as fast as the guest can, and prints the guest-timed
//!   MiB/s (tests/vm/28-vmm-rate-limit.sh: a TX rate limiter).
//! - `sleep`: waits 2 s (the host samples the vmm before it goes).
//! - `reboot`: reboots (the vmm exits 0); `panic`: exits, so the kernel panics (exit 4).

#![allow(clippy::unwrap_used)]

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::FromRawFd;

fn say(msg: &str) {
    // The console is /dev/console, opened by the kernel as fds 0-2.
    let _ = writeln!(std::io::stdout(), "probe: {msg}");
    let _ = std::io::stdout().flush();
}

fn mount(src: &str, target: &str, fstype: &str) {
    let _ = std::fs::create_dir_all(target);
    let c = |s: &str| std::ffi::CString::new(s).unwrap();
    let (s, t, f) = (c(src), c(target), c(fstype));
    // SAFETY: valid NUL-terminated strings; a failed mount is reported by the checks after.
    unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), 0, std::ptr::null()) };
}

/// 4 KiB blocks, block `i` filled with the little-endian u32 `i * 2654435761`: cheap to
/// regenerate on the host, and a misplaced block shows.
fn pattern(len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    for i in 0..len / 4096 {
        let w = (i as u32).wrapping_mul(2_654_435_761).to_le_bytes();
        for _ in 0..1024 {
            v.extend_from_slice(&w);
        }
    }
    v
}

fn blk() -> Result<(), String> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/vda")
        .map_err(|e| format!("open /dev/vda: {e}"))?;
    let data = pattern(4 << 20);
    f.write_all(&data).map_err(|e| format!("write: {e}"))?;
    f.sync_all().map_err(|e| format!("fsync: {e}"))?;
    // Drop the page cache so the read goes to the device.
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    f.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let mut back = vec![0u8; data.len()];
    f.read_exact(&mut back).map_err(|e| format!("read: {e}"))?;
    if back != data {
        return Err("read back differs".into());
    }
    if let Ok(mut ro) = OpenOptions::new().write(true).open("/dev/vdb") {
        let refused = ro
            .write_all(&[0u8; 512])
            .and_then(|_| ro.sync_all())
            .is_err();
        say(&format!("blk ro write refused={refused}"));
    }
    Ok(())
}

/// A 1 MiB buffer aligned to 4 KiB, as O_DIRECT needs.
struct Aligned {
    raw: Vec<u8>,
    off: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let raw = vec![0x5au8; len + 4096];
        let off = raw.as_ptr().align_offset(4096);
        Aligned { raw, off }
    }
    fn buf(&mut self, len: usize) -> &mut [u8] {
        &mut self.raw[self.off..self.off + len]
    }
}

fn blkbench() -> Result<String, String> {
    use std::os::unix::fs::OpenOptionsExt;
    const REQ: usize = 1 << 20;
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open("/dev/vda")
        .map_err(|e| format!("open /dev/vda: {e}"))?;
    let mut a = Aligned::new(REQ);
    let t0 = std::time::Instant::now();
    let mut read = 0u64;
    loop {
        let n = f.read(a.buf(REQ)).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        read += n as u64;
    }
    let rt = t0.elapsed().as_secs_f64();
    f.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let total = read.min(64 << 20);
    let t0 = std::time::Instant::now();
    let mut written = 0u64;
    while written < total {
        f.write_all(a.buf(REQ)).map_err(|e| format!("write: {e}"))?;
        written += REQ as u64;
    }
    f.sync_all().map_err(|e| format!("fsync: {e}"))?;
    let wt = t0.elapsed().as_secs_f64();
    let mib = |b: u64, t: f64| b as f64 / (1 << 20) as f64 / t.max(1e-6);
    Ok(format!(
        "read_mib_s={:.1} write_mib_s={:.1} read_bytes={read}",
        mib(read, rt),
        mib(written, wt)
    ))
}

/// The number after `key=` on the kernel command line, else `default`.
fn cmdline_number(cmdline: &str, key: &str, default: usize) -> usize {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn blkrate(cmdline: &str) -> Result<String, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let total = cmdline_number(cmdline, "blkrate_mib", 32) << 20;
    let req = (cmdline_number(cmdline, "blkrate_req_kib", 256) << 10).clamp(4096, 4 << 20);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open("/dev/vda")
        .map_err(|e| format!("open /dev/vda: {e}"))?;
    let mut a = Aligned::new(req);
    let n = total.div_ceil(req);
    say("blkrate start");
    let t0 = std::time::Instant::now();
    for _ in 0..n {
        f.read_exact(a.buf(req)).map_err(|e| format!("read: {e}"))?;
    }
    let rt = t0.elapsed().as_secs_f64();
    f.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let t0 = std::time::Instant::now();
    for _ in 0..n {
        f.write_all(a.buf(req)).map_err(|e| format!("write: {e}"))?;
    }
    f.sync_all().map_err(|e| format!("fsync: {e}"))?;
    let wt = t0.elapsed().as_secs_f64();
    let bytes = (n * req) as f64 / (1 << 20) as f64;
    Ok(format!(
        "read_mib_s={:.2} write_mib_s={:.2} read_ops_s={:.1} write_ops_s={:.1} read_s={rt:.2} \
         write_s={wt:.2} mib={bytes:.1} req_kib={}",
        bytes / rt.max(1e-6),
        bytes / wt.max(1e-6),
        n as f64 / rt.max(1e-6),
        n as f64 / wt.max(1e-6),
        req >> 10
    ))
}

fn vsock_socket() -> Result<std::fs::File, String> {
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0) };
    if fd < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh socket we own.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

fn addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid value.
    let mut a: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    a.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    a.svm_cid = cid;
    a.svm_port = port;
    a
}

fn vsock() -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let l = vsock_socket()?;
    let a = addr(libc::VMADDR_CID_ANY, 1024);
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: `a` is a valid sockaddr_vm of `len` bytes.
    if unsafe { libc::bind(l.as_raw_fd(), &a as *const _ as *const libc::sockaddr, len) } < 0 {
        return Err(format!("bind: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: listening on our own socket.
    unsafe { libc::listen(l.as_raw_fd(), 1) };
    say("vsock listening 1024");
    // SAFETY: accept on our listening socket; the peer address is not needed.
    let c = unsafe { libc::accept(l.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut()) };
    if c < 0 {
        return Err(format!("accept: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: `c` is a fresh connected socket we own.
    let mut conn = unsafe { std::fs::File::from_raw_fd(c) };
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = conn.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        conn.write_all(&buf[..n])
            .map_err(|e| format!("write: {e}"))?;
        total += n as u64;
    }
    drop(conn);
    say(&format!("vsock echoed {total} bytes"));

    let s = vsock_socket()?;
    let a = addr(libc::VMADDR_CID_HOST, 5000);
    // SAFETY: `a` is a valid sockaddr_vm of `len` bytes.
    if unsafe { libc::connect(s.as_raw_fd(), &a as *const _ as *const libc::sockaddr, len) } < 0 {
        return Err(format!(
            "connect host:5000: {}",
            std::io::Error::last_os_error()
        ));
    }
    let mut s = s;
    s.write_all(b"hello from the guest\n")
        .map_err(|e| format!("write: {e}"))?;
    say("vsock guest-initiated sent");
    Ok(())
}

#[repr(C)]
struct IfReqAddr {
    name: [u8; 16],
    addr: libc::sockaddr_in,
    pad: [u8; 8],
}

#[repr(C)]
struct IfReqFlags {
    name: [u8; 16],
    flags: libc::c_short,
    pad: [u8; 22],
}

fn net_up() -> Result<(), String> {
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if fd < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    let mut name = [0u8; 16];
    name[..4].copy_from_slice(b"eth0");
    let sin = |a: [u8; 4]| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a),
        },
        sin_zero: [0; 8],
    };
    for (req, a) in [
        (libc::SIOCSIFADDR, [172, 30, 0, 2]),
        (libc::SIOCSIFNETMASK, [255, 255, 255, 0]),
    ] {
        let mut r = IfReqAddr {
            name,
            addr: sin(a),
            pad: [0; 8],
        };
        // SAFETY: the request takes an ifreq with a sockaddr, which `r` is.
        if unsafe { libc::ioctl(fd, req as _, &mut r) } < 0 {
            return Err(format!(
                "ioctl {req:#x}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    let mut r = IfReqFlags {
        name,
        flags: (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short,
        pad: [0; 22],
    };
    // SAFETY: SIOCSIFFLAGS takes an ifreq with flags, which `r` is.
    if unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &mut r) } < 0 {
        return Err(format!("SIOCSIFFLAGS: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn nettx(cmdline: &str) -> Result<String, String> {
    net_up()?;
    let total = cmdline_number(cmdline, "nettx_mib", 16) << 20;
    let s = std::net::UdpSocket::bind("172.30.0.2:0").map_err(|e| format!("bind: {e}"))?;
    let to = std::net::SocketAddr::from(([172, 30, 0, 1], 5001));
    let buf = [0x5au8; 1400];
    // One datagram first, so the host's MAC is resolved before the clock starts (the ARP
    // queue would drop what is sent meanwhile).
    s.send_to(&buf[..8], to).map_err(|e| format!("send: {e}"))?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    say("nettx start");
    let t0 = std::time::Instant::now();
    let mut sent = 0usize;
    while sent < total {
        match s.send_to(&buf, to) {
            Ok(n) => sent += n,
            // A full qdisc: wait for the NIC.
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                std::thread::sleep(std::time::Duration::from_millis(1))
            }
            Err(e) => return Err(format!("send: {e}")),
        }
    }
    let t = t0.elapsed().as_secs_f64();
    Ok(format!(
        "mib_s={:.2} sent_bytes={sent} secs={t:.2}",
        sent as f64 / (1 << 20) as f64 / t.max(1e-6)
    ))
}

fn main() {
    mount("proc", "/proc", "proc");
    mount("sysfs", "/sys", "sysfs");
    mount("devtmpfs", "/dev", "devtmpfs");
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let checks: Vec<String> = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("probe="))
        .unwrap_or("cpus,reboot")
        .split(',')
        .map(String::from)
        .collect();
    say("started");
    for c in &checks {
        match c.as_str() {
            "cpus" => {
                // SAFETY: sysconf has no preconditions.
                let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
                say(&format!("cpus={n}"));
            }
            "blk" => match blk() {
                Ok(()) => say("blk ok"),
                Err(e) => say(&format!("blk FAILED {e}")),
            },
            "cpuinfo" => {
                let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
                for l in info.lines().filter(|l| l.starts_with("flags")).take(1) {
                    say(&format!("cpuinfo {l}"));
                }
            }
            "blkrate" => match blkrate(&cmdline) {
                Ok(r) => say(&format!("blkrate {r}")),
                Err(e) => say(&format!("blkrate FAILED {e}")),
            },
            "blkbench" => match blkbench() {
                Ok(r) => say(&format!("blkbench {r}")),
                Err(e) => say(&format!("blkbench FAILED {e}")),
            },
            "vsock" => match vsock() {
                Ok(()) => say("vsock ok"),
                Err(e) => say(&format!("vsock FAILED {e}")),
            },
            "fs" => {
                let _ = std::fs::create_dir_all("/mnt");
                let c = |s: &str| std::ffi::CString::new(s).unwrap();
                let (s, t, f) = (c("husk"), c("/mnt"), c("virtiofs"));
                // SAFETY: valid NUL-terminated strings.
                let rc =
                    unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), 0, std::ptr::null()) };
                if rc != 0 {
                    say(&format!(
                        "fs FAILED mount: {}",
                        std::io::Error::last_os_error()
                    ));
                    continue;
                }
                match std::fs::read_to_string("/mnt/hello.txt") {
                    Ok(t) => say(&format!("fs read {:?}", t.trim())),
                    Err(e) => say(&format!("fs FAILED read: {e}")),
                }
                match std::fs::write("/mnt/from-guest.txt", "written by the guest\n") {
                    Ok(()) => say("fs ok"),
                    Err(e) => say(&format!("fs FAILED write: {e}")),
                }
            }
            "uptime" => {
                let up = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
                say(&format!(
                    "uptime {}",
                    up.split_whitespace().next().unwrap_or("?")
                ));
            }
            "dmesg" => {
                // The kernel log as recorded during a quiet boot (loglevel=1 keeps it off
                // the slow serial console): initcalls slower than 1 ms, every other line.
                let mut buf = vec![0u8; 1 << 20];
                // SAFETY: SYSLOG_ACTION_READ_ALL (3) writes at most buf.len() bytes to buf.
                let n = unsafe { libc::klogctl(3, buf.as_mut_ptr().cast(), buf.len() as i32) };
                let text = String::from_utf8_lossy(&buf[..n.max(0) as usize]).into_owned();
                for l in text.lines() {
                    let slow = l
                        .split(" after ")
                        .nth(1)
                        .and_then(|t| t.split_whitespace().next())
                        .and_then(|t| t.parse::<u64>().ok())
                        .is_some_and(|us| us >= 1000);
                    if !l.contains("initcall") || slow {
                        say(&format!("dmesg {l}"));
                    }
                }
            }
            "memtouch" => {
                // Touches 64 MiB and frees it: with free page reporting the host gets it
                // back (tests/vm/25-vmm-balloon.sh watches the vmm's RSS).
                let mut v = vec![0u8; 64 << 20];
                for i in (0..v.len()).step_by(4096) {
                    v[i] = 1;
                }
                let sum: usize = v.iter().step_by(4096).map(|b| *b as usize).sum();
                drop(v);
                say(&format!("memtouch {sum} pages touched and freed"));
            }
            "nettx" => match nettx(&cmdline) {
                Ok(r) => say(&format!("nettx {r}")),
                Err(e) => say(&format!("nettx FAILED {e}")),
            },
            "net" => match net_up() {
                Ok(()) => say("net up 172.30.0.2"),
                Err(e) => say(&format!("net FAILED {e}")),
            },
            "sleep" => std::thread::sleep(std::time::Duration::from_secs(2)),
            "reboot" => {
                say("rebooting");
                // SAFETY: reboot(2) as PID 1; it does not return on success.
                unsafe { libc::reboot(libc::RB_AUTOBOOT) };
            }
            "panic" => {
                say("exiting init");
                std::process::exit(0);
            }
            other => say(&format!("unknown check {other}")),
        }
    }
    say("done");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
