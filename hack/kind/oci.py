#!/usr/bin/env python3
"""Assemble an OCI image archive from layer tarballs, without a daemon or a registry.

    python3 images/oci.py --name localhost/appliance-operator/worker:abc \
        --config config.json --layer rootfs.tar --layer deps.tar --output image.tar

``--config`` is the image's runtime config (the ``config`` object of an OCI image config:
User, Env, Entrypoint, Cmd, WorkingDir, Labels). Layers are uncompressed tarballs, stored as
they are (uncompressed OCI layers: nothing to gzip on build, nothing to gunzip on import); each
layer's sha256 is cached next to it as ``<layer>.sha256``.

The archive is an OCI image layout (``oci-layout``, ``index.json``, ``blobs/``) that
``ctr images import`` reads, plus a Docker ``manifest.json`` so ``docker load`` and
``kind load image-archive`` take the same file. ``--output -`` streams it to stdout (e.g. into
``ctr images import -``). Only the standard library is used.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import sys
import tarfile
from pathlib import Path
from typing import IO, Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
CHUNK = 1 << 20


def go_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le"}.get(
        machine, machine
    )


def layer_digest(path: Path) -> str:
    """sha256 of a layer file, cached in ``<path>.sha256`` (recomputed when the file is newer)."""
    sidecar = path.with_name(path.name + ".sha256")
    stat = path.stat()
    if sidecar.exists():
        cached = sidecar.read_text().split()
        if len(cached) == 3 and cached[1:] == [str(stat.st_size), str(stat.st_mtime_ns)]:
            return cached[0]
    sha = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
    digest = "sha256:" + sha.hexdigest()
    sidecar.write_text(f"{digest} {stat.st_size} {stat.st_mtime_ns}\n")
    return digest


def blob(data: bytes) -> tuple[str, bytes]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def build(
    name: str, runtime_config: dict[str, Any], layers: list[Path], history: list[str]
) -> tuple[list[tuple[str, Path]], list[tuple[str, bytes]]]:
    """Return (layer blobs as (digest, path), small blobs and files as (arcname, bytes))."""
    digests = [layer_digest(p) for p in layers]
    image_config = {
        "architecture": go_arch(),
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",  # reproducible: the same inputs give the same digest
        "config": runtime_config,
        "rootfs": {"type": "layers", "diff_ids": digests},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": h} for h in history],
    }
    config_digest, config_bytes = blob(canonical(image_config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": [
            {"mediaType": OCI_LAYER, "digest": d, "size": p.stat().st_size}
            for d, p in zip(digests, layers, strict=True)
        ],
    }
    manifest_digest, manifest_bytes = blob(canonical(manifest))
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest_bytes),
                "platform": {"architecture": go_arch(), "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": tag,
                },
            }
        ],
    }

    def path_of(digest: str) -> str:
        return "blobs/sha256/" + digest.split(":", 1)[1]

    docker_manifest = [
        {
            "Config": path_of(config_digest),
            "RepoTags": [name],
            "Layers": [path_of(d) for d in digests],
        }
    ]
    small = [
        ("oci-layout", canonical({"imageLayoutVersion": "1.0.0"})),
        (path_of(config_digest), config_bytes),
        (path_of(manifest_digest), manifest_bytes),
        ("index.json", canonical(index)),
        ("manifest.json", canonical(docker_manifest)),
    ]
    seen: set[str] = set()
    big = []
    for d, p in zip(digests, layers, strict=True):
        if d not in seen:  # the same layer twice in one image is stored once
            seen.add(d)
            big.append((path_of(d), p))
    return big, small


def write_archive(
    out: IO[bytes], big: list[tuple[str, Path]], small: list[tuple[str, bytes]]
) -> None:
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for dirname in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(dirname)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        for arcname, path in big:
            info = tarfile.TarInfo(arcname)
            info.size = path.stat().st_size
            info.mode = 0o644
            with path.open("rb") as f:
                tar.addfile(info, f)
        for arcname, data in small:
            info = tarfile.TarInfo(arcname)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="image reference, e.g. localhost/x/y:tag")
    parser.add_argument("--config", required=True, type=Path, help="runtime config JSON file")
    parser.add_argument("--layer", action="append", type=Path, default=[], help="layer tarball")
    parser.add_argument(
        "--history", action="append", default=[], help="one history line per layer (optional)"
    )
    parser.add_argument("--output", required=True, help="archive path, or - for stdout")
    parser.add_argument(
        "--skip-blobs",
        type=Path,
        help="file listing blob digests (one a line) to leave out of the archive: those the "
        "target store already has (a warm import then reads kilobytes, not the whole image)",
    )
    parser.add_argument(
        "--print-digest", action="store_true", help="print the manifest digest and exit"
    )
    args = parser.parse_args(argv)
    if not args.layer:
        parser.error("at least one --layer is needed")
    history = args.history or [f"layer {p.name}" for p in args.layer]
    if len(history) != len(args.layer):
        parser.error("give one --history per --layer, or none")
    for p in args.layer:
        if not p.is_file():
            parser.error(f"layer {p} does not exist")
    runtime_config = json.loads(args.config.read_text())
    big, small = build(args.name, runtime_config, args.layer, history)
    if args.skip_blobs:
        have = {
            line.split()[0] for line in args.skip_blobs.read_text().splitlines() if line.strip()
        }
        big = [(arc, p) for arc, p in big if "sha256:" + arc.rsplit("/", 1)[1] not in have]
    if args.print_digest:
        index = json.loads(dict(small)["index.json"])
        print(index["manifests"][0]["digest"])
        return 0
    if args.output == "-":
        write_archive(sys.stdout.buffer, big, small)
        sys.stdout.buffer.flush()
    else:
        tmp = f"{args.output}.partial.{os.getpid()}"
        with open(tmp, "wb") as f:
            write_archive(f, big, small)
        os.replace(tmp, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
