//! Time and sleep: the local APIC timer (KVM's runs at 1 GHz with divide-by-1) is the clock
//! for timeouts, and wakes the guest from `hlt` for the idle window, in which the guest
//! does nothing so that the host can see the vmm's own CPU use.

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use crate::hw::{outb, read32, write32};

const LAPIC: u64 = 0xfee0_0000;
const LAPIC_SVR: u64 = LAPIC + 0xf0;
const LAPIC_LVT_TIMER: u64 = LAPIC + 0x320;
const LAPIC_TIMER_INIT: u64 = LAPIC + 0x380;
const LAPIC_TIMER_CUR: u64 = LAPIC + 0x390;
const LAPIC_TIMER_DIV: u64 = LAPIC + 0x3e0;
const LVT_MASKED: u32 = 1 << 16;
const LVT_PERIODIC: u32 = 1 << 17;
const TIMER_VECTOR: u32 = 0x40;
/// KVM's APIC timer ticks once per nanosecond with divide-by-1.
const TICKS_PER_MS: u64 = 1_000_000;

static CLOCK_NS: AtomicU64 = AtomicU64::new(0);
static LAST_COUNT: AtomicU32 = AtomicU32::new(u32::MAX);
static TIMER_FIRED: AtomicBool = AtomicBool::new(false);

#[repr(C, align(16))]
#[derive(Clone, Copy)]
struct Gate([u64; 2]);

static mut IDT: [Gate; 256] = [Gate([0; 2]); 256];

// Interrupt entry points: the timer sets TIMER_FIRED; any other interrupt is acknowledged
// and ignored; an exception (vectors 0..31) is fatal and reported.
global_asm!(
    ".global hostile_isr_timer",
    "hostile_isr_timer:",
    "push rax",
    "mov byte ptr [rip + {fired}], 1",
    "mov rax, 0xfee000b0",
    "mov dword ptr [rax], 0",
    "pop rax",
    "iretq",
    ".global hostile_isr_other",
    "hostile_isr_other:",
    "push rax",
    "mov rax, 0xfee000b0",
    "mov dword ptr [rax], 0",
    "pop rax",
    "iretq",
    ".global hostile_isr_fault",
    "hostile_isr_fault:",
    "and rsp, ~0xf",
    "call {fault}",
    fired = sym TIMER_FIRED,
    fault = sym exception,
);

extern "C" {
    fn hostile_isr_timer();
    fn hostile_isr_other();
    fn hostile_isr_fault();
}

extern "C" fn exception() -> ! {
    crate::println!("hostile: UNHEALTHY guest took a CPU exception");
    crate::hw::reset()
}

fn gate(handler: u64) -> Gate {
    // Present, DPL 0, 64-bit interrupt gate, husk's boot code segment (GDT entry 1).
    let lo = (handler & 0xffff) | (0x08 << 16) | (0x8e00u64 << 32) | ((handler >> 16) << 48);
    Gate([lo, handler >> 32])
}

/// Installs the IDT, masks the PIC, enables the local APIC and starts the clock.
pub fn init() {
    let idt = &raw mut IDT;
    for v in 0..256usize {
        let h = match v {
            0..=31 => hostile_isr_fault as *const () as u64,
            0x40 => hostile_isr_timer as *const () as u64,
            _ => hostile_isr_other as *const () as u64,
        };
        // SAFETY: single vCPU with interrupts off; nothing reads the IDT yet.
        unsafe { (*idt)[v] = gate(h) };
    }
    #[repr(C, packed)]
    struct Idtr {
        limit: u16,
        base: u64,
    }
    let idtr = Idtr {
        limit: (256 * 16 - 1) as u16,
        base: idt as u64,
    };
    // SAFETY: the IDT is a static that lives forever; its gates point at valid handlers.
    unsafe { asm!("lidt [{0}]", in(reg) &idtr, options(nostack)) };
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
    write32(LAPIC_SVR, 0x1ff);
    write32(LAPIC_TIMER_DIV, 0xb);
    start_clock();
}

/// The clock is the APIC timer free-running in periodic mode, masked: KVM derives its count
/// from the host's clock, where the TSC of a nested or emulated guest runs at whatever
/// rate (under the nested test host a TSC calibrated against it ran 50 times fast).
fn start_clock() {
    write32(LAPIC_LVT_TIMER, LVT_MASKED | LVT_PERIODIC | TIMER_VECTOR);
    write32(LAPIC_TIMER_INIT, u32::MAX);
    LAST_COUNT.store(u32::MAX, Ordering::Relaxed);
}

/// Nanoseconds on the clock; call at least every 4 s (a period of the count) for it to
/// keep up, which every waiting loop here does.
pub fn now() -> u64 {
    let cur = read32(LAPIC_TIMER_CUR);
    let last = LAST_COUNT.swap(cur, Ordering::Relaxed);
    let passed = if cur <= last {
        last - cur
    } else {
        last + (u32::MAX - cur)
    };
    CLOCK_NS.fetch_add(u64::from(passed), Ordering::Relaxed) + u64::from(passed)
}

/// Milliseconds since an earlier `now()`.
pub fn ms_since(t0: u64) -> u64 {
    (now() - t0) / TICKS_PER_MS
}

/// Spins (without exits other than the clock's reads) for `ms`.
pub fn spin_ms(ms: u64) {
    let t0 = now();
    while ms_since(t0) < ms {}
}

/// Halts the vCPU for `ms` (at most 4 s): the vCPU thread sleeps in KVM until the APIC
/// timer, one-shot for this, fires; then the clock resumes, `ms` later.
pub fn halt_ms(ms: u64) {
    let ms = ms.min(4000);
    let t = now();
    TIMER_FIRED.store(false, Ordering::SeqCst);
    write32(LAPIC_LVT_TIMER, TIMER_VECTOR);
    write32(LAPIC_TIMER_INIT, (ms * TICKS_PER_MS) as u32);
    while !TIMER_FIRED.load(Ordering::SeqCst) {
        // SAFETY: sti; hlt waits for the next interrupt; our handlers return with iretq.
        unsafe { asm!("sti", "hlt", "cli", options(nomem, nostack)) };
    }
    CLOCK_NS.store(t + ms * TICKS_PER_MS, Ordering::Relaxed);
    start_clock();
}
