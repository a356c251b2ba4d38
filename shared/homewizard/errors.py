"""The errors of the HomeWizard clients: one narrow hierarchy, every one naming its device.

    HomeWizardError                 base: `.host`, `.message`; str() is "<host>: <message>"
    ├── DeviceUnreachableError      connection refused, DNS, network down, TLS handshake failure
    ├── DeviceTimeoutError          no answer in time (after the retries the request allows)
    │   └── PairingTimeoutError     the button was not pressed before `create_user` gave up
    ├── UnauthorizedError           API v2: the token was refused (401 / user:unauthorized)
    ├── ApiDisabledError            API v1: "local API" switched off in the app (403 / error 202)
    ├── InvalidResponseError        garbage, truncated JSON, wrong types, 5xx, refused requests
    │   └── SwitchLockedError       API v1 error 8: not modifiable (off while switch_lock is on)
    ├── UnsupportedError            the endpoint does not exist on this device (404)
    └── CertificateError            TLS: not signed by the CA, or not this device's name

No message ever contains a token: the clients never put one in, and the transports scrub the
token out of anything a device or library sent back before raising.
"""

from __future__ import annotations


class HomeWizardError(Exception):
    """A HomeWizard device could not be used; `host` names it, `message` says why."""

    def __init__(self, host: str, message: str) -> None:
        super().__init__(f"{host}: {message}")
        self.host = host
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}(host={self.host!r}, message={self.message!r})"


class DeviceUnreachableError(HomeWizardError):
    """No connection: refused, unknown host, network down, or the TLS handshake failed."""


class DeviceTimeoutError(HomeWizardError):
    """The device did not answer in time (after the retries the request allows)."""


class PairingTimeoutError(DeviceTimeoutError):
    """`create_user` waited for the button press until its timeout."""


class UnauthorizedError(HomeWizardError):
    """API v2: the token is missing, wrong or revoked (401, `user:unauthorized`)."""


class ApiDisabledError(HomeWizardError):
    """API v1: the device's local API is disabled ("Local API" in the HomeWizard app)."""


class InvalidResponseError(HomeWizardError):
    """The device answered something unusable, or refused the request.

    `code` is the device's error code when it gave one: the v1 error id as a string
    (e.g. "7") or the v2 code (e.g. "json:parameter-invalid-type:mode").
    """

    def __init__(self, host: str, message: str, *, code: str | None = None) -> None:
        super().__init__(host, message)
        self.code = code


class SwitchLockedError(InvalidResponseError):
    """API v1 error 8 "parameter is not modifiable": e.g. an Energy Socket cannot be
    switched off while its `switch_lock` is on. Nothing was changed on the device."""


class UnsupportedError(HomeWizardError):
    """This device has no such endpoint (404), or does not speak this API version."""


class CertificateError(HomeWizardError):
    """TLS verification failed: not signed by the trusted CA, or not this device's name."""
