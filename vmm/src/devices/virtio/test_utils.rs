//! Test doubles for device tests: guest memory, descriptors, a recording event registry and
//! a queue driven through virtio-queue's mock driver.

use std::os::fd::RawFd;

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use super::mmio::{
    DeviceState, MmioTransport, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK,
    STATUS_FEATURES_OK, TOKEN_ACTIVATE,
};
use super::EventRegistry;
use crate::memory::GuestMemory;

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const F_INDIRECT: u16 = 4;

/// 16 MiB of plain anonymous guest memory.
pub fn mem() -> GuestMemory {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
}

pub fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

/// A queue of `size` at address 0 with `chains` published (heads added to the avail ring).
pub fn queue_with<'a>(
    mem: &'a GuestMemory,
    size: u16,
    descs: &[RawDescriptor],
) -> (MockSplitQueue<'a, GuestMemory>, Queue) {
    let vq = MockSplitQueue::create(mem, GuestAddress(0), size);
    if !descs.is_empty() {
        vq.add_desc_chains(descs, 0).unwrap();
    }
    let q: Queue = vq.create_queue().unwrap();
    (vq, q)
}

/// Used-ring entries (id, len) published so far.
pub fn used(vq: &MockSplitQueue<'_, GuestMemory>) -> Vec<(u32, u32)> {
    let n = vq.used().idx().load();
    (0..n)
        .map(|i| {
            let e = vq.used().ring().ref_at(i as usize).unwrap().load();
            (e.id(), e.len())
        })
        .collect()
}

/// Log records made on the calling thread while `f` runs (every level). The test binary's
/// logger is installed once, records only on threads that are capturing, and prints nothing.
pub fn capture_logs<R>(f: impl FnOnce() -> R) -> (R, Vec<(log::Level, String)>) {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        if log::set_logger(&CaptureLogger).is_ok() {
            log::set_max_level(log::LevelFilter::Trace);
        }
    });
    CAPTURED.with(|c| *c.borrow_mut() = Some(Vec::new()));
    let r = f();
    let logged = CAPTURED.with(|c| c.borrow_mut().take()).unwrap_or_default();
    (r, logged)
}

thread_local! {
    static CAPTURED: std::cell::RefCell<Option<Vec<(log::Level, String)>>> =
        const { std::cell::RefCell::new(None) };
}

struct CaptureLogger;

impl log::Log for CaptureLogger {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        CAPTURED.with(|c| {
            if let Some(v) = c.borrow_mut().as_mut() {
                v.push((r.level(), r.args().to_string()));
            }
        });
    }
    fn flush(&self) {}
}

/// Records of `level` or more severe.
pub fn at_least(logged: &[(log::Level, String)], level: log::Level) -> Vec<&str> {
    logged
        .iter()
        .filter(|(l, _)| *l <= level)
        .map(|(_, m)| m.as_str())
        .collect()
}

/// A clock for rate limiters that tests move by hand (nanoseconds).
#[derive(Debug, Clone, Default)]
pub struct FakeClock(pub std::sync::Arc<std::sync::atomic::AtomicU64>);

impl FakeClock {
    pub fn advance_ms(&self, ms: u64) {
        self.advance_ns(ms * 1_000_000);
    }
    pub fn advance_ns(&self, ns: u64) {
        self.0.fetch_add(ns, std::sync::atomic::Ordering::SeqCst);
    }
}

impl crate::rate_limiter::Clock for FakeClock {
    fn now_ns(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A rate limiter on `clock` with the given buckets (size, refill ms; no burst).
pub fn limiter(
    bandwidth: Option<(u64, u64)>,
    ops: Option<(u64, u64)>,
    clock: &FakeClock,
) -> crate::rate_limiter::RateLimiter {
    use crate::config::{RateLimiterConfig, TokenBucketConfig};
    let bucket = |b: Option<(u64, u64)>| {
        b.map(|(size, refill_time_ms)| TokenBucketConfig {
            size,
            refill_time_ms,
            one_time_burst: 0,
        })
    };
    let cfg = RateLimiterConfig {
        bandwidth: bucket(bandwidth),
        ops: bucket(ops),
    };
    crate::rate_limiter::RateLimiter::with_clock(Some(&cfg), Box::new(clock.clone())).unwrap()
}

#[derive(Debug, Default)]
pub struct RecordingRegistry {
    pub added: Vec<(RawFd, u32, EventSet)>,
    pub removed: Vec<RawFd>,
}

impl EventRegistry for RecordingRegistry {
    fn add(&mut self, fd: RawFd, token: u32, events: EventSet) {
        self.added.push((fd, token, events));
    }
    fn modify(&mut self, fd: RawFd, token: u32, events: EventSet) {
        self.added.retain(|a| a.0 != fd);
        self.added.push((fd, token, events));
    }
    fn remove(&mut self, fd: RawFd) {
        self.added.retain(|a| a.0 != fd);
        self.removed.push(fd);
    }
}

#[test]
fn recording_registry_tracks_fds() {
    let mut r = RecordingRegistry::default();
    r.add(3, 1, EventSet::IN);
    r.modify(3, 1, EventSet::OUT);
    assert_eq!(r.added, vec![(3, 1, EventSet::OUT)]);
    r.remove(3);
    assert!(r.added.is_empty());
    assert_eq!(r.removed, vec![3]);
}

/// Writes a 32-bit transport register, as a vCPU would.
pub fn mmio_write<D: super::VirtioDevice>(t: &mut MmioTransport<D>, off: u64, v: u32) {
    crate::bus::BusDevice::write(t, off, &v.to_le_bytes());
}

/// Reads a 32-bit transport register.
pub fn mmio_read<D: super::VirtioDevice>(t: &mut MmioTransport<D>, off: u64) -> u32 {
    let mut b = [0u8; 4];
    crate::bus::BusDevice::read(t, off, &mut b);
    u32::from_le_bytes(b)
}

/// A queue's configuration as a driver writes it: size, then the three ring addresses.
#[derive(Debug, Clone, Copy)]
pub struct RingSetup {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

impl RingSetup {
    pub fn of(vq: &MockSplitQueue<'_, GuestMemory>, size: u16) -> RingSetup {
        RingSetup {
            size,
            desc: vq.desc_table_addr().0,
            avail: vq.avail_addr().0,
            used: vq.used_addr().0,
        }
    }
}

/// Writes queue `index`'s registers from `r` and makes it ready.
pub fn setup_queue<D: super::VirtioDevice>(t: &mut MmioTransport<D>, index: u32, r: RingSetup) {
    mmio_write(t, 0x30, index);
    mmio_write(t, 0x38, u32::from(r.size));
    for (reg, addr) in [(0x80, r.desc), (0x90, r.avail), (0xa0, r.used)] {
        mmio_write(t, reg, addr as u32);
        mmio_write(t, reg + 4, (addr >> 32) as u32);
    }
    mmio_write(t, 0x44, 1);
}

/// The driver's side of initialization (VERSION_1 accepted, nothing else) with `queues`,
/// then DRIVER_OK and the event loop's activation; returns the transport's state.
pub fn bring_up<D: super::VirtioDevice>(
    t: &mut MmioTransport<D>,
    queues: &[RingSetup],
) -> DeviceState {
    mmio_write(t, 0x70, STATUS_ACKNOWLEDGE);
    mmio_write(t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    mmio_write(t, 0x24, 1);
    mmio_write(t, 0x20, 1);
    mmio_write(t, 0x24, 0);
    mmio_write(t, 0x20, 0);
    let ok = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
    mmio_write(t, 0x70, ok);
    for (i, r) in queues.iter().enumerate() {
        setup_queue(t, i as u32, *r);
    }
    mmio_write(t, 0x70, ok | STATUS_DRIVER_OK);
    t.handle_event(TOKEN_ACTIVATE, EventSet::IN, &mut super::NoRegistry);
    t.state()
}

/// A transport over `dev` in `m`.
pub fn transport<D: super::VirtioDevice>(dev: D, m: &GuestMemory) -> MmioTransport<D> {
    let irq = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
    MmioTransport::new(dev, m.clone(), irq).unwrap()
}

/// The driver kicks queue `index` (the event loop sees its ioeventfd).
pub fn kick<D: super::VirtioDevice>(t: &mut MmioTransport<D>, index: u32) {
    t.handle_event(
        super::QUEUE_TOKEN_BASE + index,
        EventSet::IN,
        &mut super::NoRegistry,
    );
}

/// The test binary's allocator: the system's, counting the bytes each thread asks for, so
/// a test can show the host allocates nothing in proportion to a length the guest chose.
struct CountingAlloc;

thread_local! {
    static ALLOCATED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn count_alloc(bytes: usize) {
    // try_with: the thread may be tearing down its locals.
    let _ = ALLOCATED.try_with(|a| a.set(a.get().saturating_add(bytes as u64)));
}

// SAFETY: every call is passed unchanged to the system allocator, which upholds the
// GlobalAlloc contract; the counter is a plain thread-local that allocates nothing.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        count_alloc(layout.size());
        // SAFETY: the caller's layout, as GlobalAlloc::alloc requires.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        count_alloc(layout.size());
        // SAFETY: as for alloc.
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: ptr came from System with this layout (every allocation here does).
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        count_alloc(new);
        // SAFETY: ptr came from System with this layout; the caller checked `new`.
        unsafe { std::alloc::System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// What `f` returned and the bytes the calling thread allocated while it ran.
pub fn allocated_during<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let before = ALLOCATED.with(|a| a.get());
    let r = f();
    (r, ALLOCATED.with(|a| a.get()) - before)
}

#[test]
fn allocations_are_counted_per_thread() {
    let (v, n) = allocated_during(|| vec![1u8; 1 << 20]);
    assert!(n >= 1 << 20, "{n}");
    let other = std::thread::spawn(|| vec![1u8; 4 << 20]);
    let (_, n) = allocated_during(|| other.join().unwrap());
    assert!(n < 1 << 20, "another thread's allocation counted: {n}");
    drop(v);
}

/// A tmpfs of `size` bytes mounted on a fresh directory, unmounted and removed on drop.
pub struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// `None`, after saying why, where this host cannot mount one (tests needing a full
    /// file system then skip: they need root).
    pub fn mount(name: &str, size: u64, read_only: bool) -> Option<Tmpfs> {
        use std::os::unix::ffi::OsStrExt;
        let dir = std::env::temp_dir().join(format!("husk-tmpfs-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let target = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        let data = std::ffi::CString::new(format!("size={size},mode=0755")).ok()?;
        let flags = if read_only { libc::MS_RDONLY } else { 0 };
        // SAFETY: every pointer is a NUL-terminated string that outlives the call.
        let r = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                flags,
                data.as_ptr().cast(),
            )
        };
        if r != 0 {
            eprintln!(
                "skipped: cannot mount a tmpfs on {} ({}); this test needs root",
                dir.display(),
                std::io::Error::last_os_error()
            );
            let _ = std::fs::remove_dir(&dir);
            return None;
        }
        Some(Tmpfs(dir))
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        use std::os::unix::ffi::OsStrExt;
        if let Ok(target) = std::ffi::CString::new(self.0.as_os_str().as_bytes()) {
            // SAFETY: a NUL-terminated path that outlives the call.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}
