"""quartz's import switches off HTTPS certificate checks process-wide; the worker undoes it.

Proved on a real TLS connection: a local HTTPS server with a self-signed certificate, reached
with `http.client` (which uses `ssl._create_default_https_context`), from fresh interpreters
so quartz's module-level line really runs.
"""

from __future__ import annotations

import datetime as dt
import http.server
import ssl
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.forecaster import worker

ROOT = Path(__file__).resolve().parents[3]


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def https_port(tmp_path: Path) -> Iterator[int]:
    """An HTTPS server on 127.0.0.1 whose certificate nobody trusts."""
    cert, key = _self_signed(tmp_path)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def _connect_after(import_code: str, port: int) -> str:
    """In a fresh interpreter: run `import_code`, then GET the untrusted server."""
    code = textwrap.dedent(
        f"""
        import http.client, ssl, sys
        {import_code}
        print("verifying" if ssl._create_default_https_context is ssl.create_default_context
              else "NOT verifying")
        connection = http.client.HTTPSConnection("127.0.0.1", {port}, timeout=10)
        try:
            connection.request("GET", "/")
            print("connected", connection.getresponse().status)
        except ssl.SSLCertVerificationError as err:
            print("refused", err.verify_message)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_importing_quartz_alone_turns_certificate_checks_off(https_port: int) -> None:
    out = _connect_after("import quartz_solar_forecast.data", https_port)
    assert "NOT verifying" in out.splitlines()
    assert "connected 200" in out  # the untrusted certificate was accepted: the danger is real


def test_import_quartz_puts_certificate_checks_back(https_port: int) -> None:
    out = _connect_after(
        "from services.forecaster.worker import import_quartz; q = import_quartz(); "
        "assert 'quartz_solar_forecast.data' in sys.modules",
        https_port,
    )
    assert "verifying" in out.splitlines()
    assert "NOT verifying" not in out
    assert "refused" in out
    assert "self-signed certificate" in out


def test_the_running_worker_verifies_certificates(quartz: worker.Quartz) -> None:
    # in this process quartz has been imported through the worker: checks are on
    assert ssl._create_default_https_context is ssl.create_default_context
    assert quartz.data.ssl._create_default_https_context is ssl.create_default_context


def test_import_quartz_restores_even_a_custom_context(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the process had before (here: a custom factory) is what it has after."""

    def custom() -> ssl.SSLContext:
        return ssl.create_default_context()

    monkeypatch.setattr(ssl, "_create_default_https_context", custom)
    monkeypatch.delitem(sys.modules, "quartz_solar_forecast.data")  # re-run its module code
    monkeypatch.delitem(sys.modules, "quartz_solar_forecast.forecast")
    quartz = worker.import_quartz()
    assert ssl._create_default_https_context is custom
    assert quartz.data.get_nwp is not None
