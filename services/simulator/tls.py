"""The simulator's own certificate authority and the v2 devices' certificates.

Real HomeWizard devices present a certificate signed by the HomeWizard CA, for the name
`appliance/<type>/<serial>` (e.g. `appliance/p1dongle/5c2fafaabbcc`), which a client checks
instead of the IP address. The simulator does the same with its own CA: a client trusts the
CA's PEM file and checks the same name.

Each leaf certificate carries the name twice: as the subject's common name (as the real
devices, for clients that set `hostname_checks_common_name`) and as a subjectAltName
DNSName `appliance/<type>/<serial>`, slashes and all (cryptography writes it as it is, and
Python's `ssl` hostname check, OpenSSL's X509_check_host, accepts it as an exact match).

Keys are EC P-256. Validity is taken from the clock given (real time by default: the
client checks it against its own wall clock, whatever the simulated date).
"""

from __future__ import annotations

import os
import ssl
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
CA_NAME = "hwsched simulator CA"


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hwsched simulator"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write_private(path: Path, data: bytes) -> None:
    """Write a key readable by the owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


class CertificateAuthority:
    """A CA that signs the simulated devices' server certificates."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self.key = key
        self.cert = cert

    @classmethod
    def create(cls, now: datetime) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        name = _name(CA_NAME)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @classmethod
    def load_or_create(
        cls, state_dir: Path, now: datetime, *, keep_key: bool
    ) -> tuple[CertificateAuthority, Path]:
        """The CA kept in `state_dir` if both files are there and still valid, else a new
        one; its certificate is (re)written to `state_dir/ca.pem`, and its key to
        `state_dir/ca-key.pem` (mode 600) only when `keep_key` (else it stays in memory)."""
        cert_path, key_path = state_dir / CA_CERT_FILE, state_dir / CA_KEY_FILE
        if keep_key and cert_path.is_file() and key_path.is_file():
            try:
                cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
                key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
                if isinstance(key, ec.EllipticCurvePrivateKey) and (
                    cert.not_valid_after_utc > now + timedelta(days=30)
                ):
                    return cls(key, cert), cert_path
            except ValueError:
                pass  # unreadable: make a new one
        ca = cls.create(now)
        cert_path.write_bytes(ca.cert_pem())
        if keep_key:
            _write_private(
                key_path,
                ca.key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
            )
        return ca, cert_path

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, server_name: str, now: datetime) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM) for `server_name`, as CN and as SAN DNSName."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(server_name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=825))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(server_name)]), False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem

    def server_context(self, server_name: str, now: datetime, directory: Path) -> ssl.SSLContext:
        """A TLS server context presenting a fresh certificate for `server_name`.

        The certificate and key are written to `directory` (ssl loads chains from files);
        the file names are the name with `/` replaced by `_`.
        """
        cert_pem, key_pem = self.issue(server_name, now)
        stem = server_name.replace("/", "_")
        cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}-key.pem"
        cert_path.write_bytes(cert_pem + self.cert_pem())
        _write_private(key_path, key_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert_path, key_path)
        return context


def client_context(ca_path: Path | str) -> ssl.SSLContext:
    """A client context trusting the simulator's CA and checking the device name."""
    context = ssl.create_default_context(cafile=str(ca_path))
    context.hostname_checks_common_name = True
    return context
