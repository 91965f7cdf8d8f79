//! The C memory functions the compiler calls (no libc here). Written with `rep` string
//! instructions so that the compiler cannot turn them back into calls to themselves.

use core::arch::asm;

#[no_mangle]
/// # Safety
/// `dst` and `src` valid for `n` bytes, not overlapping.
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract; rep movsb copies exactly n bytes forward.
    unsafe {
        asm!("rep movsb", inout("rdi") dst => _, inout("rsi") src => _, inout("rcx") n => _,
             options(nostack, preserves_flags))
    };
    dst
}

#[no_mangle]
/// # Safety
/// `dst` and `src` valid for `n` bytes.
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize) + n {
        // SAFETY: a forward copy is correct when dst is below src or past its end.
        return unsafe { memcpy(dst, src, n) };
    }
    // SAFETY: copying backwards (direction flag set, then cleared) handles the overlap.
    unsafe {
        asm!("std", "rep movsb", "cld",
             inout("rdi") dst.add(n - 1) => _, inout("rsi") src.add(n - 1) => _,
             inout("rcx") n => _, options(nostack))
    };
    dst
}

#[no_mangle]
/// # Safety
/// `dst` valid for `n` bytes.
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract.
    unsafe {
        asm!("rep stosb", inout("rdi") dst => _, inout("rcx") n => _, in("al") c as u8,
             options(nostack, preserves_flags))
    };
    dst
}

#[no_mangle]
/// # Safety
/// `a` and `b` valid for `n` bytes.
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: i < n, within both buffers.
        let (x, y) = unsafe {
            (
                core::ptr::read_volatile(a.add(i)),
                core::ptr::read_volatile(b.add(i)),
            )
        };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

#[no_mangle]
/// # Safety
/// `a` and `b` valid for `n` bytes.
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract.
    unsafe { memcmp(a, b, n) }
}

/// The prebuilt `core` is compiled for unwinding and names this symbol; with panic=abort
/// nothing ever calls it.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}
