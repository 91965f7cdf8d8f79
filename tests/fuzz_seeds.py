#!/usr/bin/env python3
"""Writes the committed seed corpus of every fuzz target: <crate>/fuzz/seeds/<target>/*.

Each seed is a well-formed input of its target's format (see the target's doc comment), so
the fuzzer starts past the first checks: a virtqueue with a valid chain per device, a driver
bringing up the mmio transport, a vsock handshake, specs, protobuf requests, a state file,
port writes, a vm.json. Small (a few KiB each). Run from anywhere: tests/fuzz_seeds.py
"""
import json
import os
import shutil
import struct

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(crate, target, name, data):
    d = os.path.join(TOP, crate, "fuzz", "seeds", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def reset(crate):
    shutil.rmtree(os.path.join(TOP, crate, "fuzz", "seeds"), ignore_errors=True)


# --- virtqueues (vmm/fuzz/fuzz_targets/common.rs): byte 0 picks the size (1 << b % 9), the
# rest is guest memory from 0: descriptor table at 0, avail ring at 0x1000, used at 0x2000.
NEXT, WRITE = 1, 2


def ring_memory(descs, heads, bufs):
    """descs: (addr, len, flags, next); heads: avail ring entries; bufs: {addr: bytes}."""
    mem = bytearray(0x1000 + 4 + 2 * len(heads) + 2)
    for i, (addr, ln, flags, nxt) in enumerate(descs):
        struct.pack_into("<QIHH", mem, 16 * i, addr, ln, flags, nxt)
    for addr, b in bufs.items():
        assert addr + len(b) <= 0x1000 and addr >= 16 * len(descs)
        mem[addr:addr + len(b)] = b
    struct.pack_into("<HH", mem, 0x1000, 0, len(heads))
    for i, h in enumerate(heads):
        struct.pack_into("<H", mem, 0x1004 + 2 * i, h)
    return bytes(mem)


def queue_seed(size_byte, descs, heads, bufs, prefix=b""):
    return bytes([size_byte]) + prefix + ring_memory(descs, heads, bufs)


def vmm_seeds():
    reset("vmm")
    # virtio-blk: header (type, reserved, sector), data, status.
    for name, typ, data_flags in [("read", 0, WRITE), ("write", 1, 0), ("flush", 4, 0),
                                  ("get_id", 8, WRITE)]:
        descs = [(0x100, 16, NEXT, 1), (0x200, 512, NEXT | data_flags, 2), (0x400, 1, WRITE, 0)]
        if typ == 4:
            descs = [(0x100, 16, NEXT, 1), (0x400, 1, WRITE, 0)]
        hdr = struct.pack("<IIQ", typ, 0, 3)
        write("vmm", "blk_queue", name, queue_seed(2, descs, [0], {0x100: hdr, 0x200: b"d" * 512}))
    write("vmm", "blk_queue", "loop", queue_seed(2, [(0x100, 16, NEXT, 0)], [0], {}))

    # virtio-vsock: the TX queue (and RX, same rings) holds a header and a payload.
    def vhdr(op, ln=0, src_port=1024, dst_port=5000):
        return struct.pack("<QQIIIHHIII", 3, 2, src_port, dst_port, ln, 1, op, 0, 65536, 0)
    for name, op, payload in [("request", 1, b""), ("rw", 5, b"hello"), ("rst", 3, b""),
                              ("credit", 7, b""), ("shutdown", 4, b"")]:
        descs = [(0x100, 44, NEXT if payload else 0, 1)]
        if payload:
            descs.append((0x200, len(payload), 0, 0))
        write("vmm", "vsock_queue", name,
              queue_seed(2, descs, [0], {0x100: vhdr(op, len(payload)), 0x200: payload}))

    # virtio-net: byte 1 picks the features; a TX chain of virtio_net_hdr_v1 (12) + frame.
    frame = bytes(6 * [0xff]) + bytes([2, 0, 0, 0, 0, 2]) + b"\x08\x00" + b"\x45" + bytes(40)
    for feat in (0, 1):
        descs = [(0x100, 12, NEXT, 1), (0x200, len(frame), 0, 0)]
        mem = ring_memory(descs, [0], {0x100: bytes(12), 0x200: frame})
        write("vmm", "net_queue", f"tx{feat}", bytes([2, feat]) + mem)
    write("vmm", "net_queue", "rx", bytes([2, 1]) + ring_memory([(0x100, 1526, WRITE, 0)], [0], {}))

    # virtio-balloon: inflate PFNs, a free page report.
    pfns = struct.pack("<4I", 0x10, 0x11, 0x12, 0x30)
    write("vmm", "balloon_queue", "inflate", queue_seed(2, [(0x100, 16, 0, 0)], [0], {0x100: pfns}))
    write("vmm", "balloon_queue", "report",
          queue_seed(2, [(0x100000 - 0x1000, 0x1000, WRITE, 0)], [0], {}))

    # virtio-mmio: 7-byte ops (offset u16, op: width index | 4 for a write, value u32).
    def w(off, val):
        return struct.pack("<HBI", off, 2 | 4, val)

    def r(off):
        return struct.pack("<HBI", off, 2, 0)
    init = [r(0), r(4), r(8), w(0x70, 1), w(0x70, 3), w(0x14, 0), r(0x10), w(0x24, 0),
            w(0x20, 0), w(0x24, 1), w(0x20, 1), w(0x70, 11), r(0x70), w(0x30, 0), r(0x34),
            w(0x38, 8), w(0x80, 0), w(0x84, 0), w(0x90, 0x1000), w(0x94, 0), w(0xa0, 0x2000),
            w(0xa4, 0), w(0x44, 1), w(0x70, 15), w(0x50, 0), r(0x60), w(0x64, 1)]
    write("vmm", "mmio_transport", "init", b"".join(init))
    write("vmm", "mmio_transport", "reset", b"".join(init + [w(0x70, 0)] + init))
    write("vmm", "mmio_transport", "config", b"".join([r(0x100), r(0x104), w(0x100, 7)]))

    # vsock packets straight to the muxer: flags, header, payload (flags >> 4: 256-byte units).
    req = bytes([0xf1]) + vhdr(1) + b""
    rw = bytes([0x11]) + vhdr(5, 12) + b"CONNECT 5000"
    write("vmm", "vsock_packet", "connect", req + rw + bytes([0x01]) + vhdr(3))
    write("vmm", "vsock_packet", "refused", bytes([0x01]) + vhdr(1, dst_port=7))
    write("vmm", "vsock_packet", "credit", req + bytes([0x01]) + vhdr(7) + bytes([0x01]) + vhdr(4))

    # Port writes: (port selector, width | 4 for a write, value); 0x80 | n is 0x3f4 + n.
    def port(sel, write_, val=0):
        return bytes([sel, (4 if write_ else 0), val, 0])
    hello = b"".join(port(0x84, True, c) for c in b"Kernel panic - not syncing\n")
    write("vmm", "legacy_ports", "serial", hello)
    write("vmm", "legacy_ports", "dlab", b"".join([port(0x87, True, 0x80), port(0x84, True, 1),
                                                   port(0x85, True, 0), port(0x87, True, 3),
                                                   port(0x85, True, 0xf), port(0x89, False)]))
    write("vmm", "legacy_ports", "i8042", b"".join([port(6, False), port(6, True, 0xd1),
                                                    port(2, True, 0xfe), port(6, True, 0xfe)]))

    # A state file: version, sizes, the KVM state as (short, zero-filled) byte arrays.
    queue = {"size": 256, "ready": True, "desc": 0, "avail": 4096, "used": 8192, "used_idx": 0}
    dev = {"device_type": 2, "status": 15, "acked_features": 0, "device_features_sel": 0,
           "driver_features_sel": 0, "queue_sel": 0, "config_generation": 0,
           "interrupt_status": 0, "active": True, "queues": [queue]}
    vcpu = {k: [] for k in ["regs", "sregs", "xsave", "debugregs", "lapic", "mp_state", "events"]}
    vcpu.update(xcrs=None, msrs=[[16, 0]])
    serial = {"baud_divisor_low": 12, "baud_divisor_high": 0, "interrupt_enable": 0,
              "interrupt_identification": 1, "line_control": 3, "line_status": 0x60,
              "modem_control": 8, "modem_status": 0xb0, "scratch": 0, "in_buffer": []}
    state = {"version": 1, "mem_size": 1 << 20,
             "vm": {k: [] for k in ["pic_master", "pic_slave", "ioapic", "pit", "clock"]},
             "vcpus": [vcpu], "serial": serial, "devices": [dev]}
    write("vmm", "snapshot_state", "fits", json.dumps(state))
    inactive = dict(state, devices=[dict(dev, active=False, status=0)])
    write("vmm", "snapshot_state", "inactive", json.dumps(inactive))
    write("vmm", "snapshot_state", "version2", json.dumps({"version": 2}))

    # vm.json (byte 0 even) and kernel images (odd).
    cfg = {"kernel": "/k", "initrd": "/i", "cmdline": "console=ttyS0 reboot=k panic=1",
           "vcpus": 2, "mem_mib": 256, "vsock": {"guest_cid": 3, "socket": "/s"},
           "drives": [{"path": "/d", "read_only": True}]}
    write("vmm", "boot_loader", "config", b"\x00" + json.dumps(cfg).encode())
    ehdr = bytearray(64 + 56)
    ehdr[:16] = b"\x7fELF\x02\x01\x01" + bytes(9)
    struct.pack_into("<HHIQQQIHHHHHH", ehdr, 16, 2, 0x3e, 1, 0x1000000 // 16, 64, 0, 0, 64, 56,
                     1, 0, 0, 0)
    struct.pack_into("<IIQQQQQQ", ehdr, 64, 1, 5, 0, 0x100000, 0x100000, 16, 16, 0x1000)
    write("vmm", "boot_loader", "elf", b"\x01" + bytes(ehdr) + b"\xf4" * 16)
    bz = bytearray(0x400)
    bz[0x1f1] = 1  # setup_sects
    bz[0x1fe:0x200] = b"\x55\xaa"
    bz[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", bz, 0x206, 0x20f)
    bz[0x211] = 1  # loadflags: LOADED_HIGH
    write("vmm", "boot_loader", "bzimage", b"\x01" + bytes(bz) + b"\xf4" * 64)


# --- agent: protobuf wire format by hand.
def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7f
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(num, value):
    if isinstance(value, int):
        return varint(num << 3) + varint(value)
    if isinstance(value, str):
        value = value.encode()
    return varint(num << 3 | 2) + varint(len(value)) + value


SPEC = {
    "ociVersion": "1.0.2",
    "process": {"terminal": False, "user": {"uid": 0, "gid": 0}, "args": ["sh"],
                "env": ["PATH=/bin"], "cwd": "/",
                "capabilities": {"bounding": ["CAP_CHOWN"], "effective": ["CAP_CHOWN"],
                                 "permitted": ["CAP_CHOWN"]},
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]},
    "root": {"path": "rootfs", "readonly": True},
    "hostname": "c1",
    "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
               {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "mode=755"]},
               {"destination": "/data", "type": "bind", "source": "/srv/data",
                "options": ["rbind", "ro"]},
               {"destination": "/etc/resolv.conf", "type": "bind", "source": "/r/resolv.conf",
                "options": ["bind"]}],
    "annotations": {"io.kubernetes.cri.container-type": "container",
                    "io.kubernetes.cri.sandbox-id": "p1",
                    "io.kubernetes.cri.sandbox-memory": "268435456"},
    "linux": {"namespaces": [{"type": "pid", "path": "/proc/42/ns/pid"}, {"type": "mount"},
                             {"type": "network", "path": "/var/run/netns/cni-1"},
                             {"type": "ipc", "path": "/proc/42/ns/ipc"}, {"type": "uts"}],
              "resources": {"memory": {"limit": 536870912},
                            "cpu": {"quota": 150000, "period": 100000, "shares": 512},
                            "pids": {"limit": 100}},
              "seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"],
                          "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
                                       {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                                        "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}]},
              "maskedPaths": ["/proc/kcore"], "readonlyPaths": ["/proc/sys"]},
}


def agent_seeds():
    reset("agent")
    spec = json.dumps(SPEC)
    write("agent", "oci_spec", "spec", spec)
    write("agent", "oci_spec", "resources", json.dumps(SPEC["linux"]["resources"]))
    write("agent", "oci_spec", "minimal", json.dumps({"ociVersion": "1.0.2", "root": {"path": "r"}}))
    # protocol_decode: byte 0 picks the message (see the target).
    write("agent", "protocol_decode", "create_container",
          b"\x01" + field(1, "c1") + field(2, spec))
    write("agent", "protocol_decode", "exec",
          b"\x04" + field(1, "c1") + field(2, "e1") + field(3, json.dumps(SPEC["process"])))
    write("agent", "protocol_decode", "signal", b"\x05" + field(1, "c1") + field(3, 9))
    write("agent", "protocol_decode", "sandbox", b"\x00" + field(1, "pod") + field(6, bytes(32)))
    # ConfigureNetworkRequest: interfaces { mac, mtu, addresses, routes }, dns, dns_search.
    write("agent", "network_config", "empty", b"")
    iface = field(1, "02:68:75:73:6b:01") + field(2, 1500) + \
        field(3, field(1, "10.0.0.2") + field(2, 24)) + field(3, field(1, "fd00::2") + field(2, 64)) + \
        field(4, field(1, "0.0.0.0") + field(2, 0) + field(3, "10.0.0.1")) + \
        field(4, field(1, "10.1.0.0") + field(2, 16))
    write("agent", "network_config", "eth0", field(1, iface) + field(2, "10.0.0.1") + field(3, "svc.local"))

def shim_seeds():
    reset("shim")
    write("shim", "shim_spec", "member", json.dumps(SPEC))
    sandbox = json.loads(json.dumps(SPEC))
    sandbox["annotations"] = {"io.kubernetes.cri.container-type": "sandbox",
                              "io.kubernetes.cri.sandbox-id": "p1",
                              "io.kubernetes.cri.sandbox-cpu-quota": "250000",
                              "io.kubernetes.cri.sandbox-cpu-period": "100000"}
    sandbox["linux"]["namespaces"] = [{"type": "network", "path": "/var/run/netns/cni-1"},
                                      {"type": "mount"}, {"type": "uts"}]
    write("shim", "shim_spec", "sandbox_hostpid", json.dumps(sandbox))
    write("shim", "shim_spec", "single", json.dumps({"root": {"path": "rootfs"}, "mounts": [
        {"destination": "/x", "type": "none", "source": "rel/path", "options": ["bind"]}]}))


if __name__ == "__main__":
    vmm_seeds()
    agent_seeds()
    shim_seeds()
