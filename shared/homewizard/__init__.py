"""Typed asyncio clients for HomeWizard devices' local APIs (v1: HTTP, v2: HTTPS + token).

    from shared.homewizard import client_for, HomeWizardError
    async with client_for(devices.p1) as p1:
        grid = await p1.measurement()          # Measurement, the same for v1 and v2

- `V1Client` (v1.py): P1 meter, Energy Socket, kWh meter; `socket_state`/`set_socket_state`.
- `V2Client` (v2.py): Plug-In Battery, P1 meter, kWh meter; `batteries`/`set_batteries` on
  the P1 meter; TLS against the bundled HomeWizard CA with the device-name check (tls.py).
- `create_user` (v2.py): pairing, i.e. the token (`hwsched pair HOST`).
- Errors (errors.py): one hierarchy under HomeWizardError; never a token in a message.
"""

from __future__ import annotations

from pathlib import Path
from typing import overload

from shared.config import BatteryConfig, P1Config, SocketConfig
from shared.homewizard.errors import (
    ApiDisabledError,
    CertificateError,
    DeviceTimeoutError,
    DeviceUnreachableError,
    HomeWizardError,
    InvalidResponseError,
    PairingTimeoutError,
    SwitchLockedError,
    UnauthorizedError,
    UnsupportedError,
)
from shared.homewizard.models import (
    BATTERY_MODES,
    BATTERY_PERMISSIONS,
    BatteriesState,
    BatteryMode,
    DeviceInfo,
    Measurement,
    SocketState,
    SystemInfo,
)
from shared.homewizard.tls import CERT_PRODUCT_TYPES, certificate_name, certificate_type
from shared.homewizard.v1 import V1Client
from shared.homewizard.v2 import V2Client, create_user

#: Either client: both have `device_info()`, `measurement()`, `aclose()`, `host`, and are
#: async context managers.
DeviceClient = V1Client | V2Client


@overload
def client_for(
    device: P1Config | SocketConfig, *, timeout_s: float = 5.0, ca_file: Path | None = None
) -> V1Client: ...
@overload
def client_for(
    device: BatteryConfig, *, timeout_s: float = 5.0, ca_file: Path | None = None
) -> V2Client: ...
def client_for(
    device: P1Config | SocketConfig | BatteryConfig,
    *,
    timeout_s: float = 5.0,
    ca_file: Path | None = None,
) -> V1Client | V2Client:
    """The client for a configured device.

    - HWE-SKT → V1Client (measurement, socket state and switching).
    - HWE-P1 → V1Client (measurement, on `port`). Its API v2 (`/api/batteries`,
      `/api/system`) is `p1_v2_client`, when the P1's own token is configured.
    - HWE-BAT → V2Client with the battery's `user_info.token` on `v2_port` (else `port`,
      else 443), certificate type `battery`, serial pinned on first use; `ca_file`
      replaces the bundled CA.
    """
    if isinstance(device, BatteryConfig):
        return V2Client(
            device.ip_address,
            device.user_info.token.get_secret_value(),
            device.v2_port if device.v2_port is not None else device.port,
            product_type=device.device_type,
            ca_file=ca_file,
            timeout_s=timeout_s,
        )
    return V1Client(device.ip_address, device.port, timeout_s=timeout_s)


def p1_v2_client(
    p1: P1Config, token: str, *, timeout_s: float = 5.0, ca_file: Path | None = None
) -> V2Client:
    """The P1 meter's API v2 client (`/api/batteries`, `/api/system`) with its own `token`
    (`p1.battery_token`: a battery's token is not valid on it), on `v2_port` (None = 443)."""
    return V2Client(
        p1.ip_address,
        token,
        p1.v2_port,
        product_type=p1.device_type,
        ca_file=ca_file,
        timeout_s=timeout_s,
    )


__all__ = [
    "BATTERY_MODES",
    "BATTERY_PERMISSIONS",
    "CERT_PRODUCT_TYPES",
    "ApiDisabledError",
    "BatteriesState",
    "BatteryMode",
    "CertificateError",
    "DeviceClient",
    "DeviceInfo",
    "DeviceTimeoutError",
    "DeviceUnreachableError",
    "HomeWizardError",
    "InvalidResponseError",
    "Measurement",
    "PairingTimeoutError",
    "SocketState",
    "SwitchLockedError",
    "SystemInfo",
    "UnauthorizedError",
    "UnsupportedError",
    "V1Client",
    "V2Client",
    "certificate_name",
    "certificate_type",
    "client_for",
    "create_user",
    "p1_v2_client",
]
