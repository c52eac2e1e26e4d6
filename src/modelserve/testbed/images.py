"""Build the images the test bed needs, from Debian's archive and PyPI only.

No container registry can be reached from the build machines, so every image is
built here:

* a Debian 12 base image (debootstrap + `docker import`), cached, and a Debian 13 one
  when asked (`--suite trixie`);
* the systemd "VM" image Molecule boots, on the base of the `--suite` release;
* one stand-in per service image, honouring the official image's contract
  (entrypoint, ports, paths, user) so the roles run unmodified against either.

Each image is rebuilt only when its inputs (its build directory, the package modules it
copies) or its parent changed: the hash of its inputs is stored in an image label.
Service images are also saved as tarballs into the offline image directory, which the
`docker` role loads on an air-gapped host exactly as it does in the tests.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# The checkout this module is in (src/modelserve/testbed/): the package is installed editable.
REPO = Path(__file__).resolve().parents[3]
PACKAGE_DIR = REPO / "src" / "modelserve"
IMAGES_DIR = REPO / "images"
CACHE = REPO / ".cache"
HASH_LABEL = "org.modelserve.inputs-sha256"
SUITE = "bookworm"  # the release of the service images, and of the VM by default
SUITES = (SUITE, "trixie")  # the releases a VM image can be built on


def base_tag(suite: str) -> str:
    return f"modelserve-local/debian:{suite}"


BASE_TAG = base_tag(SUITE)
# What a build from nothing writes: images, their tarballs, the VM's inner Docker storage.
MIN_FREE_BYTES = 16 * 2**30
APT_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
FALLBACK_SOURCES = Path("/etc/apt/sources.list")


@dataclass(frozen=True)
class ImageSpec:
    """One image built from `images/<directory>/`."""

    directory: str
    tag: str
    offline: bool  # saved as a tarball for hosts (and the Molecule VM) to load
    root: Path = IMAGES_DIR  # where `directory` is (benchmarks/images for its own image)
    # Modules of the package (paths under src/modelserve/) that the Dockerfile copies: put
    # at the top of the build context under their own names, as if they were in `directory`.
    package_files: tuple[str, ...] = ()
    # The image it is built FROM; any other than BASE_TAG goes to the Dockerfile as the
    # build argument BASE (its `ARG BASE` defaults to BASE_TAG).
    base: str = BASE_TAG

    @property
    def source(self) -> Path:
        return self.root / self.directory

    def inputs(self) -> dict[Path, Path]:
        """Every file of the build context by its path there (no bytecode caches)."""
        files = {
            path.relative_to(self.source): path
            for path in self.source.rglob("*")
            if path.is_file() and "__pycache__" not in path.parts
        }
        for module in self.package_files:
            path = PACKAGE_DIR / module
            files[Path(path.name)] = path
        return files


def vm_spec(suite: str) -> ImageSpec:
    """The VM image of a Debian release: the same Dockerfile on that release's base."""
    return ImageSpec("vm", f"modelserve-local/vm:{suite}", offline=False, base=base_tag(suite))


IMAGES = (
    vm_spec(SUITE),
    ImageSpec("torchserve", "modelserve-local/torchserve:0.12.0-cpu", offline=True),
    ImageSpec("nginx", "modelserve-local/nginx:1.27", offline=True),
    ImageSpec("locust", "modelserve-local/locust:2.47.0", offline=True),
    ImageSpec("prometheus", "modelserve-local/prometheus:v2.53.3", offline=True),
    ImageSpec("alertmanager", "modelserve-local/alertmanager:v0.27.0", offline=True),
    ImageSpec("node-exporter", "modelserve-local/node-exporter:v1.8.2", offline=True),
    ImageSpec("nginx-exporter", "modelserve-local/nginx-exporter:1.3.0", offline=True),
    ImageSpec("mtail", "modelserve-local/mtail:3.0.0-rc50", offline=True),
    ImageSpec(
        "kafka",
        "modelserve-local/kafka:3.9.0",
        offline=True,
        package_files=("kafka_standin/run.py", "kafka_standin/kafka_topics.py"),
    ),
    ImageSpec("python", "modelserve-local/python:3.11-slim-bookworm", offline=True),
)
# Wheels an air-gapped host needs for images the roles build there (the drift image),
# put beside the tarballs as <offline-dir>/wheels/<name>/.
HOST_WHEELHOUSES = {"drift": REPO / "roles/kafka_drift/files/requirements.txt"}


def log(message: str) -> None:
    print(f"[images] {message}", flush=True)


def run(*argv: str, capture: bool = False) -> str:
    result = subprocess.run(argv, check=True, text=True, capture_output=capture)
    return result.stdout.strip() if capture else ""


def image_id(tag: str) -> str | None:
    result = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Id}}", tag],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() if result.returncode == 0 else None


def image_label(tag: str, label: str) -> str | None:
    result = subprocess.run(
        ["docker", "image", "inspect", "-f", f'{{{{ index .Config.Labels "{label}" }}}}', tag],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() if result.returncode == 0 else None


def free_space_error(paths: dict[str, Path], minimum: int = MIN_FREE_BYTES) -> str | None:
    """A message naming every place with less than `minimum` bytes free, or None."""
    short = []
    for purpose, path in paths.items():
        free = shutil.disk_usage(path).free
        if free < minimum:
            short.append(f"{path} ({purpose}): {free / 2**30:.1f} GiB free")
    if not short:
        return None
    return (
        f"images: less than {minimum / 2**30:.0f} GiB free, needed to build and test:\n  "
        + "\n  ".join(short)
        + "\nSee what Docker could reclaim with `docker system df`; volumes left by"
        " destroyed test VMs go with `docker volume prune`."
    )


def docker_root() -> Path:
    return Path(run("docker", "info", "-f", "{{.DockerRootDir}}", capture=True))


def debian_mirror() -> str:
    """The Debian mirror the machine's own apt sources use."""
    for source in (APT_SOURCES, FALLBACK_SOURCES):
        if not source.exists():
            continue
        text = source.read_text()
        for uri in re.findall(r"^URIs:\s*(\S+)", text, re.M) + re.findall(
            r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\s", text, re.M
        ):
            if not uri.rstrip("/").endswith("-security"):
                return uri
    sys.exit("images: no Debian mirror found in the machine's apt sources")


def build_base(suite: str = SUITE) -> None:
    tag = base_tag(suite)
    if image_id(tag):
        log(f"{tag}: cached")
        return
    mirror = debian_mirror()
    log(f"{tag}: debootstrap {suite} from {mirror}")
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        rootfs = Path(tmp) / "rootfs"
        run("debootstrap", "--variant=minbase", "--include=python3", suite, str(rootfs), mirror)
        # The rootfs keeps the mirror debootstrap used, so apt works inside the builds.
        shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(["docker", "import", "-", tag], stdin=tar.stdout, check=True)
        if tar.wait() != 0:
            sys.exit("images: tar of the base rootfs failed")


def download_wheels(spec: ImageSpec) -> Path | None:
    """Fetch the image's Python requirements on the host, where PyPI is reachable."""
    requirements = spec.source / "requirements.txt"
    if not requirements.exists():
        return None
    wheelhouse = CACHE / "wheelhouse" / spec.directory
    wheelhouse.mkdir(parents=True, exist_ok=True)
    log(f"{spec.tag}: wheels for {requirements.relative_to(REPO)}")
    run(
        sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
        "--dest", str(wheelhouse), "-r", str(requirements),
    )  # fmt: skip
    return wheelhouse


def inputs_hash(spec: ImageSpec) -> str:
    digest = hashlib.sha256()
    digest.update((image_id(spec.base) or "").encode())
    for name, path in sorted(spec.inputs().items()):
        digest.update(str(name).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def build_args(spec: ImageSpec) -> list[str]:
    """`docker build`'s options for the base: none on the default one (no unused argument)."""
    return [] if spec.base == BASE_TAG else ["--build-arg", f"BASE={spec.base}"]


def build(spec: ImageSpec) -> None:
    wanted = inputs_hash(spec)
    if image_label(spec.tag, HASH_LABEL) == wanted:
        log(f"{spec.tag}: up to date")
        return
    wheelhouse = download_wheels(spec)
    context = CACHE / "build" / spec.directory
    shutil.rmtree(context, ignore_errors=True)
    for name, path in spec.inputs().items():
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, context / name)
    wheels = context / "wheelhouse"
    wheels.mkdir(exist_ok=True)
    if wheelhouse is not None:
        for wheel in wheelhouse.iterdir():
            os.link(wheel, wheels / wheel.name)
    log(f"{spec.tag}: building")
    replaced = image_id(spec.tag)
    run(
        "docker", "build", *build_args(spec), "--label", f"{HASH_LABEL}={wanted}",
        "-t", spec.tag, str(context),
    )  # fmt: skip
    shutil.rmtree(context)
    if replaced and replaced != image_id(spec.tag):
        # Untagged by the build, the old image would keep its gigabytes until a prune.
        subprocess.run(["docker", "image", "rm", replaced], capture_output=True, check=False)


def export(spec: ImageSpec, directory: Path) -> None:
    """Save the image as `<dir>/<name>.tar` unless the tarball already holds this build."""
    current = image_id(spec.tag)
    tarball = directory / f"{spec.directory}.tar"
    stamp = tarball.with_suffix(".tar.id")
    if tarball.exists() and stamp.exists() and stamp.read_text().strip() == current:
        log(f"{spec.tag}: {tarball.relative_to(REPO)} up to date")
        return
    log(f"{spec.tag}: saving {tarball.relative_to(REPO)}")
    partial = tarball.with_suffix(".tar.partial")
    run("docker", "save", "-o", str(partial), spec.tag)
    partial.replace(tarball)
    stamp.write_text(f"{current}\n")


def export_wheels(name: str, requirements: Path, directory: Path) -> None:
    """Download a role's Python requirements for hosts that build images offline."""
    wheelhouse = directory / "wheels" / name
    stamp = wheelhouse / ".requirements-sha256"
    wanted = hashlib.sha256(requirements.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text().strip() == wanted:
        log(f"wheels for {name}: up to date")
        return
    shutil.rmtree(wheelhouse, ignore_errors=True)
    wheelhouse.mkdir(parents=True)
    log(f"wheels for {name}: {requirements.relative_to(REPO)}")
    run(
        sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
        "--dest", str(wheelhouse), "-r", str(requirements),
    )  # fmt: skip
    stamp.write_text(f"{wanted}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", nargs="+", choices=[s.directory for s in IMAGES], help="build only these"
    )
    parser.add_argument(
        "--suite",
        choices=SUITES,
        default=SUITE,
        help=f"Debian release of the VM image (default {SUITE}); service images stay {SUITE}",
    )
    parser.add_argument(
        "--offline-dir",
        type=Path,
        default=CACHE / "images",
        help="where service image tarballs go (default: .cache/images)",
    )
    args = parser.parse_args()
    CACHE.mkdir(exist_ok=True)
    args.offline_dir.mkdir(parents=True, exist_ok=True)
    error = free_space_error({"Docker's storage": docker_root(), "tarballs": args.offline_dir})
    if error:
        sys.exit(error)
    try:
        build_all(args.only, args.offline_dir, args.suite)
    except subprocess.CalledProcessError as failure:
        sys.exit(f"images: `{' '.join(map(str, failure.cmd))}` failed (exit {failure.returncode})")


def build_all(only: list[str] | None, offline_dir: Path, suite: str = SUITE) -> None:
    build_base()
    build_base(suite)
    for spec in IMAGES:
        if only and spec.directory not in only:
            continue
        build(vm_spec(suite) if spec.directory == "vm" else spec)
        if spec.offline:
            export(spec, offline_dir)
    if not only:
        for name, requirements in HOST_WHEELHOUSES.items():
            export_wheels(name, requirements, offline_dir)


if __name__ == "__main__":
    main()
