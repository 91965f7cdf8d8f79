use super::*;

/// A tiny classic-BPF interpreter for the opcodes the compiler emits.
fn run(prog: &[SockFilter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&nr.to_ne_bytes());
    data[4..8].copy_from_slice(&arch.to_ne_bytes());
    for (i, a) in args.iter().enumerate() {
        data[16 + i * 8..24 + i * 8].copy_from_slice(&a.to_ne_bytes());
    }
    let mut a = 0u32;
    let mut pc = 0usize;
    loop {
        let ins = prog[pc];
        pc += 1;
        match ins.code {
            LD_W_ABS => {
                let k = ins.k as usize;
                a = u32::from_ne_bytes(data[k..k + 4].try_into().unwrap());
            }
            ALU_AND => a &= ins.k,
            RET => return ins.k,
            JEQ | JGT | JGE => {
                let t = match ins.code {
                    JEQ => a == ins.k,
                    JGT => a > ins.k,
                    _ => a >= ins.k,
                };
                pc += if t { ins.jt } else { ins.jf } as usize;
            }
            c => panic!("opcode {c:#x}"),
        }
    }
}

fn profile(json: &str) -> Vec<SockFilter> {
    compile(&serde_json::from_str(json).unwrap()).unwrap()
}

const ALLOW: u32 = 0x7fff_0000;
const EPERM: u32 = 0x0005_0000 | libc::EPERM as u32;

fn nr(name: &str) -> u32 {
    syscall_number(name).unwrap() as u32
}

#[test]
fn default_and_named_actions() {
    let p = profile(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["mkdir","getcwd"],"action":"SCMP_ACT_ERRNO"},
            {"names":["no_such_call"],"action":"SCMP_ACT_ERRNO"},
            {"names":["chmod"],"action":"SCMP_ACT_ERRNO","errnoRet":38}]}"#,
    );
    let x = AUDIT_ARCH_X86_64;
    assert_eq!(run(&p, x, nr("mkdir"), [0; 6]), EPERM);
    assert_eq!(run(&p, x, nr("getcwd"), [0; 6]), EPERM);
    assert_eq!(run(&p, x, nr("chmod"), [0; 6]), 0x0005_0000 | 38);
    assert_eq!(run(&p, x, nr("read"), [0; 6]), ALLOW);
    // another architecture is killed; x32 numbers get the default
    assert_eq!(run(&p, 0x4000_0003, nr("read"), [0; 6]), 0x8000_0000);
    assert_eq!(run(&p, x, X32_BIT | nr("mkdir"), [0; 6]), ALLOW);
}

#[test]
fn argument_conditions_compare_all_64_bits() {
    let p = profile(
        r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
            {"names":["personality"],"action":"SCMP_ACT_ALLOW",
             "args":[{"index":0,"value":4294967295,"op":"SCMP_CMP_EQ"}]},
            {"names":["clone"],"action":"SCMP_ACT_ALLOW",
             "args":[{"index":0,"value":2114060288,"valueTwo":0,"op":"SCMP_CMP_MASKED_EQ"}]},
            {"names":["kill"],"action":"SCMP_ACT_ALLOW",
             "args":[{"index":1,"value":9,"op":"SCMP_CMP_NE"},
                     {"index":0,"value":4294967296,"op":"SCMP_CMP_LT"}]},
            {"names":["dup"],"action":"SCMP_ACT_ALLOW",
             "args":[{"index":0,"value":10,"op":"SCMP_CMP_GE"}]},
            {"names":["dup2"],"action":"SCMP_ACT_ALLOW",
             "args":[{"index":0,"value":1,"op":"SCMP_CMP_EQ"},
                     {"index":0,"value":2,"op":"SCMP_CMP_EQ"}]}]}"#,
    );
    let x = AUDIT_ARCH_X86_64;
    let a = |v0: u64, v1: u64| [v0, v1, 0, 0, 0, 0];
    assert_eq!(run(&p, x, nr("personality"), a(0xffff_ffff, 0)), ALLOW);
    assert_eq!(run(&p, x, nr("personality"), a(0x1_ffff_ffff, 0)), EPERM);
    assert_eq!(run(&p, x, nr("clone"), a(0x11, 0)), ALLOW);
    assert_eq!(run(&p, x, nr("clone"), a(0x1000_0000, 0)), EPERM);
    assert_eq!(run(&p, x, nr("kill"), a(5, 15)), ALLOW);
    assert_eq!(run(&p, x, nr("kill"), a(5, 9)), EPERM);
    assert_eq!(run(&p, x, nr("kill"), a(1 << 32, 15)), EPERM);
    assert_eq!(run(&p, x, nr("kill"), a(0xffff_ffff, 15)), ALLOW);
    assert_eq!(run(&p, x, nr("dup"), a(10, 0)), ALLOW);
    assert_eq!(run(&p, x, nr("dup"), a(9, 0)), EPERM);
    assert_eq!(run(&p, x, nr("dup"), a(1 << 33, 0)), ALLOW);
    assert_eq!(run(&p, x, nr("dup2"), a(1, 0)), ALLOW);
    assert_eq!(run(&p, x, nr("dup2"), a(2, 0)), ALLOW);
    assert_eq!(run(&p, x, nr("dup2"), a(3, 0)), EPERM);
}

#[test]
fn le_and_gt_boundaries() {
    let p = profile(
        r#"{"defaultAction":"SCMP_ACT_KILL_PROCESS","syscalls":[
            {"names":["read"],"action":"SCMP_ACT_ALLOW",
             "args":[{"index":2,"value":4294967297,"op":"SCMP_CMP_LE"}]},
            {"names":["write"],"action":"SCMP_ACT_LOG",
             "args":[{"index":2,"value":4294967297,"op":"SCMP_CMP_GT"}]}]}"#,
    );
    let x = AUDIT_ARCH_X86_64;
    let a = |v: u64| [0, 0, v, 0, 0, 0];
    assert_eq!(run(&p, x, nr("read"), a(4294967297)), ALLOW);
    assert_eq!(run(&p, x, nr("read"), a(4294967298)), 0x8000_0000);
    assert_eq!(run(&p, x, nr("read"), a(7)), ALLOW);
    assert_eq!(run(&p, x, nr("write"), a(4294967298)), 0x7ffc_0000);
    assert_eq!(run(&p, x, nr("write"), a(4294967297)), 0x8000_0000);
}

#[test]
fn notify_is_refused() {
    let s: LinuxSeccomp = serde_json::from_str(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_NOTIFY"}]}"#,
    )
    .unwrap();
    assert!(matches!(compile(&s), Err(SeccompError::Action(_))));
}
