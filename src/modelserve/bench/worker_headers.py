"""What each request header costs TorchServe's Python worker, in µs per request.

``python -m modelserve.bench.worker_headers`` (seconds; no VM needed). TorchServe's
frontend hands each batch to its worker over a socket, and the worker's reader
(``ts.protocol.otf_message_handler``) takes every field with a read of its own: a header
is four. This times that reader and ``ts.service``'s unpacking of a batch, on a real
socket pair, for the headers a request carries at each step of the way to the worker; the
frontend's own (Java) work per header comes on top. Each case is timed with TorchServe's
reader and with the handler's buffered one (``modelserve.worker_reader``), in rounds, and
the ratios are taken within a round: to the 3 headers wrk sends, and buffered to stock.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import struct
import time
from collections.abc import Callable, Sequence

from ts.protocol import otf_message_handler
from ts.service import Service

from modelserve.bench import candidates as cfg
from modelserve.worker_reader import BufferedReader

Header = tuple[str, str]
Reader = Callable[[socket.socket, int], bytearray]
BODY = b'{"data": [0.2, 0.6]}'
WRK = (("Host", "127.0.0.1"), ("Content-Type", "application/json"), ("Content-Length", "20"))
# What nginx adds for production: the benchmark's one list of it.
NGINX = tuple((name, value) for name, value in (h.split(": ", 1) for h in cfg.PRODUCTION_HEADERS))
# What nginx forwarded too before it sent only the above: its own two, a client's (curl's).
NGINX_BEFORE = (
    ("X-Request-ID", "0f1e2d3c4b5a69788796a5b4c3d2e1f0"),
    ("X-Forwarded-For", "10.0.0.1"),
)
CURL = (("User-Agent", "curl/7.88.1"), ("Accept", "*/*"))
CASES: tuple[tuple[str, tuple[Header, ...]], ...] = (
    ("wrk's own (the baseline)", WRK),
    ("behind nginx", WRK + NGINX),
    ("behind nginx before, from wrk", WRK + NGINX + NGINX_BEFORE),
    ("behind nginx before, from curl", WRK + NGINX + NGINX_BEFORE + CURL),
)


def _field(value: bytes) -> bytes:
    return struct.pack("!i", len(value)) + value


def encode_request(request_id: str, headers: Sequence[Header], body: bytes = BODY) -> bytes:
    """One request as TorchServe's frontend writes it into a batch for the worker."""
    message = _field(request_id.encode())
    for name, value in headers:
        message += _field(name.encode()) + _field(value.encode())
    message += struct.pack("!i", -1)
    message += _field(b"body") + _field(b"application/json") + _field(body)
    return message + struct.pack("!i", -1)


def decode_us_per_request(
    headers: Sequence[Header], reader: Reader, batch_size: int = 16, repeats: int = 300
) -> float:
    """Median over ``repeats`` batches of the worker's µs per request to read and unpack
    one, reading with ``reader``."""
    batch = b"".join(encode_request(f"{i:032x}", headers) for i in range(batch_size))
    sender, worker = socket.socketpair()
    timings = []
    stock = otf_message_handler._retrieve_buffer
    otf_message_handler._retrieve_buffer = reader
    try:
        with sender, worker:
            for _ in range(repeats):
                sender.sendall(batch)
                start = time.perf_counter()
                requests = [
                    otf_message_handler._retrieve_request(worker) for _ in range(batch_size)
                ]
                Service.retrieve_data_for_inference(requests)
                timings.append((time.perf_counter() - start) / batch_size * 1e6)
    finally:
        otf_message_handler._retrieve_buffer = stock
    return statistics.median(timings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=300, help="batches per case (300)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over the cases (3)")
    args = parser.parse_args(argv)
    os.environ["TS_DECODE_INPUT_REQUEST"] = "false"  # as the torchserve role configures it
    readers: dict[str, Reader] = {
        "stock": otf_message_handler._retrieve_buffer,
        "buffered": BufferedReader(),
    }
    rounds = [
        {
            (name, kind): decode_us_per_request(headers, reader, repeats=args.repeats)
            for name, headers in CASES
            for kind, reader in readers.items()
        }
        for _ in range(args.rounds)
    ]

    baseline = CASES[0][0]
    print(
        "| headers the worker reads | count | µs per request, TorchServe's reader "
        "| ratio to wrk's own | µs per request, buffered reader | buffered / TorchServe's |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, headers in CASES:
        stock = [each[name, "stock"] for each in rounds]
        buffered = [each[name, "buffered"] for each in rounds]
        to_baseline = [each[name, "stock"] / each[baseline, "stock"] for each in rounds]
        buffered_ratio = [b / s for b, s in zip(buffered, stock, strict=True)]
        print(
            f"| {name} | {len(headers)} | {statistics.median(stock):.1f} "
            f"| {statistics.median(to_baseline):.2f} | {statistics.median(buffered):.1f} "
            f"| {statistics.median(buffered_ratio):.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
