"""API keys on /predict and /test/predict (nginx_api_keys): off by default; when set, a
request without a listed key gets 401 with a JSON body, whatever it sends instead, and no
key is ever written to a log or the run's output."""

from __future__ import annotations

import json
import secrets
import string
import time
from pathlib import Path

import requests
from conftest import BASE_URL, REFERENCE_INPUT, PlaybookRun, converge_nginx, predict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

KEYS_FILE = "/opt/modelserve/nginx/conf.d/api-keys.conf"
NGINX_LOGS = "/var/log/modelserve-nginx"
KEY_ALPHABET = string.ascii_letters + string.digits + "._~+/=-"
KEYS = [secrets.token_urlsafe(32), "".join(secrets.choice(KEY_ALPHABET) for _ in range(40))]


def converge_with_keys(tmp_path: Path, keys: list[str]) -> PlaybookRun:
    variables = tmp_path / "keys.json"
    variables.write_text(json.dumps({"nginx_api_keys": keys}))
    return converge_nginx(tmp_path, "-e", f"@{variables}")


def post(route: str, authorization: str | None) -> requests.Response:
    headers = {} if authorization is None else {"Authorization": authorization}
    return requests.post(
        f"{BASE_URL}{route}", json={"data": REFERENCE_INPUT}, headers=headers, timeout=10
    )


# What clients send instead of a listed key: anything printable (Latin-1, as HTTP headers
# are), and near misses of a real key: a prefix, a longer string, its case changed,
# another scheme.
header_values = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=120,
).map(str.lstrip)  # requests refuses to send a value with leading whitespace
near_misses = st.sampled_from(KEYS).flatmap(
    lambda key: st.sampled_from(
        [
            f"Bearer {key[:-1]}",
            f"Bearer {key}x",
            f"Bearer {key.swapcase()}",
            f"Basic {key}",
            f"Bearer{key}",
            key,
            f"Bearer  {key} extra",
        ]
    )
)


def test_keys_are_required_when_set_and_never_logged(host, tmp_path: Path) -> None:
    started = time.monotonic()
    try:
        converged = converge_with_keys(tmp_path, KEYS)
        assert converged.returncode == 0, converged.output[-3000:]
        assert not any(key in converged.output for key in KEYS), "a key was printed"
        keys_file = host.file(KEYS_FILE)
        assert (keys_file.user, keys_file.mode) == ("root", 0o600)

        for route in ("/predict", "/test/predict"):
            refused = post(route, None)
            assert refused.status_code == 401, refused.text
            assert refused.json() == {
                "error": "an API key is required: Authorization: Bearer <key>"
            }
            assert refused.headers["WWW-Authenticate"] == 'Bearer realm="modelserve"'
            for key in KEYS:
                for scheme in ("Bearer", "bearer"):
                    answer = post(route, f"{scheme} {key}")
                    assert answer.status_code == 200, answer.text

        @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(st.one_of(header_values, near_misses))
        def refused_without_a_listed_key(authorization: str) -> None:
            assert post("/predict", authorization).status_code == 401

        refused_without_a_listed_key()

        # The node's own clients (deploy_model.yml's smoke test, on the host's loopback)
        # are exempt.
        on_host = host.check_output(
            "curl -s -o /dev/null -w '%{http_code}' -X POST -d '{\"data\": [0.2, 0.6]}'"
            " http://127.0.0.1:80/test/predict"
        )
        assert on_host == "200"
        logs = host.check_output(f"cat {NGINX_LOGS}/*.log")
        assert not any(key in logs for key in KEYS), "a key was logged"
        assert '"status":401' in host.file(f"{NGINX_LOGS}/production.access.log").content_string
    finally:
        restored = converge_with_keys(tmp_path, [])
        print(f"the nginx role converged twice: {time.monotonic() - started:.0f} s")
    assert restored.returncode == 0, restored.output[-3000:]
    assert not host.file(KEYS_FILE).exists
    assert predict("/predict").status_code == 200


def test_a_malformed_key_fails_the_converge_without_showing_it(host, tmp_path: Path) -> None:
    """Short, or with a character a header or nginx's map would mangle (a vaulted string's
    trailing newline included): the converge
    names each such key's position, never a value, and nothing is written. One converge
    for them all, between good keys, so that each is refused by its own position."""
    malformed = ["short-key", "x" * 31 + ' "quoted"', "k" * 40 + ";", "n" * 40 + "\n"]
    result = converge_with_keys(tmp_path, [KEYS[0], *malformed, KEYS[1]])
    assert result.returncode != 0
    assert "nginx_api_keys: key(s) number 2, 3, 4, 5 of 6" in result.output, result.output[-2000:]
    for key in [*malformed, *KEYS]:
        assert key not in result.output
    assert not host.file(KEYS_FILE).exists
    assert predict("/predict").status_code == 200
