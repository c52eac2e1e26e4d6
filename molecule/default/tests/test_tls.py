"""HTTPS: nginx's TLS endpoint as a client sees it, on the published HTTPS port."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import requests
from conftest import (
    BASE_URL,
    CONTRACT,
    FACT_FILE,
    HTTPS_PORT,
    HTTPS_URL,
    REFERENCE_INPUT,
    PredictLoad,
    converge_nginx,
    idle_colour,
    predict,
    run_playbook,
)

TLS_DIR = "/opt/modelserve/nginx/tls"
# nginx's HTTP port on the host (the role's default; Molecule forwards MODELSERVE_HTTP_PORT to it).
NGINX_HTTP_PORT = 80
INITIAL: str = CONTRACT["bluegreen_initial_colour"]


def handshake(version: ssl.TLSVersion) -> tuple[str, bytes]:
    """Protocol and certificate (DER) of a handshake offering only ``version``. The
    client's own floor is lowered (SECLEVEL 0), so a refusal is the server's."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = context.maximum_version = version
    with (
        socket.create_connection(("127.0.0.1", HTTPS_PORT), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        certificate = tls.getpeercert(binary_form=True)
        assert tls.version() is not None and certificate is not None
        return tls.version() or "", certificate


def host_certificate(host, name: str) -> bytes:
    """A PEM certificate file of the host's TLS directory, as DER."""
    return ssl.PEM_cert_to_DER_cert(host.file(f"{TLS_DIR}/{name}").content_string)


@pytest.mark.parametrize(
    ("version", "name"),
    [(ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")],
)
def test_tls_1_2_and_1_3_serve_the_generated_certificate(host, version, name) -> None:
    """Without a certificate given, the one generated on the host is served with either
    version; its key is root's only."""
    protocol, served = handshake(version)
    assert protocol == name
    assert served == host_certificate(host, "selfsigned.crt")
    key = host.file(f"{TLS_DIR}/selfsigned.key")
    assert (key.user, key.mode) == ("root", 0o600)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_tls_1_0_and_1_1_are_refused(version) -> None:
    with pytest.raises(ssl.SSLError) as refused:
        handshake(version)
    # The server's alert, not a client unable to offer the version.
    assert "alert protocol version" in str(refused.value), refused.value


def test_predict_over_https_verified_against_the_generated_certificate(
    host, tmp_path: Path, reference_output: float
) -> None:
    """A client that trusts the generated certificate (its names include 127.0.0.1) gets
    both routes' answers, each colour named; plain HTTP is still served (the default)."""
    trusted = tmp_path / "selfsigned.crt"
    trusted.write_text(host.file(f"{TLS_DIR}/selfsigned.crt").content_string)
    for route, colour in (("/predict", INITIAL), ("/test/predict", idle_colour(INITIAL))):
        answer = requests.post(
            f"{HTTPS_URL}{route}", json={"data": REFERENCE_INPUT}, verify=str(trusted), timeout=10
        )
        assert answer.status_code == 200, answer.text
        assert abs(answer.json()["output"] - reference_output) <= 1e-6
        assert answer.headers["X-Model-Colour"] == colour
        assert "Strict-Transport-Security" not in answer.headers
    assert predict("/predict", allow_redirects=False).status_code == 200


def make_pair(directory: Path, name: str) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key (PEM), as a user's CA would issue them."""
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert.read_text(), key.read_text()


def test_given_certificate_redirect_hsts_and_a_broken_pair(host, tmp_path: Path) -> None:
    """The nginx role converged with a given certificate, the redirect and HSTS: that
    certificate is served, plain HTTP answers 308 to HTTPS (a POST follows it as a POST),
    /healthz stays on HTTP, HSTS comes on HTTPS answers only. A certificate with another
    key then fails the converge, saying why, and the given one keeps being served. The
    defaults are converged back: the generated certificate, kept, is served again."""
    generated = host_certificate(host, "selfsigned.crt")
    certificate, key = make_pair(tmp_path, "given")
    given_vars = tmp_path / "given.json"
    given_vars.write_text(
        json.dumps(
            {
                "nginx_tls_certificate": certificate,
                "nginx_tls_key": key,
                "nginx_http_redirect": True,
                "nginx_http_redirect_port": HTTPS_PORT,
                "nginx_hsts_enabled": True,
            }
        )
    )
    other_certificate, _ = make_pair(tmp_path, "other")
    broken_vars = tmp_path / "broken.json"
    broken_vars.write_text(json.dumps({"nginx_tls_certificate": other_certificate}))
    started = time.monotonic()
    try:
        given = converge_nginx(tmp_path, "-e", f"@{given_vars}")
        assert given.returncode == 0, given.output
        assert key.strip().splitlines()[1] not in given.output, "the key was printed"
        assert handshake(ssl.TLSVersion.TLSv1_3)[1] == ssl.PEM_cert_to_DER_cert(certificate)

        redirected = predict("/predict", allow_redirects=False)
        assert redirected.status_code == 308
        assert redirected.headers["Location"] == f"{HTTPS_URL}/predict"
        assert "Strict-Transport-Security" not in redirected.headers
        followed = predict("/predict", verify=str(tmp_path / "given.crt"))
        assert followed.status_code == 200, followed.text
        assert [r.status_code for r in followed.history] == [308]
        assert followed.headers["Strict-Transport-Security"] == "max-age=31536000"
        # The host's own clients (deploy_model.yml's smoke test) reach nginx from the stack
        # network, which stays on HTTP.
        on_host = host.check_output(
            "curl -s -o /dev/null -w '%{http_code}' -X POST -d '{\"data\": [0.2, 0.6]}'"
            f" http://127.0.0.1:{NGINX_HTTP_PORT}/test/predict"
        )
        assert on_host == "200"
        health = requests.get(f"{BASE_URL}/healthz", allow_redirects=False, timeout=5)
        assert health.status_code == 200 and "Strict-Transport-Security" not in health.headers
        for method, path in (("GET", "/predict"), ("GET", "/nowhere"), ("GET", "/healthz")):
            answer = requests.request(method, f"{HTTPS_URL}{path}", verify=False, timeout=5)
            assert answer.headers.get("Strict-Transport-Security") == "max-age=31536000", path

        broken = converge_nginx(
            tmp_path, "-e", f"@{given_vars}", "-e", f"@{broken_vars}", tasks="tls"
        )
        assert broken.returncode != 0
        assert "nginx refused the certificate and key given" in broken.output
        assert "key values mismatch" in broken.output, broken.output[-3000:]
        assert handshake(ssl.TLSVersion.TLSv1_2)[1] == ssl.PEM_cert_to_DER_cert(certificate)
        assert predict("/predict", verify=str(tmp_path / "given.crt")).status_code == 200
    finally:
        restored = converge_nginx(tmp_path)
        print(f"the nginx role converged thrice: {time.monotonic() - started:.0f} s")
    assert restored.returncode == 0, restored.output
    assert handshake(ssl.TLSVersion.TLSv1_2)[1] == generated
    assert not host.file(f"{TLS_DIR}/given.pem").exists
    assert predict("/predict", allow_redirects=False).status_code == 200


def test_no_request_fails_across_a_swap_under_load_over_https(host, tmp_path: Path) -> None:
    """20 kept-alive TLS connections against /predict while swap.yml runs (its reload's
    drain included), from 3 s before until 3 s after; 300 s only bounds a hung swap.
    Production is swapped back afterwards."""
    production = json.loads(host.file(FACT_FILE).content_string)["active_colour"]
    other = idle_colour(production)
    try:
        with PredictLoad(tmp_path, connections=20, limit_s=300, base_url=HTTPS_URL) as wrk:
            time.sleep(3)
            swap = run_playbook("swap.yml", "-e", f"target={other}")
            time.sleep(3)
        print(wrk.output)
        assert swap.returncode == 0 and swap.changed > 0, swap.output
        assert predict("/predict").headers["X-Model-Colour"] == other
        load = wrk.summary()
        assert load.requests > 500
        assert load.failed == 0, wrk.output
    finally:
        assert run_playbook("swap.yml", "-e", f"target={production}").returncode == 0
