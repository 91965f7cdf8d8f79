//! OCI seccomp profiles compiled to classic BPF by hand (no libseccomp, so the agent
//! stays a static binary): a linear list of blocks, one per (syscall, rule), first match
//! wins, then the default action.

use oci_spec::runtime::{Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg};
use oci_spec::runtime::{LinuxSeccompFilterFlag, LinuxSeccompOperator as Op};

use super::syscall_table::SYSCALLS;

/// Errors compiling or loading a profile.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// An action this engine does not implement.
    #[error("seccomp action {0:?} is not supported")]
    Action(LinuxSeccompAction),
    /// An argument index past the six syscall arguments.
    #[error("seccomp argument index {0} out of range")]
    ArgIndex(usize),
    /// The program grew past the kernel's limit.
    #[error("seccomp program too long ({0} instructions)")]
    TooLong(usize),
    /// The kernel refused the filter.
    #[error("loading seccomp filter: {0}")]
    Load(#[source] std::io::Error),
}

/// One classic BPF instruction (`struct sock_filter`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockFilter {
    /// Opcode.
    pub code: u16,
    /// Jump offset if true.
    pub jt: u8,
    /// Jump offset if false.
    pub jf: u8,
    /// Constant.
    pub k: u32,
}

const LD_W_ABS: u16 = 0x20;
const JEQ: u16 = 0x15;
const JGT: u16 = 0x25;
const JGE: u16 = 0x35;
const ALU_AND: u16 = 0x54;
const RET: u16 = 0x06;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const X32_BIT: u32 = 0x4000_0000;
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const fn off_arg(i: u32, hi: bool) -> u32 {
    16 + i * 8 + if hi { 4 } else { 0 }
}

/// The number of a syscall by name on x86_64.
pub fn syscall_number(name: &str) -> Option<i64> {
    SYSCALLS.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

/// The BPF return value of an action.
pub fn action_value(a: LinuxSeccompAction, errno: Option<u32>) -> Result<u32, SeccompError> {
    let data = |d: u32| d & 0xffff;
    Ok(match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => 0,
        LinuxSeccompAction::ScmpActKillProcess => 0x8000_0000,
        LinuxSeccompAction::ScmpActTrap => 0x0003_0000,
        LinuxSeccompAction::ScmpActErrno => 0x0005_0000 | data(errno.unwrap_or(libc::EPERM as u32)),
        LinuxSeccompAction::ScmpActTrace => 0x7ff0_0000 | data(errno.unwrap_or(libc::EPERM as u32)),
        LinuxSeccompAction::ScmpActLog => 0x7ffc_0000,
        LinuxSeccompAction::ScmpActAllow => 0x7fff_0000,
        other => return Err(SeccompError::Action(other)),
    })
}

fn stmt(code: u16, k: u32) -> SockFilter {
    SockFilter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}
fn jump(code: u16, k: u32, jt: u8, jf: u8) -> SockFilter {
    SockFilter { code, jt, jf, k }
}

/// Emits the check of one 64-bit argument condition. The code is laid out so that
/// "pass" falls through to the instruction after it and "fail" jumps `fail` instructions
/// past its end; returns the instructions (jump offsets patched for that layout).
fn arg_check(a: &LinuxSeccompArg, fail_after: usize) -> Result<Vec<SockFilter>, SeccompError> {
    if a.index() > 5 {
        return Err(SeccompError::ArgIndex(a.index()));
    }
    let i = a.index() as u32;
    let (v, m) = match a.op() {
        Op::ScmpCmpMaskedEq => (a.value_two().unwrap_or(0), a.value()),
        _ => (a.value(), u64::MAX),
    };
    let (vh, vl) = ((v >> 32) as u32, v as u32);
    let (mh, ml) = ((m >> 32) as u32, m as u32);
    let ld = |hi| stmt(LD_W_ABS, off_arg(i, hi));
    // Each sequence below is built so that offsets count to the end of the sequence
    // ("pass", 0 past the end) or `fail_after` further.
    let f = |rest: usize| (rest + fail_after) as u8;
    Ok(match a.op() {
        Op::ScmpCmpEq | Op::ScmpCmpMaskedEq => vec![
            ld(true),
            stmt(ALU_AND, mh),
            jump(JEQ, vh, 0, f(3)),
            ld(false),
            stmt(ALU_AND, ml),
            jump(JEQ, vl, 0, f(0)),
        ],
        Op::ScmpCmpNe => vec![
            ld(true),
            jump(JEQ, vh, 0, 2),
            ld(false),
            jump(JEQ, vl, f(0), 0),
        ],
        Op::ScmpCmpGt | Op::ScmpCmpGe => vec![
            ld(true),
            jump(JGT, vh, 3, 0),
            jump(JEQ, vh, 0, f(2)),
            ld(false),
            jump(if a.op() == Op::ScmpCmpGt { JGT } else { JGE }, vl, 0, f(0)),
        ],
        Op::ScmpCmpLt | Op::ScmpCmpLe => vec![
            ld(true),
            jump(JGT, vh, f(3), 0),
            jump(JEQ, vh, 0, 2),
            ld(false),
            jump(if a.op() == Op::ScmpCmpLt { JGE } else { JGT }, vl, f(0), 0),
        ],
    })
}

/// One block: syscall number check, argument checks, action.
fn block(nr: u32, args: &[LinuxSeccompArg], action: u32) -> Result<Vec<SockFilter>, SeccompError> {
    let mut checks: Vec<Vec<SockFilter>> = Vec::new();
    // Lay out from the end: each check's fail target is the end of the block.
    let mut tail_len = 1; // the RET
    for a in args.iter().rev() {
        let c = arg_check(a, tail_len)?;
        tail_len += c.len();
        checks.push(c);
    }
    checks.reverse();
    let mut out = vec![stmt(LD_W_ABS, OFF_NR), jump(JEQ, nr, 0, tail_len as u8)];
    for c in checks {
        out.extend(c);
    }
    out.push(stmt(RET, action));
    Ok(out)
}

/// Compiles a profile for x86_64.
pub fn compile(s: &LinuxSeccomp) -> Result<Vec<SockFilter>, SeccompError> {
    let default = action_value(s.default_action(), s.default_errno_ret())?;
    let mut prog = vec![
        stmt(LD_W_ABS, OFF_ARCH),
        jump(JEQ, AUDIT_ARCH_X86_64, 1, 0),
        stmt(RET, 0x8000_0000),
        stmt(LD_W_ABS, OFF_NR),
        // x32 syscall numbers never match a rule: they get the default action.
        jump(JGE, X32_BIT, 0, 1),
        stmt(RET, default),
    ];
    for rule in s.syscalls().iter().flatten() {
        let action = action_value(rule.action(), rule.errno_ret())?;
        let args = rule.args().clone().unwrap_or_default();
        // Like runc: conditions on the same argument index are alternatives (OR),
        // conditions on distinct indices all apply (AND).
        let mut idx: Vec<usize> = args.iter().map(|a| a.index()).collect();
        idx.sort_unstable();
        let repeated = idx.windows(2).any(|w| w[0] == w[1]);
        let groups: Vec<Vec<LinuxSeccompArg>> = if repeated {
            args.iter().map(|a| vec![*a]).collect()
        } else {
            vec![args]
        };
        for name in rule.names() {
            // Names the kernel does not have on this architecture are skipped, as
            // libseccomp does.
            let Some(nr) = syscall_number(name) else {
                continue;
            };
            for g in &groups {
                prog.extend(block(nr as u32, g, action)?);
            }
        }
    }
    prog.push(stmt(RET, default));
    if prog.len() > 4096 {
        return Err(SeccompError::TooLong(prog.len()));
    }
    Ok(prog)
}

/// Whether a profile applies to this machine (its architectures name x86_64, or none).
pub fn applies(s: &LinuxSeccomp) -> bool {
    s.architectures()
        .as_ref()
        .is_none_or(|a| a.is_empty() || a.contains(&Arch::ScmpArchX86_64))
}

/// Loads a compiled program into the calling thread.
pub fn load(prog: &[SockFilter], flags: &[LinuxSeccompFilterFlag]) -> Result<(), SeccompError> {
    #[repr(C)]
    struct SockFprog {
        len: u16,
        filter: *const SockFilter,
    }
    let fprog = SockFprog {
        len: prog.len() as u16,
        filter: prog.as_ptr(),
    };
    let mut f = 0u64;
    for fl in flags {
        f |= match fl {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => 2,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => 4,
            _ => 0,
        };
    }
    // SAFETY: `fprog` points to `prog`, which outlives the call; the kernel copies it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            1u64, /* SECCOMP_SET_MODE_FILTER */
            f,
            &fprog as *const SockFprog,
        )
    };
    if rc != 0 {
        return Err(SeccompError::Load(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
#[path = "seccomp_tests.rs"]
mod tests;
