//! CPUID as the guest sees it: KVM's supported set, normalized per vCPU (APIC ids, topology
//! of one socket with `n` single-threaded cores, the hypervisor bit and KVM's leaves).

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_HYPERVISOR: u32 = 0x4000_0000;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_EXT_APIC: u32 = 0x8000_001e;

const LEAF_EXT_FEATURES: u32 = 0x7;
const LEAF_XSAVE: u32 = 0xd;

const LEAF_AMD_FEATURES: u32 = 0x8000_0001;
const LEAF_SVM: u32 = 0x8000_000a;

const ECX_VMX: u32 = 1 << 5;
/// Leaf 0x8000_0001 ECX: SVM. Pods get no nested virtualization (one less way out, as in
/// Firecracker), so the guest sees neither VMX nor SVM.
const ECX_AMD_SVM: u32 = 1 << 2;
const ECX_FMA: u32 = 1 << 12;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const ECX_XSAVE: u32 = 1 << 26;
const ECX_OSXSAVE: u32 = 1 << 27;
const ECX_AVX: u32 = 1 << 28;
const ECX_F16C: u32 = 1 << 29;
/// Leaf 7 EBX: AVX2 and every AVX-512 subset; all need XSAVE-managed state.
const EBX7_AVX_FAMILY: u32 = (1 << 5)
    | (1 << 16)
    | (1 << 17)
    | (1 << 21)
    | (1 << 26)
    | (1 << 27)
    | (1 << 28)
    | (1 << 30)
    | (1 << 31);
/// Leaf 7 ECX: AVX-512 VBMI and friends, VAES, VPCLMULQDQ (VEX/EVEX encoded, need XSAVE).
const ECX7_AVX_FAMILY: u32 =
    (1 << 1) | (1 << 6) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12) | (1 << 14);
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
/// "KVMKVMKVM\0\0\0" as three registers.
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];

/// Number of bits needed to number `n` items.
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// What the VM offers beyond KVM_GET_SUPPORTED_CPUID (features KVM only emulates when the
/// VMM asks: they need the in-kernel irqchip).
#[derive(Debug, Clone, Copy, Default)]
pub struct Extras {
    /// KVM_CAP_TSC_DEADLINE_TIMER: without it the guest calibrates the LAPIC timer against
    /// the PIT, which is slow and under nesting can fail outright.
    pub tsc_deadline: bool,
    /// Hide XSAVE and everything that needs it (AVX family): the guest then manages its
    /// FPU state with FXSAVE and never executes XSETBV. Used where the host is itself a
    /// QEMU TCG guest with emulated SVM (the nested test host, [`host_is_tcg`]): there,
    /// with KVM's XSAVE leaves, the guest printed "XSAVE consistency problem" on every boot
    /// and one boot in eight triple-faulted; with XSAVE hidden, 40 boots in a row were
    /// clean. Why TCG's nested SVM trips on it is not established.
    pub hide_xsave: bool,
}

/// The 12-byte hypervisor signature of the machine the vmm runs on (CPUID 0x4000_0000),
/// if it says it is virtualized.
pub fn host_hypervisor_signature() -> Option<[u8; 12]> {
    use std::arch::x86_64::__cpuid;
    // CPUID is available on every x86_64 CPU and has no side effects.
    let leaf1 = __cpuid(LEAF_FEATURES);
    if leaf1.ecx & ECX_HYPERVISOR == 0 {
        return None;
    }
    let sig = __cpuid(LEAF_HYPERVISOR);
    let mut out = [0u8; 12];
    out[0..4].copy_from_slice(&sig.ebx.to_le_bytes());
    out[4..8].copy_from_slice(&sig.ecx.to_le_bytes());
    out[8..12].copy_from_slice(&sig.edx.to_le_bytes());
    Some(out)
}

/// Whether the host is a QEMU TCG guest ("TCGTCGTCGTCG"), i.e. the nested test host.
pub fn host_is_tcg() -> bool {
    host_hypervisor_signature().is_some_and(|s| &s == b"TCGTCGTCGTCG")
}

/// Normalizes one CPUID entry for vCPU `cpu_id` of `n_vcpus`.
pub fn normalize_entry(e: &mut kvm_cpuid_entry2, cpu_id: u8, n_vcpus: u8) {
    normalize_entry_with(e, cpu_id, n_vcpus, Extras::default())
}

/// [`normalize_entry`] with the extra features the VM supports.
pub fn normalize_entry_with(e: &mut kvm_cpuid_entry2, cpu_id: u8, n_vcpus: u8, extras: Extras) {
    let id = u32::from(cpu_id);
    let n = u32::from(n_vcpus).max(1);
    match e.function {
        LEAF_FEATURES => {
            e.ebx = (e.ebx & 0x0000_ffff) | (n << 16) | (id << 24);
            e.ecx |= ECX_HYPERVISOR;
            e.ecx &= !ECX_VMX;
            if extras.hide_xsave {
                e.ecx &= !(ECX_XSAVE | ECX_OSXSAVE | ECX_AVX | ECX_FMA | ECX_F16C);
            }
            if extras.tsc_deadline {
                e.ecx |= ECX_TSC_DEADLINE;
            }
            if n > 1 {
                e.edx |= EDX_HTT;
            } else {
                e.edx &= !EDX_HTT;
            }
        }
        LEAF_CACHE => {
            let level = (e.eax >> 5) & 0x7;
            let sharing = if level >= 3 { n - 1 } else { 0 };
            e.eax = (e.eax & 0x3fff) | ((sharing & 0xfff) << 14) | (((n - 1) & 0x3f) << 26);
        }
        LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
            e.edx = id;
            match e.index {
                0 => {
                    // SMT level: one thread per core.
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = 1 << 8;
                }
                1 => {
                    // Core level: n cores in the package.
                    e.eax = bits_for(n);
                    e.ebx = n;
                    e.ecx = (2 << 8) | 1;
                }
                i => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = i & 0xff;
                }
            }
        }
        LEAF_EXT_FEATURES if e.index == 0 && extras.hide_xsave => {
            e.ebx &= !EBX7_AVX_FAMILY;
            e.ecx &= !ECX7_AVX_FAMILY;
        }
        LEAF_XSAVE if extras.hide_xsave => {
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        LEAF_AMD_FEATURES => e.ecx &= !ECX_AMD_SVM,
        LEAF_SVM => {
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        LEAF_HYPERVISOR => {
            e.eax = e.eax.max(LEAF_HYPERVISOR + 1);
            e.ebx = KVM_SIGNATURE[0];
            e.ecx = KVM_SIGNATURE[1];
            e.edx = KVM_SIGNATURE[2];
        }
        LEAF_AMD_SIZES => {
            e.ecx = (e.ecx & !0xf0ff) | ((n - 1) & 0xff) | (bits_for(n) << 12);
        }
        LEAF_AMD_EXT_APIC => {
            e.eax = id;
            e.ebx = id & 0xff;
            e.ecx = 0;
        }
        _ => {}
    }
}

/// Normalizes every entry of `cpuid` for vCPU `cpu_id` of `n_vcpus`.
pub fn normalize(cpuid: &mut CpuId, cpu_id: u8, n_vcpus: u8, extras: Extras) {
    for e in cpuid.as_mut_slice() {
        normalize_entry_with(e, cpu_id, n_vcpus, extras);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0x0000_0800,
            ..Default::default()
        }
    }

    #[test]
    fn leaf1_apic_id_count_and_hypervisor_bit() {
        let mut e = entry(1, 0);
        normalize_entry(&mut e, 3, 4);
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_eq!(e.ebx & 0xffff, 0x800);
        assert_ne!(e.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e.edx & EDX_HTT, 0);
        assert_eq!(e.ecx & ECX_TSC_DEADLINE, 0);
        let extras = Extras {
            tsc_deadline: true,
            ..Default::default()
        };
        normalize_entry_with(&mut e, 3, 4, extras);
        assert_ne!(e.ecx & ECX_TSC_DEADLINE, 0);
    }

    #[test]
    fn hide_xsave_clears_xsave_and_the_avx_family() {
        let extras = Extras {
            hide_xsave: true,
            ..Default::default()
        };
        let mut l1 = entry(1, 0);
        l1.ecx = ECX_XSAVE | ECX_OSXSAVE | ECX_AVX | ECX_FMA | 1;
        normalize_entry_with(&mut l1, 0, 1, extras);
        assert_eq!(l1.ecx, 1 | ECX_HYPERVISOR);
        let mut l7 = entry(7, 0);
        l7.ebx = (1 << 5) | (1 << 3);
        normalize_entry_with(&mut l7, 0, 1, extras);
        assert_eq!(l7.ebx, 1 << 3, "AVX2 gone, BMI1 kept");
        let mut ld = entry(0xd, 0);
        ld.eax = 7;
        normalize_entry_with(&mut ld, 0, 1, extras);
        assert_eq!((ld.eax, ld.ebx, ld.ecx, ld.edx), (0, 0, 0, 0));
        // Without the flag nothing changes.
        let mut keep = entry(0xd, 0);
        keep.eax = 7;
        normalize_entry(&mut keep, 0, 1);
        assert_eq!(keep.eax, 7);
    }

    #[test]
    fn no_nested_virtualization() {
        let mut l1 = entry(1, 0);
        l1.ecx = ECX_VMX | 1;
        normalize_entry(&mut l1, 0, 1);
        assert_eq!(l1.ecx & ECX_VMX, 0);
        let mut ext = entry(0x8000_0001, 0);
        ext.ecx = ECX_AMD_SVM | 1;
        normalize_entry(&mut ext, 0, 1);
        assert_eq!(ext.ecx, 1);
        let mut svm = entry(0x8000_000a, 0);
        svm.eax = 1;
        svm.edx = 0xff;
        normalize_entry(&mut svm, 0, 1);
        assert_eq!((svm.eax, svm.edx), (0, 0));
    }

    #[test]
    fn topology_leaf() {
        let mut smt = entry(0xb, 0);
        let mut core = entry(0xb, 1);
        let mut end = entry(0xb, 2);
        for e in [&mut smt, &mut core, &mut end] {
            normalize_entry(e, 1, 3);
        }
        assert_eq!((smt.ebx, smt.ecx >> 8, smt.edx), (1, 1, 1));
        assert_eq!((core.eax, core.ebx, core.ecx >> 8), (2, 3, 2));
        assert_eq!((end.ebx, end.ecx >> 8), (0, 0));
    }

    #[test]
    fn hypervisor_signature() {
        let mut e = entry(LEAF_HYPERVISOR, 0);
        normalize_entry(&mut e, 0, 1);
        let mut sig = Vec::new();
        for r in [e.ebx, e.ecx, e.edx] {
            sig.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&sig[..9], b"KVMKVMKVM");
    }

    #[test]
    fn bit_counts() {
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(2), 1);
        assert_eq!(bits_for(3), 2);
        assert_eq!(bits_for(4), 2);
        assert_eq!(bits_for(5), 3);
    }
}
