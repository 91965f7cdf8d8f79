#!/usr/bin/env python3
"""Builds a busybox container image offline, as an OCI image archive for `ctr image import`.

The image is Debian's static busybox (apt: busybox-static) with its applet links, /etc
passwd/group for root and nobody, and the usual empty directories. Reproducible: fixed
mtimes, owners and entry order, so the same busybox gives the same image digest.

usage: busybox-oci.py OUT.tar [IMAGE_NAME [CMD...]]

CMD (default `sh`) is the image's command: a pod sandbox (pause) image is built with
`sleep 2147483647`.
"""
import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile

BUSYBOX = "/bin/busybox"
MTIME = 0


def add(tar, name, data=None, mode=0o644, kind=tarfile.REGTYPE, link=""):
    info = tarfile.TarInfo(name)
    info.mtime, info.uid, info.gid, info.uname, info.gname = MTIME, 0, 0, "root", "root"
    info.type, info.mode, info.linkname = kind, mode, link
    if data is not None:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        tar.addfile(info)


def layer():
    applets = subprocess.run([BUSYBOX, "--list-full"], check=True, capture_output=True, text=True).stdout.split()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = {"bin", "dev", "etc", "home", "proc", "root", "sys", "tmp", "usr", "usr/bin", "usr/sbin", "sbin", "var", "var/tmp"}
        for d in sorted(dirs):
            add(tar, d, kind=tarfile.DIRTYPE, mode=0o1777 if d.endswith("tmp") else 0o755)
        with open(BUSYBOX, "rb") as f:
            add(tar, "bin/busybox", f.read(), mode=0o755)
        for a in sorted(set(applets)):
            if a != "bin/busybox" and a.split("/")[0] in ("bin", "sbin", "usr"):
                add(tar, a, kind=tarfile.SYMTYPE, link="/bin/busybox", mode=0o777)
        add(tar, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
        add(tar, "etc/group", b"root:x:0:\nnogroup:x:65534:\n")
    diff = raw.getvalue()
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0) as g:
        g.write(diff)
    return diff, gz.getvalue()


def blob(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def main():
    out = sys.argv[1]
    name = sys.argv[2] if len(sys.argv) > 2 else "docker.io/library/busybox:husk"
    cmd = sys.argv[3:] or ["sh"]
    diff, gz = layer()
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": cmd, "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [blob(diff)]},
        "history": [{"created_by": "husk tests/images/busybox-oci.py"}],
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blob(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": blob(gz), "size": len(gz)}],
    }, sort_keys=True).encode()
    index = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": blob(manifest), "size": len(manifest),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1]},
        }],
    }, sort_keys=True).encode()
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        add(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add(tar, "index.json", index)
        add(tar, "blobs", kind=tarfile.DIRTYPE, mode=0o755)
        add(tar, "blobs/sha256", kind=tarfile.DIRTYPE, mode=0o755)
        for data in (config, manifest, gz):
            add(tar, "blobs/sha256/" + blob(data)[7:], data)
    print(f"image {name}: {out} ({len(gz)} bytes compressed layer, manifest {blob(manifest)[:19]})", file=sys.stderr)


if __name__ == "__main__":
    main()
