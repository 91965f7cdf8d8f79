//! VM templates: a snapshot of a booted VM, made once per VM shape, that later pods'
//! VMs are restored from instead of booting the kernel and the agent again.
//!
//! A template is `<template_dir>/<key>/` holding husk-vmm's snapshot ([`STATE_FILE`],
//! [`RAM_FILE`]). The key is a hash of everything that shapes the guest: the vm.json fields
//! a restore must match (kernel, initrd, command line, vCPUs, memory, guest CID, virtio-fs
//! tags, free page reporting) and the identity (length, mtime, inode) of the kernel, the
//! initrd and the vmm binary (the snapshot format is the binary's). Host socket paths are
//! not in it: a restored VM gets its pod's own.
//!
//! The first pod of a shape makes the template ([`ensure`]): under an exclusive `flock` on
//! `<key>.lock` (pods starting together wait for it rather than make it five times) it
//! boots a VM with an empty virtio-fs share and `snapshot_to`; husk-vmm writes the snapshot
//! when the agent says it serves and exits, and the snapshot is renamed into place. Any
//! failure is a warning and the pod boots as before: a template problem never fails a pod.
//! A failure is remembered for [`RETRY_AFTER`] (`<key>.failed`), so a vmm that cannot make
//! templates costs one try a minute rather than one per pod.
//!
//! A restored guest is its template's memory image: the shim's CreateSandbox carries the
//! host's time and fresh entropy, which the agent applies (clock, RNG reseed) before any
//! container runs.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::process::Child;

use crate::config::Config;
use crate::vm::VmRequest;

/// The snapshot's vCPU and device state; written last by husk-vmm, so its presence marks
/// a whole snapshot.
pub const STATE_FILE: &str = "state.json";
/// The snapshot's guest RAM (sparse).
pub const RAM_FILE: &str = "ram";
/// How long a failed template is not tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(60);
/// Hex digits of the key: 128 bits of SHA-256, short enough to keep the socket paths of a
/// template being made under the 107 bytes a unix socket path may have.
const KEY_HEX_DIGITS: usize = 32;
/// Bumped when what a key covers changes.
const KEY_VERSION: u32 = 2;

/// A complete template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub key: String,
    /// The snapshot directory (husk-vmm's `restore_from`).
    pub dir: PathBuf,
}

/// Whether a pod's VM may come from a template. A pod with a network namespace (a CRI
/// pod) gets one made with as many NICs: detached ones (no tap) with the template MACs
/// ([`husk_protocol::template_mac`]), which ConfigureNetwork replaces by the pod's.
pub fn applies(cfg: &Config, _req: &VmRequest) -> bool {
    cfg.vm_template
}

/// What identifies a file's contents without reading it: replaced or rewritten, one of
/// these changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    pub len: u64,
    pub mtime_ns: i128,
    pub ino: u64,
}

impl FileId {
    pub fn of(path: &Path) -> std::io::Result<FileId> {
        let m = std::fs::metadata(path)?;
        Ok(FileId {
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ino: m.ino(),
        })
    }
}

/// The template key of a pod's vm.json (`vm`) run by the vmm binary `vmm`.
pub fn key(vm: &Value, vmm: &Path) -> Result<String, String> {
    let id =
        |field: &str, p: &Path| FileId::of(p).map_err(|e| format!("{field} {}: {e}", p.display()));
    let files = [
        id("kernel", Path::new(str_field(vm, "kernel")?))?,
        id("initrd", Path::new(str_field(vm, "initrd")?))?,
        id("vmm", vmm)?,
    ];
    key_from(vm, &files)
}

fn str_field<'a>(vm: &'a Value, field: &str) -> Result<&'a str, String> {
    vm[field]
        .as_str()
        .ok_or_else(|| format!("vm.json has no {field}"))
}

/// The key of `vm` with `files` the identities of its kernel, its initrd and the vmm.
/// SHA-256 of a text written field by field (not `serde_json`'s map order, not std's
/// `DefaultHasher`, which is not stable across builds).
pub fn key_from(vm: &Value, files: &[FileId; 3]) -> Result<String, String> {
    let num = |v: &Value, what: &str| {
        v.as_u64()
            .ok_or_else(|| format!("vm.json has no numeric {what}"))
    };
    let tags: Vec<&str> = vm["fs"]
        .as_array()
        .map(|a| a.iter().filter_map(|f| f["tag"].as_str()).collect())
        .unwrap_or_default();
    let mut text = format!(
        "husk-template {KEY_VERSION}\nkernel {:?}\ninitrd {:?}\ncmdline {:?}\nvcpus {}\n\
         mem_mib {}\nguest_cid {}\nfs {:?}\nfree_page_reporting {}\nnics {}\n",
        str_field(vm, "kernel")?,
        str_field(vm, "initrd")?,
        str_field(vm, "cmdline")?,
        num(&vm["vcpus"], "vcpus")?,
        num(&vm["mem_mib"], "mem_mib")?,
        num(&vm["vsock"]["guest_cid"], "guest_cid")?,
        tags,
        vm["free_page_reporting"].as_bool().unwrap_or(false),
        vm["net"].as_array().map_or(0, Vec::len),
    );
    for (name, f) in ["kernel", "initrd", "vmm"].iter().zip(files) {
        text.push_str(&format!("{name}-file {} {} {}\n", f.len, f.mtime_ns, f.ino));
    }
    let digest = Sha256::digest(text.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok(hex[..KEY_HEX_DIGITS].to_string())
}

fn complete(dir: &Path) -> bool {
    dir.join(STATE_FILE).is_file() && dir.join(RAM_FILE).is_file()
}

fn failed_marker(cfg: &Config, key: &str) -> PathBuf {
    cfg.template_dir.join(format!("{key}.failed"))
}

/// How long ago the template last failed, when that is less than [`RETRY_AFTER`].
fn failed_recently(marker: &Path) -> Option<Duration> {
    let m = std::fs::metadata(marker).ok()?;
    let age = SystemTime::now()
        .duration_since(m.modified().ok()?)
        .unwrap_or_default();
    (age < RETRY_AFTER).then_some(age)
}

fn remember_failure(cfg: &Config, key: &str, why: &str) {
    let _ = std::fs::write(failed_marker(cfg, key), format!("{why}\n"));
}

/// The template for a pod whose vm.json is `vm`, made first if there is none. None (with
/// a warning when something failed) means: boot the VM.
pub async fn ensure(cfg: &Config, vm: &Value) -> Option<Template> {
    let key = match key(vm, &cfg.vmm) {
        Ok(k) => k,
        Err(e) => {
            log::warn!("no VM template: {e}");
            return None;
        }
    };
    let dir = cfg.template_dir.join(&key);
    if complete(&dir) {
        mark_used(&dir);
        return Some(Template { key, dir });
    }
    if let Err(e) = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&cfg.template_dir)
    {
        log::warn!("no VM template: {}: {e}", cfg.template_dir.display());
        return None;
    }
    let lock_path = cfg.template_dir.join(format!("{key}.lock"));
    // Five pods may start at once: one makes the template, the others wait for it.
    let lock = tokio::task::spawn_blocking(move || lock_exclusive(&lock_path)).await;
    let _lock = match lock {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => {
            log::warn!("no VM template: locking {key}: {e}");
            return None;
        }
        Err(e) => {
            log::warn!("no VM template: locking {key}: {e}");
            return None;
        }
    };
    if complete(&dir) {
        mark_used(&dir);
        return Some(Template { key, dir });
    }
    if let Some(age) = failed_recently(&failed_marker(cfg, &key)) {
        log::info!(
            "template {key} failed {} s ago; not trying again before {} s",
            age.as_secs(),
            RETRY_AFTER.as_secs()
        );
        return None;
    }
    let started = Instant::now();
    match create(cfg, &key, vm).await {
        Ok(()) => {
            let _ = std::fs::remove_file(failed_marker(cfg, &key));
            evict(cfg, &key);
            log::info!(
                "template {key} made in {} ms",
                started.elapsed().as_millis()
            );
            Some(Template { key, dir })
        }
        Err(e) => {
            log::warn!("template {key} could not be made, booting the VM instead: {e}");
            remember_failure(cfg, &key, &e);
            None
        }
    }
}

/// Notes that a template was used (its directory's mtime: the order [`evict`] follows).
fn mark_used(dir: &Path) {
    if let Ok(f) = File::open(dir) {
        let _ = f.set_modified(SystemTime::now());
    }
}

/// Keeps at most `max_templates` templates: the least recently used beyond that go (each
/// holds its guest RAM in `template_dir`). `keep` (just made) stays. A pod about to be
/// restored from one that goes either has its files open already (they stay readable) or
/// finds it missing, and its VM then boots (see `discard`'s caller).
fn evict(cfg: &Config, keep: &str) {
    let Ok(entries) = std::fs::read_dir(&cfg.template_dir) else {
        return;
    };
    let mut found: Vec<(SystemTime, String)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let is_key =
                name.len() == KEY_HEX_DIGITS && name.chars().all(|c| c.is_ascii_hexdigit());
            (is_key && name != keep && complete(&e.path()))
                .then(|| Some((e.metadata().ok()?.modified().ok()?, name)))
                .flatten()
        })
        .collect();
    let max = usize::try_from(cfg.max_templates).unwrap_or(usize::MAX);
    if found.len() < max {
        return;
    }
    found.sort();
    for (_, key) in &found[..found.len() + 1 - max] {
        let dir = cfg.template_dir.join(key);
        // Renamed first, so no pod finds half of it.
        let gone = cfg
            .template_dir
            .join(format!("{key}.evicted-{}", std::process::id()));
        match std::fs::rename(&dir, &gone).and_then(|()| std::fs::remove_dir_all(&gone)) {
            Ok(()) => log::info!("template {key} removed: more than {max} templates"),
            Err(e) => log::warn!("removing template {}: {e}", dir.display()),
        }
    }
}

fn lock_exclusive(path: &Path) -> std::io::Result<nix::fcntl::Flock<File>> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| std::io::Error::from(e))
}

/// Removes a template a VM could not be restored from (stale or corrupt), and keeps it
/// from being made again for [`RETRY_AFTER`].
pub fn discard(cfg: &Config, t: &Template, why: &str) {
    // Renamed first, so no pod finds half of it.
    let gone = cfg
        .template_dir
        .join(format!("{}.stale-{}", t.key, std::process::id()));
    match std::fs::rename(&t.dir, &gone) {
        // Evicted meanwhile (see `evict`): not the template's fault.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => log::warn!("removing template {}: {e}", t.dir.display()),
        Ok(()) => {
            if let Err(e) = std::fs::remove_dir_all(&gone) {
                log::warn!("removing template {}: {e}", gone.display());
            }
        }
    }
    remember_failure(cfg, &t.key, &format!("a VM restored from it failed: {why}"));
}

/// Makes the template `key` from the pod's vm.json `vm` in `<key>.tmp`, then renames its
/// snapshot to `<key>`. The temporary directory goes, whatever happens.
async fn create(cfg: &Config, key: &str, vm: &Value) -> Result<(), String> {
    let tmp = cfg.template_dir.join(format!("{key}.tmp"));
    // A maker that was killed may have left one (we hold the lock: nobody uses it).
    remove_tmp(&tmp);
    std::fs::create_dir_all(tmp.join("share"))
        .map_err(|e| format!("creating {}: {e}", tmp.display()))?;
    let mut virtiofsd = None;
    let ram = cfg.huge_pages.then(|| crate::ram::prepare(&tmp)).flatten();
    let made = make(cfg, key, vm, &tmp, ram.as_deref(), &mut virtiofsd).await;
    if let Some(mut v) = virtiofsd {
        let _ = v.start_kill();
        let _ = v.wait().await;
    }
    if let Some(r) = &ram {
        if let Err(e) = nix::mount::umount2(r.as_path(), nix::mount::MntFlags::MNT_DETACH) {
            log::warn!("unmounting {}: {e}", r.display());
        }
    }
    remove_tmp(&tmp);
    made
}

fn remove_tmp(tmp: &Path) {
    let _ = nix::mount::umount2(
        &tmp.join(crate::ram::RAM_DIR),
        nix::mount::MntFlags::MNT_DETACH,
    );
    match std::fs::remove_dir_all(tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            log::warn!("removing {}: {e}", tmp.display());
        }
        _ => {}
    }
}

/// The template's vm.json: the pod's, with its own sockets in `tmp`, no pod's console,
/// and `snapshot_to`.
pub fn template_config(
    cfg: &Config,
    key: &str,
    vm: &Value,
    tmp: &Path,
    mem_dir: Option<&Path>,
) -> Value {
    let mut t = vm.clone();
    if let Some(o) = t.as_object_mut() {
        for k in ["net", "restore_from", "mem_dir"] {
            o.remove(k);
        }
    }
    // The pod's NICs, detached (the template VM has no tap) and with the template MACs.
    let nics = vm["net"].as_array().map_or(0, Vec::len);
    if nics > 0 {
        t["net"] = (0..nics)
            .map(|i| {
                let i = u8::try_from(i).unwrap_or(u8::MAX);
                json!({ "detached": true, "mac": husk_protocol::template_mac_string(i) })
            })
            .collect();
    }
    t["vsock"]["socket"] = json!(tmp.join("vsock.sock"));
    if let Some(fs) = t["fs"].as_array_mut() {
        for f in fs {
            f["socket"] = json!(tmp.join("virtiofsd.sock"));
        }
    }
    t["serial"] = if cfg.debug_console {
        json!({ "file": cfg.template_dir.join(format!("{key}.console.log")) })
    } else {
        json!("none")
    };
    if let Some(d) = mem_dir {
        t["mem_dir"] = json!(d);
    }
    t["snapshot_to"] = json!(tmp.join("snap"));
    t
}

async fn make(
    cfg: &Config,
    key: &str,
    vm: &Value,
    tmp: &Path,
    mem_dir: Option<&Path>,
    virtiofsd: &mut Option<Child>,
) -> Result<(), String> {
    if vm["fs"].as_array().map_or(0, Vec::len) > 1 {
        return Err("more than one virtio-fs device".into());
    }
    let timeout = Duration::from_secs(cfg.boot_timeout_secs);
    let deadline = Instant::now() + timeout;
    let fs_sock = tmp.join("virtiofsd.sock");
    let fs_log = tmp.join("virtiofsd.log");
    let args = crate::vmm::virtiofsd_args(&fs_sock, &tmp.join("share"), cfg.virtio_fs_cache);
    let v = virtiofsd.insert(spawn(&cfg.virtiofsd, &args, &fs_log)?);
    while !fs_sock.exists() {
        let ended = v.try_wait().ok().flatten().is_some();
        if ended || Instant::now() > deadline {
            return Err(format!(
                "virtiofsd did not create {}; its log ends: {}",
                fs_sock.display(),
                crate::vmm::log_tail(&fs_log)
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let config_path = tmp.join("vm.json");
    let config = template_config(cfg, key, vm, tmp, mem_dir);
    std::fs::write(&config_path, config.to_string())
        .map_err(|e| format!("writing {}: {e}", config_path.display()))?;
    let vmm_log = tmp.join("vmm.log");
    let args = [
        "run".to_string(),
        "--config".into(),
        config_path.display().to_string(),
    ];
    let mut vmm = spawn(&cfg.vmm, &args, &vmm_log)?;
    let left = deadline.saturating_duration_since(Instant::now());
    let status = match tokio::time::timeout(left, vmm.wait()).await {
        Ok(s) => s.map_err(|e| format!("waiting for husk-vmm: {e}"))?,
        Err(_) => {
            let _ = vmm.start_kill();
            let _ = vmm.wait().await;
            return Err(format!(
                "husk-vmm wrote no snapshot within {} s; its log ends: {}",
                timeout.as_secs(),
                crate::vmm::log_tail(&vmm_log)
            ));
        }
    };
    let snap = tmp.join("snap");
    if !status.success() || !complete(&snap) {
        return Err(format!(
            "husk-vmm {} ({}a snapshot); its log ends: {}",
            crate::vmm::describe(status),
            if complete(&snap) { "" } else { "without " },
            crate::vmm::log_tail(&vmm_log)
        ));
    }
    let dir = cfg.template_dir.join(key);
    // An incomplete one (we hold the lock and found none complete) is in the way.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&snap, &dir)
        .map_err(|e| format!("renaming the snapshot to {}: {e}", dir.display()))
}

/// [`crate::vmm::spawn_logged`], outside any network namespace (a template VM's NICs are
/// detached), its error as text.
fn spawn(program: &Path, args: &[String], log: &Path) -> Result<Child, String> {
    crate::vmm::spawn_logged(program, args, log, None).map_err(|e| e.to_string())
}

#[cfg(test)]
#[path = "template_tests.rs"]
mod tests;
