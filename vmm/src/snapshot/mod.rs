//! VM templates: a snapshot of a booted VM that later VMs start from instead of booting.
//!
//! A pod's VM spends most of its start booting the same kernel and the same agent to the
//! same state: in the nested test host about 1.7 s of a 2.5 s `ctr run`. With `snapshot_to`
//! the vmm boots, and when the guest agent says it serves (it connects to host vsock port
//! [`TRIGGER_PORT`]) the vmm refuses that connection, stops the VM and writes it out: guest
//! RAM ([`RAM_FILE`], sparse) and the vCPU, irqchip, PIT, clock, serial and virtio
//! transport state ([`STATE_FILE`], written last: its presence marks a whole snapshot).
//! With `restore_from` the vmm builds the same devices from its own config (fresh host
//! sockets, a fresh virtiofsd) and puts that state back instead of loading a kernel.
//!
//! What makes this simple, and what it relies on: the snapshot is taken while every
//! device is quiescent. husk's device models complete every descriptor chain they take
//! within the same event (so a queue's next available index equals the used index the
//! device last published, which is read from guest memory), the vsock muxer holds no
//! connection (the only one the guest made was refused), and virtio-fs has had no request
//! yet (the agent mounts it when the first sandbox is created), which [`TransportState`]
//! checks. A template therefore carries no host connection and no pod's data: the guest is
//! the agent waiting for its first client. What every restored VM shares with its template
//! is the guest's memory image: the shim has the agent mix fresh entropy into the guest's
//! RNG and set its clock first thing after a restore (CreateSandbox).

pub mod kvm_state;
pub mod ram;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::devices::legacy::serial::SerialState;
use crate::devices::virtio::mmio::TransportState;

/// The snapshot's vCPU, VM and device state (JSON).
pub const STATE_FILE: &str = "state.json";
/// Guest RAM, laid out as the vmm's guest RAM file (region after region), with holes where
/// the guest never wrote.
pub const RAM_FILE: &str = "ram";
/// Bumped whenever [`Snapshot`] changes meaning; a snapshot of another version is refused.
pub const FORMAT_VERSION: u32 = 1;
/// The host vsock port whose first guest connection triggers the snapshot: the husk
/// agent's "serving" signal (`husk_protocol::AGENT_READY_PORT`; the vmm does not depend on
/// the agent's protocol crate for one number).
pub const TRIGGER_PORT: u32 = 1025;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{what} {path}: {err}")]
    Io {
        what: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
    #[error("snapshot {path}: {msg}")]
    Format { path: PathBuf, msg: String },
    #[error("the snapshot does not fit this VM: {0}")]
    Mismatch(String),
    #[error("{op}: {err}")]
    Kvm {
        op: &'static str,
        err: kvm_ioctls::Error,
    },
    #[error("a device is not quiescent: {0}")]
    NotQuiescent(String),
    #[error("guest memory: {0}")]
    Memory(String),
}

pub(crate) fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> SnapshotError {
    move |err| SnapshotError::Kvm { op, err }
}

pub(crate) fn io<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> SnapshotError + 'a {
    move |err| SnapshotError::Io {
        what,
        path: path.into(),
        err,
    }
}

/// Everything but guest RAM.
#[derive(Debug, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    pub mem_size: u64,
    pub vm: kvm_state::VmState,
    pub vcpus: Vec<kvm_state::VcpuState>,
    #[serde(with = "crate::devices::legacy::serial::SerialStateDef")]
    pub serial: SerialState,
    /// The virtio-mmio transports in slot order.
    pub devices: Vec<TransportState>,
}

impl Snapshot {
    /// Writes the snapshot into `dir` (created): RAM first, the state file last, so a
    /// reader that finds the state file finds a whole snapshot.
    pub fn write(&self, dir: &Path, mem: &crate::memory::GuestMemory) -> Result<(), SnapshotError> {
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        ram::save(mem, &dir.join(RAM_FILE))?;
        let state = dir.join(STATE_FILE);
        let tmp = dir.join(".state.json.tmp");
        let json = serde_json::to_vec(self).map_err(|e| SnapshotError::Format {
            path: state.clone(),
            msg: e.to_string(),
        })?;
        std::fs::write(&tmp, json).map_err(io("writing", &tmp))?;
        std::fs::rename(&tmp, &state).map_err(io("renaming", &state))?;
        Ok(())
    }

    /// Reads the state file of the snapshot in `dir`.
    pub fn read(dir: &Path) -> Result<Snapshot, SnapshotError> {
        let path = dir.join(STATE_FILE);
        let bytes = std::fs::read(&path).map_err(io("reading", &path))?;
        let format = |e: serde_json::Error| SnapshotError::Format {
            path: path.clone(),
            msg: e.to_string(),
        };
        // The version first: another version's fields may not parse as ours.
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let v: Version = serde_json::from_slice(&bytes).map_err(format)?;
        if v.version != FORMAT_VERSION {
            return Err(SnapshotError::Format {
                path,
                msg: format!(
                    "format version {} (this vmm reads {FORMAT_VERSION})",
                    v.version
                ),
            });
        }
        serde_json::from_slice(&bytes).map_err(format)
    }

    /// Checks the snapshot against the VM about to be restored from it.
    pub fn check_fits(
        &self,
        mem_size: u64,
        vcpus: u8,
        device_types: &[u32],
    ) -> Result<(), SnapshotError> {
        if self.mem_size != mem_size {
            return Err(SnapshotError::Mismatch(format!(
                "guest memory {} MiB, the VM has {} MiB",
                self.mem_size >> 20,
                mem_size >> 20
            )));
        }
        if self.vcpus.len() != usize::from(vcpus) {
            return Err(SnapshotError::Mismatch(format!(
                "{} vCPUs, the VM has {vcpus}",
                self.vcpus.len()
            )));
        }
        let types: Vec<u32> = self.devices.iter().map(|d| d.device_type).collect();
        if types != device_types {
            return Err(SnapshotError::Mismatch(format!(
                "virtio devices {types:?}, the VM has {device_types:?}"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
