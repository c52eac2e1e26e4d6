"""The worker-header benchmark feeds TorchServe's own reader a message it reads back whole."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ts.protocol import otf_message_handler

from modelserve.bench import worker_headers

# As the torchserve role configures TorchServe: the worker hands the body on as bytes.
pytestmark = pytest.mark.usefixtures("bodies_left_undecoded")


header_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)


@given(
    headers=st.lists(st.tuples(header_text.filter(bool), header_text), max_size=12),
    body=st.binary(max_size=300),
)
def test_the_worker_reads_back_every_header_and_the_body(
    headers: list[tuple[str, str]], body: bytes
) -> None:
    sender, worker = socket.socketpair()
    with sender, worker:
        sender.sendall(worker_headers.encode_request("r" * 32, headers, body) * 2)
        for _ in range(2):  # one request ends exactly where the next begins
            request = otf_message_handler._retrieve_request(worker)
            read = [(h["name"].decode(), h["value"].decode()) for h in request["headers"]]
            assert read == headers
            assert request["requestId"].decode() == "r" * 32
            [parameter] = request["parameters"]
            assert (parameter["name"], parameter["value"]) == ("body", body)


def test_every_case_adds_headers_to_the_baseline_and_prints_a_row(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cases = dict(worker_headers.CASES)
    baseline = worker_headers.CASES[0][1]
    assert all(headers[: len(baseline)] == baseline for headers in cases.values())
    assert worker_headers.main(["--repeats", "3", "--rounds", "1"]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert [row.split(" | ")[0].lstrip("| ") for row in rows] == list(cases)
    assert rows[0].split(" | ")[3] == "1.00"  # the baseline, to itself
