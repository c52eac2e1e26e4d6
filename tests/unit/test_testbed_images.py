"""The images' build contexts: what each Dockerfile copies is there, package modules too."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelserve.bench.run import FASTAPI_SPEC
from modelserve.testbed import images

# `wheelhouse` is put into every context by the build (the host-downloaded wheels).
ADDED_BY_THE_BUILD = {Path("wheelhouse")}


def copied_sources(dockerfile: Path) -> set[Path]:
    """The context paths a Dockerfile's COPY/ADD take (not those from another stage)."""
    sources = set()
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if words[:1] not in (["COPY"], ["ADD"]) or any(w.startswith("--from=") for w in words):
            continue
        paths = [word for word in words[1:] if not word.startswith("--")]
        sources.update(Path(path) for path in paths[:-1])
    return sources


@pytest.mark.parametrize("spec", [*images.IMAGES, FASTAPI_SPEC], ids=lambda s: s.directory)
def test_every_copied_file_is_in_the_build_context(spec: images.ImageSpec) -> None:
    context = set(spec.inputs())
    missing = copied_sources(spec.source / "Dockerfile") - context - ADDED_BY_THE_BUILD
    assert not missing, f"{spec.directory}: COPY of {sorted(map(str, missing))} not in context"


def test_kafka_standin_is_built_from_the_package() -> None:
    kafka = next(spec for spec in images.IMAGES if spec.directory == "kafka")
    inputs = kafka.inputs()
    for name in ("run.py", "kafka_topics.py"):
        assert inputs[Path(name)] == images.PACKAGE_DIR / "kafka_standin" / name


def test_bytecode_caches_are_no_input(tmp_path: Path) -> None:
    """Importing an image's Python (tests do) must not make the image look changed."""
    (tmp_path / "x" / "__pycache__").mkdir(parents=True)
    (tmp_path / "x" / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "x" / "__pycache__" / "run.cpython-311.pyc").write_bytes(b"\0")
    spec = images.ImageSpec("x", "t", offline=False, root=tmp_path)
    assert set(spec.inputs()) == {Path("Dockerfile")}


def test_free_space_error_names_each_short_place(tmp_path: Path) -> None:
    free = images.shutil.disk_usage(tmp_path).free
    assert images.free_space_error({"cache": tmp_path}, minimum=free // 2) is None
    message = images.free_space_error({"cache": tmp_path, "docker": tmp_path}, minimum=free * 2)
    assert message is not None
    assert message.count(str(tmp_path)) == 2
    assert "(cache)" in message and "(docker)" in message
    assert "docker volume prune" in message


def test_vm_image_of_another_release_is_the_same_dockerfile_on_its_base() -> None:
    bookworm = next(spec for spec in images.IMAGES if spec.directory == "vm")
    assert bookworm == images.vm_spec("bookworm")
    assert (bookworm.tag, bookworm.base) == ("modelserve-local/vm:bookworm", images.BASE_TAG)
    assert images.build_args(bookworm) == []
    trixie = images.vm_spec("trixie")
    assert (trixie.tag, trixie.base) == (
        "modelserve-local/vm:trixie",
        "modelserve-local/debian:trixie",
    )
    assert trixie.source == bookworm.source
    assert images.build_args(trixie) == ["--build-arg", "BASE=modelserve-local/debian:trixie"]


def test_vm_dockerfile_takes_its_base_as_argument_defaulting_to_bookworm() -> None:
    """Built without the argument (the default release), it must still be on BASE_TAG."""
    lines = (images.IMAGES_DIR / "vm" / "Dockerfile").read_text().splitlines()
    assert f"ARG BASE={images.BASE_TAG}" in lines
    assert [line for line in lines if line.startswith("FROM ")] == ["FROM ${BASE}"]
