"""A buffered reader for TorchServe's worker protocol, installed by the platform's handler.

TorchServe's Python worker reads what its frontend sends (a batch: per request its id,
every header's name and value, the body, each with its length) one field at a time, with
a socket read each: a request with 5 headers is about 30 system calls, a third of what the
worker spends on a request to a small model (``python -m modelserve.bench.worker_headers``).
This reader takes what the socket holds in one read and hands the fields out of it: the
same bytes, in the same order, to the same callers.

It replaces only the function it was written against (``_retrieve_buffer(conn, length)``
of TorchServe 0.12); anything else is left alone and logged. The model config's
``handler: {buffered_reader: false}`` keeps TorchServe's own.
"""

from __future__ import annotations

import inspect
import logging
import socket
import sys
import weakref
from dataclasses import dataclass, field
from types import ModuleType

logger = logging.getLogger(__name__)

# One read takes up to this much; a field longer than that (a large body) is read whole.
READ_SIZE = 64 * 1024
# The TorchServe releases whose worker reader this one replaces, verified field by field.
SUPPORTED_VERSIONS = ("0.12.",)


@dataclass
class _Pending:
    """What one connection has received and not yet handed out: ``data[start:]``."""

    data: bytearray = field(default_factory=bytearray)
    start: int = 0


class BufferedReader:
    """``read(conn, length)``: the next ``length`` bytes of ``conn``, as TorchServe's reader
    returns them (a bytearray; empty for a length <= 0), exiting the worker like it when the
    frontend closes the connection."""

    def __init__(self, read_size: int = READ_SIZE) -> None:
        self.read_size = read_size
        self._pending: weakref.WeakKeyDictionary[socket.socket, _Pending] = (
            weakref.WeakKeyDictionary()
        )

    def __call__(self, conn: socket.socket, length: int) -> bytearray:
        if length <= 0:
            return bytearray()
        pending = self._pending.setdefault(conn, _Pending())
        while len(pending.data) - pending.start < length:
            # Compact only when refilling, so that handing a field out never moves the rest.
            del pending.data[: pending.start]
            pending.start = 0
            packet = conn.recv(max(self.read_size, length - len(pending.data)))
            if not packet:
                logger.info("Frontend disconnected.")
                sys.exit(0)
            pending.data += packet
        end = pending.start + length
        chunk = pending.data[pending.start : end]
        pending.start = end
        return chunk


def replaceable(module: ModuleType, version: str) -> str | None:
    """Why the worker's reader in ``module`` must be left alone, or None."""
    if not version.startswith(SUPPORTED_VERSIONS):
        return f"TorchServe {version} is not one this reader was verified with"
    stock = getattr(module, "_retrieve_buffer", None)
    if not callable(stock):
        return "TorchServe's worker has no _retrieve_buffer"
    if list(inspect.signature(stock).parameters) != ["conn", "length"]:
        return f"TorchServe's _retrieve_buffer takes {inspect.signature(stock)}"
    return None


def install() -> bool:
    """Put a ``BufferedReader`` in place of the running worker's reader; whether it is.

    Called while the worker loads the model: the load message has been read whole by
    TorchServe's own reader, so no byte is left behind in it.
    """
    try:
        from ts.protocol import otf_message_handler
        from ts.version import __version__
    except ImportError as err:  # not inside a TorchServe worker
        logger.warning("TorchServe's worker reader is not importable (%s): left alone", err)
        return False
    if isinstance(otf_message_handler._retrieve_buffer, BufferedReader):
        return True
    reason = replaceable(otf_message_handler, __version__)
    if reason is not None:
        logger.warning("%s: its own reader is kept", reason)
        return False
    otf_message_handler._retrieve_buffer = BufferedReader()
    logger.info("buffered reader installed for TorchServe %s's worker protocol", __version__)
    return True
