"""The buffered worker reader hands out exactly the bytes TorchServe's own reader would."""

from __future__ import annotations

import socket
import threading
from types import ModuleType

import pytest
from conftest import STOCK_READER
from hypothesis import given
from hypothesis import strategies as st
from ts.protocol import otf_message_handler

from modelserve import worker_reader
from modelserve.bench.worker_headers import encode_request
from modelserve.worker_reader import BufferedReader

# As the torchserve role configures TorchServe: the worker hands the body on as bytes.
pytestmark = pytest.mark.usefixtures("bodies_left_undecoded")


class ChunkedConnection:
    """A connection whose reads return the stream in the given chunks (never more than
    asked): how a socket may split what the frontend sent."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = [chunk for chunk in chunks if chunk]
        self.reads = 0

    def recv(self, size: int) -> bytes:
        self.reads += 1
        if not self.chunks:
            return b""
        chunk = self.chunks[0]
        self.chunks[0] = chunk[size:]
        if not self.chunks[0]:
            self.chunks.pop(0)
        return chunk[:size]


@given(
    chunks=st.lists(st.binary(max_size=300), max_size=20),
    lengths=st.lists(st.integers(-2, 400), max_size=40),
    read_size=st.integers(1, 512),
)
def test_fields_are_the_stream_in_order_however_it_arrives(
    chunks: list[bytes], lengths: list[int], read_size: int
) -> None:
    stream = b"".join(chunks)
    read = BufferedReader(read_size)
    conn = ChunkedConnection(chunks)
    offset = 0
    for length in lengths:
        wanted = max(length, 0)
        if offset + wanted > len(stream):
            with pytest.raises(SystemExit) as exited:  # the frontend has gone
                read(conn, length)
            assert exited.value.code == 0
            return
        field = read(conn, length)
        assert isinstance(field, bytearray)
        assert field == stream[offset : offset + wanted]
        offset += wanted


def test_a_batch_received_whole_is_decoded_from_one_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batch = [encode_request(f"{i:032x}", [("Host", "x")] * 5) for i in range(16)]
    conn = ChunkedConnection([b"".join(batch)])
    monkeypatch.setattr(otf_message_handler, "_retrieve_buffer", BufferedReader())
    decoded = [otf_message_handler._retrieve_request(conn) for _ in batch]
    assert [request["requestId"] for request in decoded] == [
        f"{i:032x}".encode() for i in range(16)
    ]
    assert conn.reads == 1


header_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)
requests = st.lists(
    st.tuples(
        st.lists(st.tuples(header_text.filter(bool), header_text), max_size=8),
        st.binary(max_size=2000),
    ),
    min_size=1,
    max_size=8,
)


@given(batch=requests, split=st.lists(st.integers(1, 500), max_size=30))
def test_torchserve_decodes_the_same_requests_with_either_reader(
    batch: list[tuple[list[tuple[str, str]], bytes]],
    split: list[int],
) -> None:
    """TorchServe's own request decoder, on a real socket, the sender writing in pieces."""
    stream = b"".join(encode_request(f"{i:032x}", h, b) for i, (h, b) in enumerate(batch))

    def decode(reader: object) -> list[dict]:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(otf_message_handler, "_retrieve_buffer", reader)
            sender, worker = socket.socketpair()
            with sender, worker:
                pieces, start = [], 0
                for size in [*split, len(stream)]:
                    pieces.append(stream[start : start + size])
                    start += size
                writer = threading.Thread(target=lambda: [sender.sendall(p) for p in pieces])
                writer.start()
                decoded = [otf_message_handler._retrieve_request(worker) for _ in batch]
                writer.join()
                return decoded

    assert decode(BufferedReader(64)) == decode(STOCK_READER)


def test_only_the_reader_it_was_written_against_is_replaced() -> None:
    assert worker_reader.replaceable(otf_message_handler, "0.12.0") is None
    assert "0.13.0" in str(worker_reader.replaceable(otf_message_handler, "0.13.0"))
    other = ModuleType("otf_message_handler")
    assert "no _retrieve_buffer" in str(worker_reader.replaceable(other, "0.12.0"))
    other._retrieve_buffer = lambda conn, length, timeout: b""  # type: ignore[attr-defined]
    assert "timeout" in str(worker_reader.replaceable(other, "0.12.0"))


def test_install_puts_it_in_the_running_worker_once() -> None:
    assert otf_message_handler._retrieve_buffer is STOCK_READER
    assert worker_reader.install()
    installed = otf_message_handler._retrieve_buffer
    assert isinstance(installed, BufferedReader)
    assert worker_reader.install() and otf_message_handler._retrieve_buffer is installed
    sender, worker = socket.socketpair()
    with sender, worker:
        sender.sendall(encode_request("r" * 32, [("X-Modelserve-Route", "production")]))
        request = otf_message_handler._retrieve_request(worker)
    assert request["headers"] == [{"name": b"X-Modelserve-Route", "value": b"production"}]
