#!/usr/bin/env python3
"""Writes a reproducible initramfs (cpio "newc") from a spec on stdin.

Why our own writer and not GNU cpio: the image needs device nodes (/dev/console must
exist before /init runs) without needing root to create them, and every byte must be a
function of the inputs alone (fixed mtime, uid/gid 0, inode numbers by position, entries
in the order given). That is 40 lines, the same idea as the kernel's gen_init_cpio.

Spec lines:
  dir  PATH MODE
  file PATH MODE SOURCE
  nod  PATH MODE c|b MAJOR MINOR
  slink PATH MODE TARGET
"""
import os
import stat
import sys

MTIME = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))


def header(ino, mode, nlink, size, name, rmajor=0, rminor=0):
    fields = [ino, mode, 0, 0, nlink, MTIME, size, 0, 0, rmajor, rminor, len(name) + 1, 0]
    return b"070701" + b"".join(b"%08X" % f for f in fields)


def pad(n):
    return b"\0" * ((4 - n % 4) % 4)


def entry(out, ino, mode, name, data=b"", nlink=1, rdev=(0, 0)):
    h = header(ino, mode, nlink, len(data), name, *rdev)
    raw = h + name.encode() + b"\0"
    out.write(raw + pad(len(raw)))
    out.write(data + pad(len(data)))


def main():
    out = sys.stdout.buffer
    ino = 1
    for line in sys.stdin:
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        kind, path, mode = parts[0], parts[1].lstrip("/"), int(parts[2], 8)
        if kind == "dir":
            entry(out, ino, stat.S_IFDIR | mode, path, nlink=2)
        elif kind == "file":
            with open(parts[3], "rb") as f:
                entry(out, ino, stat.S_IFREG | mode, path, f.read())
        elif kind == "nod":
            t = stat.S_IFCHR if parts[3] == "c" else stat.S_IFBLK
            entry(out, ino, t | mode, path, rdev=(int(parts[4]), int(parts[5])))
        elif kind == "slink":
            entry(out, ino, stat.S_IFLNK | mode, path, parts[3].encode())
        else:
            sys.exit(f"mkcpio: unknown entry kind {kind!r}")
        ino += 1
    entry(out, 0, 0, "TRAILER!!!")


if __name__ == "__main__":
    main()
