//! The device cgroup on cgroup v2: `linux.resources.devices` compiled to an eBPF
//! `BPF_PROG_TYPE_CGROUP_DEVICE` program and attached to the container's cgroup, after
//! runc's implicit list of always-allowed devices. Rules are evaluated last to first;
//! the first match decides; no match denies.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

/// Errors loading the program.
#[derive(Debug, thiserror::Error)]
pub enum DevicesError {
    /// A rule with an unknown type or access string.
    #[error("device rule {0}")]
    Rule(String),
    /// The kernel refused the program or the attachment.
    #[error("device filter {op}: {source}")]
    Bpf {
        /// The bpf command.
        op: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// One rule in engine form: type (`b'a'`, `b'b'`, `b'c'`), major/minor (-1 = any), access
/// bits (1 mknod, 2 read, 4 write), allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// `a`, `b` or `c`.
    pub kind: u8,
    /// Major, -1 for any.
    pub major: i64,
    /// Minor, -1 for any.
    pub minor: i64,
    /// Access bits.
    pub access: u32,
    /// Allow or deny.
    pub allow: bool,
}

const M: u32 = 1;
const R: u32 = 2;
const W: u32 = 4;

/// Devices every container may use whatever its rules say (runc's list).
pub fn always_allowed() -> Vec<Rule> {
    let c = |major, minor, access| Rule {
        kind: b'c',
        major,
        minor,
        access,
        allow: true,
    };
    vec![
        c(-1, -1, M),
        Rule {
            kind: b'b',
            major: -1,
            minor: -1,
            access: M,
            allow: true,
        },
        c(1, 3, M | R | W),
        c(1, 5, M | R | W),
        c(1, 7, M | R | W),
        c(1, 8, M | R | W),
        c(1, 9, M | R | W),
        c(5, 0, M | R | W),
        c(5, 1, M | R | W),
        c(5, 2, M | R | W),
        c(136, -1, M | R | W),
        c(10, 200, M | R | W),
    ]
}

/// Converts the spec's rules.
pub fn rules(spec: &[LinuxDeviceCgroup]) -> Result<Vec<Rule>, DevicesError> {
    spec.iter()
        .map(|d| {
            let kind = match d.typ() {
                None | Some(LinuxDeviceType::A) => b'a',
                Some(LinuxDeviceType::B) => b'b',
                Some(LinuxDeviceType::C) | Some(LinuxDeviceType::U) => b'c',
                Some(o) => return Err(DevicesError::Rule(format!("type {o:?}"))),
            };
            let mut access = 0;
            for ch in d.access().as_deref().unwrap_or("rwm").chars() {
                access |= match ch {
                    'r' => R,
                    'w' => W,
                    'm' => M,
                    o => return Err(DevicesError::Rule(format!("access {o}"))),
                };
            }
            Ok(Rule {
                kind,
                major: d.major().unwrap_or(-1),
                minor: d.minor().unwrap_or(-1),
                access,
                allow: d.allow(),
            })
        })
        .collect()
}

/// One eBPF instruction.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    /// Opcode.
    pub code: u8,
    /// dst (low 4 bits) and src (high 4 bits) registers.
    pub regs: u8,
    /// Offset.
    pub off: i16,
    /// Immediate.
    pub imm: i32,
}

const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const AND_K: u8 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const RSH_K: u8 = 0x74; // BPF_ALU | BPF_RSH | BPF_K
const MOV_K: u8 = 0xb4; // BPF_ALU | BPF_MOV | BPF_K
const MOV_X: u8 = 0xbc; // BPF_ALU | BPF_MOV | BPF_X
const JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const EXIT: u8 = 0x95;

fn ins(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// Compiles rules (evaluated last to first) to a device program.
pub fn compile(rules: &[Rule]) -> Vec<Insn> {
    // r2 = access, r3 = type, r4 = major, r5 = minor
    let mut p = vec![
        ins(LDX_W, 2, 1, 0, 0),
        ins(MOV_X, 3, 2, 0, 0),
        ins(AND_K, 3, 0, 0, 0xffff),
        ins(RSH_K, 2, 0, 0, 16),
        ins(LDX_W, 4, 1, 4, 0),
        ins(LDX_W, 5, 1, 8, 0),
    ];
    for r in rules.iter().rev() {
        let mut checks: Vec<Vec<Insn>> = Vec::new();
        match r.kind {
            b'b' => checks.push(vec![ins(JNE_K, 3, 0, 0, 1)]),
            b'c' => checks.push(vec![ins(JNE_K, 3, 0, 0, 2)]),
            _ => {}
        }
        if r.access != (M | R | W) {
            // The requested access must be within the rule's.
            checks.push(vec![
                ins(MOV_X, 6, 2, 0, 0),
                ins(AND_K, 6, 0, 0, !(r.access as i32) & 7),
                ins(JNE_K, 6, 0, 0, 0),
            ]);
        }
        if r.major >= 0 {
            checks.push(vec![ins(JNE_K, 4, 0, 0, r.major as i32)]);
        }
        if r.minor >= 0 {
            checks.push(vec![ins(JNE_K, 5, 0, 0, r.minor as i32)]);
        }
        let total: usize = checks.iter().map(Vec::len).sum::<usize>() + 2;
        let mut pos = 0;
        for c in checks {
            for mut i in c {
                pos += 1;
                if i.code == JNE_K {
                    // Skip to the end of this rule's block.
                    i.off = (total - pos) as i16;
                }
                p.push(i);
            }
        }
        p.push(ins(MOV_K, 0, 0, 0, r.allow as i32));
        p.push(ins(EXIT, 0, 0, 0, 0));
        if total == 2 {
            // A rule that matches everything ends the program: the verifier refuses
            // unreachable instructions.
            return p;
        }
    }
    p.push(ins(MOV_K, 0, 0, 0, 0));
    p.push(ins(EXIT, 0, 0, 0, 0));
    p
}

fn bpf(cmd: u32, attr: &mut [u64; 16]) -> Result<i64, std::io::Error> {
    // SAFETY: `attr` is a zeroed 128-byte bpf_attr union filled for `cmd`; the kernel
    // reads at most its size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}

/// Loads the program for `rules` and attaches it to the cgroup at `dir`.
pub fn apply(dir: &Path, rules: &[Rule]) -> Result<(), DevicesError> {
    let prog = compile(rules);
    let license = c"Apache-2.0";
    let mut attr = [0u64; 16];
    // bpf_attr for BPF_PROG_LOAD: prog_type u32, insn_cnt u32, insns u64, license u64.
    attr[0] = 15 | ((prog.len() as u64) << 32); // BPF_PROG_TYPE_CGROUP_DEVICE
    attr[1] = prog.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    let fd = bpf(5, &mut attr).map_err(|source| DevicesError::Bpf { op: "load", source })?; // BPF_PROG_LOAD
                                                                                            // SAFETY: BPF_PROG_LOAD returned a new fd owned here.
    let prog_fd: OwnedFd = unsafe { super::syscall::own_fd(fd as i32) };
    let cg = std::fs::File::open(dir).map_err(|source| DevicesError::Bpf {
        op: "open cgroup",
        source,
    })?;
    let mut attr = [0u64; 16];
    // BPF_PROG_ATTACH: target_fd u32, attach_bpf_fd u32, attach_type u32, attach_flags u32.
    attr[0] = cg.as_raw_fd() as u64 | ((prog_fd.as_raw_fd() as u64) << 32);
    attr[1] = 6 | (2u64 << 32); // BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI
    bpf(8, &mut attr).map_err(|source| DevicesError::Bpf {
        op: "attach",
        source,
    })?; // BPF_PROG_ATTACH
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a device program on (type, access, major, minor).
    fn run(p: &[Insn], ty: u32, access: u32, major: u32, minor: u32) -> u32 {
        let ctx = [(access << 16) | ty, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            pc += 1;
            let (d, s) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            match i.code {
                LDX_W => r[d] = ctx[(i.off / 4) as usize] as u64,
                AND_K => r[d] = (r[d] as u32 & i.imm as u32) as u64,
                RSH_K => r[d] = (r[d] as u32 >> i.imm) as u64,
                MOV_K => r[d] = i.imm as u32 as u64,
                MOV_X => r[d] = r[s] as u32 as u64,
                JNE_K => {
                    if r[d] != i.imm as u32 as u64 {
                        pc += i.off as usize;
                    }
                }
                EXIT => return r[0] as u32,
                c => panic!("opcode {c:#x}"),
            }
        }
    }

    #[test]
    fn runc_default_rules_allow_the_basics_only() {
        let spec: Vec<LinuxDeviceCgroup> =
            serde_json::from_str(r#"[{"allow":false,"access":"rwm"}]"#).unwrap();
        let mut all = rules(&spec).unwrap();
        all.extend(always_allowed());
        let p = compile(&all);
        assert_eq!(run(&p, 2, R | W, 1, 3), 1, "/dev/null");
        assert_eq!(run(&p, 2, R, 136, 7), 1, "a pty");
        assert_eq!(run(&p, 2, R, 1, 1), 0, "/dev/mem");
        assert_eq!(run(&p, 1, R, 8, 0), 0, "a disk");
        assert_eq!(run(&p, 1, M, 8, 0), 1, "mknod is allowed");
        assert_eq!(run(&p, 2, M | R, 10, 229), 0, "fuse read");
    }

    #[test]
    fn later_rules_override_earlier_ones() {
        let spec: Vec<LinuxDeviceCgroup> = serde_json::from_str(
            r#"[{"allow":false,"access":"rwm"},
                {"allow":true,"type":"c","major":10,"minor":229,"access":"rw"},
                {"allow":false,"type":"c","major":10,"access":"w"}]"#,
        )
        .unwrap();
        let p = compile(&rules(&spec).unwrap());
        assert_eq!(run(&p, 2, R, 10, 229), 1);
        assert_eq!(run(&p, 2, W, 10, 229), 0);
        assert_eq!(run(&p, 2, M, 10, 229), 0);
        assert_eq!(run(&p, 1, R, 10, 229), 0);
        let none = compile(&[]);
        assert_eq!(run(&none, 2, R, 1, 3), 0);
        // nothing after an unconditional rule (the verifier rejects dead code)
        let p = compile(&rules(&spec[..1]).unwrap());
        assert_eq!(p.len(), 8);
    }
}
