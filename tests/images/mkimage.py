#!/usr/bin/env python3
"""Builds a small OCI image from Debian's busybox-static, as an OCI-layout tar.

Tests import the tar into containerd (`<data-dir>/agent/images/*.tar`) or push it into a local
registry with skopeo. No registry on the internet is needed.

    mkimage.py --name docker.io/library/busybox:1.36 --out busybox.tar [--cmd sh -c 'echo hi']
"""
import argparse, gzip, hashlib, io, json, os, platform, subprocess, tarfile, time

ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(platform.machine(), platform.machine())


def add_bytes(tar, name, data, mode=0o644):
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    tar.addfile(info, io.BytesIO(data))


def add_dir(tar, name, mode=0o755):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, 0
    tar.addfile(info)


def rootfs_tar(busybox):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ["bin", "etc", "tmp", "var", "var/www", "proc", "sys", "dev", "root", "home", "usr", "usr/bin"]:
            add_dir(tar, d, 0o1777 if d == "tmp" else 0o755)
        with open(busybox, "rb") as f:
            add_bytes(tar, "bin/busybox", f.read(), 0o755)
        applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
        for a in sorted(set(applets)):
            if a == "busybox":
                continue
            info = tarfile.TarInfo("bin/" + a)
            info.type, info.linkname, info.mode, info.mtime = tarfile.SYMTYPE, "busybox", 0o777, 0
            tar.addfile(info)
        add_bytes(tar, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n")
        add_bytes(tar, "etc/group", b"root:x:0:\nnogroup:x:65534:\n")
        add_bytes(tar, "var/www/index.html", b"hello from skiff\n")
    return buf.getvalue()


def blob(out, data):
    digest = hashlib.sha256(data).hexdigest()
    add_bytes(out, "blobs/sha256/" + digest, data)
    return {"digest": "sha256:" + digest, "size": len(data)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--name", required=True, help="fully qualified image name, e.g. docker.io/library/busybox:1.36")
    p.add_argument("--out", required=True)
    p.add_argument("--busybox", default="/bin/busybox")
    p.add_argument("--cmd", nargs=argparse.REMAINDER, default=["sh"])
    a = p.parse_args()

    layer = rootfs_tar(a.busybox)
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    gz = gzip.compress(layer, mtime=0)
    config = {
        "architecture": ARCH,
        "os": "linux",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(0)),
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": a.cmd or ["sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    tag = a.name.rsplit(":", 1)[1] if ":" in a.name.rsplit("/", 1)[-1] else "latest"
    with tarfile.open(a.out, "w") as out:
        add_bytes(out, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        cfg = blob(out, json.dumps(config, sort_keys=True).encode())
        lay = blob(out, gz)
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **cfg},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **lay}],
        }
        man = blob(out, json.dumps(manifest, sort_keys=True).encode())
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json", **man,
                "platform": {"architecture": ARCH, "os": "linux"},
                "annotations": {"io.containerd.image.name": a.name, "org.opencontainers.image.ref.name": tag},
            }],
        }
        add_bytes(out, "index.json", json.dumps(index, sort_keys=True).encode())


if __name__ == "__main__":
    main()
