"""TLS for API v2: the HomeWizard CA, and the device's name in its certificate.

A device's certificate is signed by HomeWizard's "Appliance Access CA" and names the device
`appliance/<type>/<serial>`, e.g. `appliance/p1dongle/5c2fafaabbcc`: `<type>` is a legacy
name (see CERT_PRODUCT_TYPES), `<serial>` the 12 hexadecimal digits of `GET /api`. Real
devices carry that name as the subject's commonName (CN); newer ones add a subjectAltName
DNS entry with another name. OpenSSL's hostname check ignores the CN as soon as there is
any DNS entry, so it cannot check this name; the check is done here instead, on the
verified certificate, at the end of the TLS handshake, before a byte of the request (and
its token) is sent:

- the chain must verify against the CA (always; never `verify=False`);
- the name `appliance/<type>/<serial>` must appear as the CN or as a SAN DNS entry
  (compared case-insensitively), with `<type>` and `<serial>` as far as they are known.

What is known comes from a `DeviceIdentity`. With the serial unknown (the devices file has
none), the first connection accepts any CA-signed certificate of the right type and
records its serial; the client then checks that `GET /api` reports that same serial and
pins it: from then on every connection must name exactly that device (trust on first use,
within the CA).
"""

from __future__ import annotations

import re
import ssl
from importlib import resources
from pathlib import Path
from typing import Any

from shared.homewizard._http import NameMismatch
from shared.homewizard.errors import CertificateError

#: `product_type` (as `GET /api` says it) → the type in the certificate's name.
CERT_PRODUCT_TYPES: dict[str, str] = {
    "HWE-P1": "p1dongle",
    "HWE-SKT": "energysocket",
    "HWE-DSP": "display",
    "HWE-KWH1": "energymeter",
    "HWE-KWH3": "energymeter",
    "SDM230-wifi": "energymeter",
    "SDM630-wifi": "energymeter",
    "HWE-WTR": "watermeter",
    "HWE-BAT": "battery",
}

CA_RESOURCE = "homewizard-ca.pem"

_NAME = re.compile(r"appliance/([^/\s]+)/([^/\s]+)", re.IGNORECASE)


def certificate_type(product_type: str) -> str | None:
    """The certificate's type for a product type ("HWE-BAT" → "battery").

    A certificate type itself ("battery") is returned as is; unknown → None.
    """
    if product_type in CERT_PRODUCT_TYPES:
        return CERT_PRODUCT_TYPES[product_type]
    lowered = product_type.lower()
    if lowered in CERT_PRODUCT_TYPES.values():
        return lowered
    for known, cert_type in CERT_PRODUCT_TYPES.items():
        if known.lower() == lowered:
            return cert_type
    return None


def certificate_name(product_type: str, serial: str) -> str:
    """The name a device's certificate carries: `appliance/<type>/<serial>`."""
    cert_type = certificate_type(product_type)
    if cert_type is None:
        raise ValueError(f"unknown HomeWizard product type {product_type!r}")
    return f"appliance/{cert_type}/{serial.lower()}"


def bundled_ca() -> str:
    """The HomeWizard "Appliance Access CA" certificate shipped with this package (PEM)."""
    return resources.files("shared.homewizard").joinpath(CA_RESOURCE).read_text("ascii")


def _names(cert: dict[str, Any]) -> list[str]:
    """The subject's commonName values and the subjectAltName DNS entries."""
    names: list[str] = []
    for rdn in cert.get("subject", ()):
        names.extend(value for key, value in rdn if key == "commonName")
    names.extend(value for key, value in cert.get("subjectAltName", ()) if key == "DNS")
    return names


class DeviceIdentity:
    """What a device's certificate must name; the serial can be pinned later (TOFU)."""

    def __init__(self, *, cert_type: str | None = None, serial: str | None = None) -> None:
        self.cert_type = cert_type.lower() if cert_type else None
        self.serial = serial.lower() if serial else None
        #: The serial named by the last certificate accepted without a pinned serial.
        self.seen_serial: str | None = None

    @property
    def expected(self) -> str:
        return f"appliance/{self.cert_type or '<any type>'}/{self.serial or '<any serial>'}"

    def pin(self, serial: str) -> None:
        self.serial = serial.lower()

    def check(self, cert: dict[str, Any]) -> None:
        """Accept the (chain-verified) certificate or raise NameMismatch."""
        names = _names(cert)
        found = [
            (m.group(1).lower(), m.group(2).lower())
            for m in (_NAME.fullmatch(name) for name in names)
            if m is not None
        ]
        if self.cert_type is None and self.serial is None:  # CA check only (pairing)
            self.seen_serial = found[0][1] if found else None
            return
        matching = [
            (cert_type, serial)
            for cert_type, serial in found
            if (self.cert_type is None or cert_type == self.cert_type)
            and (self.serial is None or serial == self.serial)
        ]
        if not matching:
            shown = ", ".join(names[:3]) or "no name"
            raise NameMismatch(f"certificate names {shown}, expected {self.expected}")
        if self.serial is None:
            self.seen_serial = matching[0][1]


def device_ssl_context(identity: DeviceIdentity, ca_file: Path | None, host: str) -> ssl.SSLContext:
    """A client context trusting only the CA (`ca_file`, else the bundled HomeWizard CA),
    checking the chain always and the device's name per `identity` (see module doc)."""
    try:
        if ca_file is None:
            context = ssl.create_default_context(cadata=bundled_ca())
        else:
            context = ssl.create_default_context(cafile=str(ca_file))
    except FileNotFoundError:
        raise CertificateError(host, f"CA file {ca_file}: not found") from None
    except (OSError, ssl.SSLError, ValueError) as err:
        raise CertificateError(host, f"CA file {ca_file}: cannot load ({err})") from None
    # The device name is checked by the handshake hooks below, not by OpenSSL's hostname
    # check; the chain itself stays fully verified (CERT_REQUIRED).
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    # HomeWizard's CA is an X.509 v1 certificate without extensions: strict mode (the
    # default from Python 3.13) would refuse it.
    context.verify_flags &= ~ssl.VERIFY_X509_STRICT

    class _CheckedObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            super().do_handshake()
            identity.check(self.getpeercert() or {})

    class _CheckedSocket(ssl.SSLSocket):
        def do_handshake(self, block: bool = False) -> None:
            super().do_handshake(block)
            identity.check(self.getpeercert() or {})

    context.sslobject_class = _CheckedObject
    context.sslsocket_class = _CheckedSocket
    return context
