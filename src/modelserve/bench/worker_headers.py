"""What each request header costs TorchServe's Python worker, in µs per request.

``python -m modelserve.bench.worker_headers`` (seconds; no VM needed). TorchServe's
frontend hands each batch to its worker over a socket, and the worker's reader
(``ts.protocol.otf_message_handler``) takes every field with a read of its own: a header
is four. This times that reader and ``ts.service``'s unpacking of a batch, on a real
socket pair, for the headers a request carries at each step of the way to the worker; the
frontend's own (Java) work per header comes on top. The ratio is to the 3 headers wrk sends,
measured in the same run.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import struct
import time
from collections.abc import Sequence

from ts.protocol import otf_message_handler
from ts.service import Service

Header = tuple[str, str]
BODY = b'{"data": [0.2, 0.6]}'
WRK = (("Host", "127.0.0.1"), ("Content-Type", "application/json"), ("Content-Length", "20"))
# What nginx adds for production (roles/nginx/templates/modelserve.conf.j2).
NGINX = (("X-Modelserve-Route", "production"), ("Authorization", "Bearer " + "k" * 32))
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
    headers: Sequence[Header], batch_size: int = 16, repeats: int = 300
) -> float:
    """Median over ``repeats`` batches of the worker's µs per request to read and unpack it."""
    batch = b"".join(encode_request(f"{i:032x}", headers) for i in range(batch_size))
    sender, worker = socket.socketpair()
    timings = []
    with sender, worker:
        for _ in range(repeats):
            sender.sendall(batch)
            start = time.perf_counter()
            requests = [otf_message_handler._retrieve_request(worker) for _ in range(batch_size)]
            Service.retrieve_data_for_inference(requests)
            timings.append((time.perf_counter() - start) / batch_size * 1e6)
    return statistics.median(timings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=300, help="batches per case (300)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over the cases (3)")
    args = parser.parse_args(argv)
    rounds = [
        {name: decode_us_per_request(headers, repeats=args.repeats) for name, headers in CASES}
        for _ in range(args.rounds)
    ]
    print("| headers the worker reads | count | µs per request | ratio to wrk's own |")
    print("| --- | ---: | ---: | ---: |")
    baseline = CASES[0][0]
    for name, headers in CASES:
        median_us = statistics.median(each[name] for each in rounds)
        ratio = statistics.median(each[name] / each[baseline] for each in rounds)
        print(f"| {name} | {len(headers)} | {median_us:.1f} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
