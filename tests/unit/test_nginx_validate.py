"""The nginx validator's copy of the live config tree, on a real one: nginx's state
directory holds the colours' inference sockets, which no copy can take."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelserve.hosttools.nginx_validate import CONFIG_ENTRIES, outside_the_config


@pytest.fixture
def live_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """/opt/modelserve/nginx as a host has it: config, state with a listening socket, and
    the record of a pending restart."""
    tree = tmp_path / "nginx"
    (tree / "conf.d" / "rollout").mkdir(parents=True)
    (tree / "conf.d" / "upstreams.conf").write_text("upstream production {}\n")
    (tree / "conf.d" / "rollout" / "mirror.conf").write_text("mirror /_shadow;\n")
    (tree / "nginx.conf").write_text("events {}\n")
    (tree / "tls").mkdir()
    (tree / "tls" / "selfsigned.crt").write_text("certificate\n")
    sockets = tree / "state" / "torchserve" / "blue"
    sockets.mkdir(parents=True)
    (tree / "restart-pending").write_text("its new container settings\n")
    # Bound by a relative name: a socket's path is limited to 107 bytes.
    monkeypatch.chdir(sockets)
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind("inference.sock")
        listener.listen()
        yield tree


def test_a_plain_copy_fails_on_the_socket(live_tree: Path, tmp_path: Path) -> None:
    """What the validator did before: the copy stops on the socket."""
    with pytest.raises(shutil.Error, match=r"inference\.sock"):
        shutil.copytree(live_tree, tmp_path / "copy")


def test_the_copy_takes_the_config_only(live_tree: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(live_tree, copy, ignore=outside_the_config(live_tree))
    assert {path.name for path in copy.iterdir()} == CONFIG_ENTRIES
    # Below the top level nothing is left out.
    assert (copy / "conf.d" / "rollout" / "mirror.conf").read_text() == "mirror /_shadow;\n"
    assert (copy / "conf.d" / "upstreams.conf").is_file()
    assert (copy / "tls" / "selfsigned.crt").is_file()
