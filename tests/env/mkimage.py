#!/usr/bin/env python3
"""Write a container image as a `docker save` archive from plain directories, without a daemon.

    mkimage.py OUT.tar --tag localhost/x/y:dev --layer DIR [--layer DIR ...]
               [--user 65532:65532] [--entrypoint JSON] [--cmd JSON] [--env K=V ...]
               [--expose 8000 ...] [--chown PATH=UID:GID ...]

Each DIR becomes one layer, its tree taken as it is (modes and symlinks kept). Every entry is owned
by 0:0 unless a --chown names its path inside the image; mtimes are 0, so the same input gives the
same layer digest and containerd stores a layer shared by several images once. The archive is what
`ctr images import` (and `docker load`, `podman load`) read.
"""

import argparse
import hashlib
import io
import json
import os
import sys
import tarfile
import tempfile


def layer(root, chown, out):
    """Write DIR as an uncompressed tar to the open file OUT; returns its sha256 hex digest."""
    digest = hashlib.sha256()

    class Hashing(io.RawIOBase):
        def writable(self):
            return True

        def write(self, b):
            digest.update(b)
            return out.write(b)

    with tarfile.open(fileobj=Hashing(), mode="w|", format=tarfile.PAX_FORMAT) as tar:
        paths = []
        for base, dirs, files in os.walk(root):
            dirs.sort()
            for name in sorted(dirs) + sorted(files):
                paths.append(os.path.join(base, name))
        for path in sorted(paths, key=lambda p: os.path.relpath(p, root).split(os.sep)):
            rel = os.path.relpath(path, root)
            info = tar.gettarinfo(path, arcname=rel)
            uid, gid = chown.get("/" + rel, (0, 0))
            info.uid, info.gid, info.uname, info.gname, info.mtime = uid, gid, "", "", 0
            info.pax_headers = {}
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return digest.hexdigest()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out")
    p.add_argument("--tag", required=True)
    p.add_argument("--layer", action="append", required=True)
    p.add_argument("--user", default="")
    p.add_argument("--entrypoint", type=json.loads, default=None)
    p.add_argument("--cmd", type=json.loads, default=None)
    p.add_argument("--env", action="append", default=[])
    p.add_argument("--expose", action="append", default=[])
    p.add_argument("--chown", action="append", default=[])
    a = p.parse_args()

    chown = {}
    for c in a.chown:
        path, ids = c.split("=", 1)
        uid, gid = ids.split(":", 1)
        chown[path.rstrip("/")] = (int(uid), int(gid))

    with tempfile.TemporaryDirectory() as tmp:
        names, diff_ids = [], []
        for i, d in enumerate(a.layer):
            if not os.path.isdir(d):
                sys.exit(f"mkimage: layer {d} is not a directory")
            path = os.path.join(tmp, f"{i}.tar")
            with open(path, "wb") as f:
                hexd = layer(d, chown, f)
            names.append((path, f"{hexd}/layer.tar"))
            diff_ids.append(f"sha256:{hexd}")
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
        for e in a.env:
            k, v = e.split("=", 1)
            env[k] = v
        config = {
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "User": a.user,
                "Env": [f"{k}={v}" for k, v in env.items()],
                "Entrypoint": a.entrypoint,
                "Cmd": a.cmd,
                "WorkingDir": "/",
                "ExposedPorts": {f"{port}/tcp": {} for port in a.expose},
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created_by": "tests/env/mkimage.py"} for _ in diff_ids],
        }
        blob = json.dumps(config, sort_keys=True).encode()
        config_name = hashlib.sha256(blob).hexdigest() + ".json"
        manifest = [{"Config": config_name, "RepoTags": [a.tag], "Layers": [n for _, n in names]}]
        with tarfile.open(a.out, "w") as tar:
            for path, name in names:
                tar.add(path, arcname=name)
            for name, data in [(config_name, blob), ("manifest.json", json.dumps(manifest).encode())]:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


if __name__ == "__main__":
    main()
