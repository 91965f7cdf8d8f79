//! The KVM side of a snapshot: each vCPU's registers, FPU/XSAVE, LAPIC, MSRs and pending
//! events, and the VM's PIC, IOAPIC, PIT and clock. Saved from stopped vCPUs (their last
//! KVM_RUN completed any pending port or MMIO access); restored in the order KVM needs:
//! the VM's chips before the vCPUs' LAPICs, CPUID before anything that depends on it,
//! special registers before the LAPIC (the APIC base), and MSRs with the TSC first (the
//! TSC deadline is relative to it).

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

use super::{kvm, SnapshotError};

/// IA32_TSC: restored before every other MSR.
const MSR_IA32_TSC: u32 = 0x10;

#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    regs: kvm_regs,
    sregs: kvm_sregs,
    /// The FPU, SSE and extended state (KVM_CAP_XSAVE, which every x86 KVM since 2.6.36
    /// has; the snapshot needs it).
    xsave: kvm_xsave,
    /// With KVM_CAP_XCRS.
    xcrs: Option<kvm_xcrs>,
    debugregs: kvm_debugregs,
    lapic: kvm_lapic_state,
    mp_state: kvm_mp_state,
    events: kvm_vcpu_events,
    /// (index, value), every MSR KVM lists that could be read.
    msrs: Vec<(u32, u64)>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct VmState {
    pic_master: kvm_irqchip,
    pic_slave: kvm_irqchip,
    ioapic: kvm_irqchip,
    pit: kvm_pit_state2,
    clock: kvm_clock_data,
}

/// The MSRs to save: what KVM lists, the TSC first.
pub fn msr_list(kvm_fd: &Kvm) -> Result<Vec<u32>, SnapshotError> {
    let list = kvm_fd
        .get_msr_index_list()
        .map_err(kvm("KVM_GET_MSR_INDEX_LIST"))?;
    let mut v: Vec<u32> = list.as_slice().to_vec();
    v.sort_by_key(|&i| i != MSR_IA32_TSC);
    Ok(v)
}

fn msrs_of(indices: &[u32]) -> Result<Msrs, SnapshotError> {
    let entries: Vec<kvm_msr_entry> = indices
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    Msrs::from_entries(&entries).map_err(|e| SnapshotError::Memory(format!("MSR list: {e:?}")))
}

/// Reads every MSR in `list` that KVM lets us read. KVM_GET_MSRS stops at the first MSR it
/// cannot read and says how many it did: that one is skipped and the rest asked again.
fn read_msrs(fd: &VcpuFd, list: &[u32]) -> Result<Vec<(u32, u64)>, SnapshotError> {
    let mut out = Vec::with_capacity(list.len());
    let mut at = 0;
    while at < list.len() {
        let end = (at + kvm_bindings::KVM_MAX_MSR_ENTRIES).min(list.len());
        let mut msrs = msrs_of(&list[at..end])?;
        let n = fd.get_msrs(&mut msrs).map_err(kvm("KVM_GET_MSRS"))?;
        out.extend(msrs.as_slice()[..n].iter().map(|e| (e.index, e.data)));
        at += n;
        if at < end {
            log::debug!("snapshot: MSR {:#x} cannot be read; left out", list[at]);
            at += 1;
        }
    }
    Ok(out)
}

pub fn save_vcpu(kvm_fd: &Kvm, fd: &VcpuFd, msr_list: &[u32]) -> Result<VcpuState, SnapshotError> {
    let xsave = fd.get_xsave().map_err(kvm("KVM_GET_XSAVE"))?;
    let xcrs = if kvm_fd.check_extension(Cap::Xcrs) {
        Some(fd.get_xcrs().map_err(kvm("KVM_GET_XCRS"))?)
    } else {
        None
    };
    Ok(VcpuState {
        regs: fd.get_regs().map_err(kvm("KVM_GET_REGS"))?,
        sregs: fd.get_sregs().map_err(kvm("KVM_GET_SREGS"))?,
        xsave,
        xcrs,
        debugregs: fd.get_debug_regs().map_err(kvm("KVM_GET_DEBUGREGS"))?,
        lapic: fd.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?,
        mp_state: fd.get_mp_state().map_err(kvm("KVM_GET_MP_STATE"))?,
        events: fd.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?,
        msrs: read_msrs(fd, msr_list)?,
    })
}

/// Puts a vCPU back (its CPUID already set, as at boot).
pub fn restore_vcpu(fd: &VcpuFd, s: &VcpuState) -> Result<(), SnapshotError> {
    fd.set_mp_state(s.mp_state)
        .map_err(kvm("KVM_SET_MP_STATE"))?;
    fd.set_regs(&s.regs).map_err(kvm("KVM_SET_REGS"))?;
    fd.set_sregs(&s.sregs).map_err(kvm("KVM_SET_SREGS"))?;
    // SAFETY: `s.xsave` is a whole kvm_xsave (the legacy 4 KiB area KVM_GET_XSAVE filled);
    // KVM_SET_XSAVE reads exactly that size from it.
    unsafe { fd.set_xsave(&s.xsave) }.map_err(kvm("KVM_SET_XSAVE"))?;
    if let Some(x) = &s.xcrs {
        fd.set_xcrs(x).map_err(kvm("KVM_SET_XCRS"))?;
    }
    fd.set_debug_regs(&s.debugregs)
        .map_err(kvm("KVM_SET_DEBUGREGS"))?;
    fd.set_lapic(&s.lapic).map_err(kvm("KVM_SET_LAPIC"))?;
    let indices: Vec<u32> = s.msrs.iter().map(|(i, _)| *i).collect();
    let mut msrs = msrs_of(&indices)?;
    for (e, (_, v)) in msrs.as_mut_slice().iter_mut().zip(&s.msrs) {
        e.data = *v;
    }
    let n = fd.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
    if n != s.msrs.len() {
        return Err(SnapshotError::Mismatch(format!(
            "KVM refused MSR {:#x} ({n} of {} set)",
            s.msrs[n].0,
            s.msrs.len()
        )));
    }
    fd.set_vcpu_events(&s.events)
        .map_err(kvm("KVM_SET_VCPU_EVENTS"))?;
    Ok(())
}

fn get_chip(fd: &VmFd, id: u32) -> Result<kvm_irqchip, SnapshotError> {
    let mut c = kvm_irqchip {
        chip_id: id,
        ..Default::default()
    };
    fd.get_irqchip(&mut c).map_err(kvm("KVM_GET_IRQCHIP"))?;
    Ok(c)
}

pub fn save_vm(fd: &VmFd) -> Result<VmState, SnapshotError> {
    Ok(VmState {
        pic_master: get_chip(fd, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: get_chip(fd, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: get_chip(fd, KVM_IRQCHIP_IOAPIC)?,
        pit: fd.get_pit2().map_err(kvm("KVM_GET_PIT2"))?,
        clock: fd.get_clock().map_err(kvm("KVM_GET_CLOCK"))?,
    })
}

/// Puts the VM's chips back (the irqchip and PIT exist already), before the vCPUs.
pub fn restore_vm(fd: &VmFd, s: &VmState) -> Result<(), SnapshotError> {
    fd.set_pit2(&s.pit).map_err(kvm("KVM_SET_PIT2"))?;
    for c in [&s.pic_master, &s.pic_slave, &s.ioapic] {
        fd.set_irqchip(c).map_err(kvm("KVM_SET_IRQCHIP"))?;
    }
    Ok(())
}

/// Puts the guest's clock (kvmclock) back, after the vCPUs and their TSCs: both then
/// resume from the same instant. Set before the vCPUs, the clock ran on while they were
/// restored and the guest's clocksource watchdog saw its TSC 30-50 ms behind kvmclock
/// and marked it unstable.
pub fn restore_clock(fd: &VmFd, s: &VmState) -> Result<(), SnapshotError> {
    // Flags such as KVM_CLOCK_TSC_STABLE describe the template's host, not inputs.
    let clock = kvm_clock_data {
        flags: 0,
        ..s.clock
    };
    fd.set_clock(&clock).map_err(kvm("KVM_SET_CLOCK"))
}
