"""The cluster's images: built with podman in a store of our own (the Debian base with mmdebstrap), labelled with
a digest of their inputs so that an unchanged image is not built again, saved as archives in the cache and
imported into containerd (namespace k8s.io)."""
from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

import k8s_local_layout as L
from k8s_local_client import ctr
from k8s_local_install import cache_lock, install_packages, run_logged
from local_common import REPO, Fail, cache_root, info, kafka_version, project_version, run

IMAGES = REPO / "k8s" / "images"
BASE_PACKAGES = ["ca-certificates", "passwd"]
MMDEBSTRAP_ARGS = ["--variant=minbase", "--dpkgopt=path-exclude=/usr/share/man/*",
                   "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-include=/usr/share/doc/*/copyright",
                   "--dpkgopt=path-exclude=/usr/share/locale/*"]
LOADED = ("pause", "kchat", "kafka")  # what containerd gets; debian and python are only bases
BASE_OF = {"python": "debian", "kchat": "python", "kafka": "debian"}


def images_dir():
    return cache_root() / "k8s-images"


def archive(name):
    return images_dir() / f"{name}.tar"


def podman(*args):
    store = images_dir() / "podman"
    # runc and cgroupfs: crun and systemd do not work on this cgroup layout; events to a file (no journald)
    return ["podman", "--root", str(store / "storage"), "--runroot", str(store / "run"), "--storage-driver",
            "overlay", "--cgroup-manager", "cgroupfs", "--events-backend", "file", "--runtime", "/usr/bin/runc",
            *map(str, args)]


def apt_sources():
    """The host's own Debian sources: the images' packages come from where the host's come from."""
    for f in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")):
        if f.is_file() and f.read_text().strip():
            return f
    raise Fail("no /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list to build the base image from")


def digest(*parts):
    """A short digest of strings and files (a folder: every file in it, by path and content)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            files = sorted(f for f in part.rglob("*") if f.is_file() and "__pycache__" not in f.parts) \
                if part.is_dir() else [part]
            for f in files:
                h.update(str(f.relative_to(REPO) if f.is_relative_to(REPO) else f.name).encode())
                h.update(f.read_bytes() if f.stat().st_size < 1 << 20 else f"{f.stat().st_size}".encode())
        else:
            h.update(str(part).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def image_specs():
    """name -> (kind, reference, inputs key), in build order (a base before the images on it)."""
    debian = digest("debian", apt_sources(), *BASE_PACKAGES, *MMDEBSTRAP_ARGS)
    python = digest(debian, IMAGES / "python")
    return {
        "pause": ("pause", L.PAUSE_IMAGE, digest(IMAGES / "pause")),
        "debian": ("debian", "localhost/kchat-debian:bookworm", debian),
        "python": ("python", "localhost/kchat-python:3.11-bookworm", python),
        "kchat": ("kchat", f"docker.io/library/kchat-faust:{project_version()}",
                  digest(python, REPO / "Dockerfile", REPO / ".dockerignore", REPO / "pyproject.toml",
                         REPO / "README.md", REPO / "kchat_faust", REPO / "cli")),
        "kafka": ("kafka", f"docker.io/library/kchat-kafka:{kafka_version()}",
                  digest(debian, IMAGES / "kafka", REPO / "scripts" / "kafka-log4j2.properties",
                         REPO / "kafka" / "pom.xml")),
    }


def image_key(ref):
    cp = run(podman("image", "inspect", "--format", '{{index .Labels "io.kchat.inputs"}}', ref), check=False)
    return cp.stdout.strip() if cp.returncode == 0 else None


def build_image(name, ref, key, log):
    specs = image_specs()
    common = ["build", "--pull=never", "--network=host", "--ulimit=nofile=10000:10000", "--ulimit=nproc=4096:4096",
              "--label", f"io.kchat.inputs={key}", "-t", ref]
    work = images_dir() / f"context-{name}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        if name == "pause":
            shutil.copy(IMAGES / "pause" / "Containerfile", work / "Containerfile")
            run_logged(["gcc", "-static", "-Os", "-s", "-o", work / "pause", IMAGES / "pause" / "pause.c"], log, 120,
                       "compiling pause.c")
            run_logged(podman(*common, "-f", work / "Containerfile", work), log, 300, "building the pause image")
        elif name == "debian":
            rootfs = work / "rootfs.tar"
            run_logged(["mmdebstrap", *MMDEBSTRAP_ARGS, f"--include={','.join(BASE_PACKAGES)}", "bookworm", rootfs,
                        apt_sources()], log, 1200, "mmdebstrap of the Debian base")
            run_logged(podman("import", "--change", f"LABEL io.kchat.inputs={key}", "--change", 'CMD ["bash"]',
                              rootfs, ref), log, 300, "podman import of the Debian base")
        elif name == "python":
            run_logged(podman(*common, "--build-arg", f"BASE_IMAGE={specs['debian'][1]}",
                              "-f", IMAGES / "python" / "Containerfile", IMAGES / "python"), log, 1200,
                       "building the Python base image")
        elif name == "kchat":
            # pip in the build trusts what the host's pip trusts (its configuration and CA bundle, read-only;
            # build-time mounts are not part of the image)
            trusted = (Path("/etc/pip.conf"), Path("/etc/ssl/certs/ca-certificates.crt"))
            mounts = [f"--volume={f}:{f}:ro" for f in trusted if f.is_file()]
            run_logged(podman(*common, *mounts, "--build-arg", f"PYTHON_IMAGE={specs['python'][1]}",
                              "-f", REPO / "Dockerfile", REPO), log, 1800, "building the worker image (Dockerfile)")
        elif name == "kafka":
            lib = run([str(REPO / "scripts" / "kafka-local"), "fetch"], timeout=900).stdout.strip().splitlines()[-1]
            for f in ("Containerfile", "kafka-run"):
                shutil.copy(IMAGES / "kafka" / f, work / f)
            shutil.copy(REPO / "scripts" / "kafka-log4j2.properties", work / "log4j2.properties")
            shutil.copytree(lib, work / "libs")
            run_logged(podman(*common, "--build-arg", f"BASE_IMAGE={specs['debian'][1]}",
                              "-f", work / "Containerfile", work), log, 1200, "building the Kafka image")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def check_names(names, known):
    unknown = set(names) - set(known)
    if unknown:
        raise Fail(f"no image called {', '.join(sorted(unknown))} (images: {', '.join(known)})")


def build_images(wanted):
    """Build what is wanted and the bases it stands on, unless built from the same inputs already."""
    with cache_lock("images"):
        install_packages()
        _build_images(wanted)


def _build_images(wanted):
    log = images_dir() / "build.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    needed = set()
    for name in wanted:
        while name:
            needed.add(name)
            name = BASE_OF.get(name)
    for name, (_kind, ref, key) in image_specs().items():
        if name not in needed:
            continue
        t0 = time.monotonic()
        if image_key(ref) != key:
            info(f"building image {ref} (log {log})")
            build_image(name, ref, key, log)
        if name in LOADED:
            stamp = archive(name).with_suffix(".key")
            if not archive(name).exists() or not stamp.exists() or stamp.read_text().strip() != key:
                tmp = archive(name).with_suffix(".tar.tmp")
                tmp.unlink(missing_ok=True)
                run_logged(podman("save", "--format", "docker-archive", "-o", tmp, ref), log, 600, f"saving {ref}")
                os.replace(tmp, archive(name))
                stamp.write_text(key + "\n")
        size = run(podman("image", "inspect", "--format", "{{.Size}}", ref)).stdout.strip()
        info(f"image {ref}: ready ({int(size) / 1e6:.0f} MB, {time.monotonic() - t0:.0f}s)")


def ensure_pause_image():
    if not archive("pause").exists():
        build_images(["pause"])


def load_images(names=LOADED):
    """Import the built archives into containerd (namespace k8s.io) unless it has that exact image already."""
    present = ctr("images", "list", "-q").stdout.split()
    for name in names:
        arc, stamp = archive(name), archive(name).with_suffix(".key")
        if not arc.exists():
            continue
        ref = image_specs()[name][1]
        key = stamp.read_text().strip() if stamp.exists() else ""
        marker = f"{ref.rsplit(':', 1)[0]}:kchat-inputs-{key}"
        if marker in present and ref in present:
            continue
        t0 = time.monotonic()
        ctr("images", "import", str(arc), timeout=900)
        ctr("images", "tag", "--force", ref, marker)
        info(f"loaded {ref} into containerd ({time.monotonic() - t0:.0f}s)")


def after_containerd():
    """What the kubelet needs in containerd before it starts: the pause image, and the images the pods run."""
    ensure_pause_image()
    load_images()
