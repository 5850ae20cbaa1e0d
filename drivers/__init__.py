"""Instrument drivers, one class per role; the same code runs on ``@qkdsim``, ``@py`` and real VISA.

``open_instrument(role, resource, rm=None)`` opens the driver for a role by name. Drivers
import only pyvisa, pyserial, numpy and ``drivers.*``: they learn everything through SCPI.
"""

from __future__ import annotations

from typing import Any

from drivers.base import Instrument, InstrumentError, control, in_range, in_set, measurement
from drivers.otdr import Otdr, OtdrEvent, OtdrTrace
from drivers.powermeter import PowerMeter
from drivers.receiver import Capture, Receiver
from drivers.switch import DiconSwitch, OpticalSwitch
from drivers.transmitter import Transmitter

__all__ = [
    "ROLES",
    "Capture",
    "DiconSwitch",
    "Instrument",
    "InstrumentError",
    "OpticalSwitch",
    "Otdr",
    "OtdrEvent",
    "OtdrTrace",
    "PowerMeter",
    "Receiver",
    "Transmitter",
    "control",
    "in_range",
    "in_set",
    "measurement",
    "open_instrument",
]

ROLES: dict[str, type] = {
    "transmitter": Transmitter,
    "receiver": Receiver,
    "otdr": Otdr,
    "switch": OpticalSwitch,
    "dicon": DiconSwitch,
    "powermeter": PowerMeter,
}


def open_instrument(role: str, resource: str | Any, rm: Any = None, **kwargs: Any) -> Any:
    """Open the driver for ``role`` on ``resource``.

    ``role`` is one of ``transmitter``, ``receiver``, ``otdr``, ``switch``, ``powermeter``
    (a trailing index such as ``receiver2`` is allowed) or ``dicon``. A ``switch`` on a
    serial resource (``ASRL...``, a device path or a ``socket://`` URL) gets the
    :class:`DiconSwitch` driver.
    """
    key = role.strip().lower().rstrip("0123456789")
    key = {
        "power_meter": "powermeter",
        "pm": "powermeter",
        "tx": "transmitter",
        "rx": "receiver",
    }.get(key, key)
    if key not in ROLES:
        raise ValueError(f"unknown instrument role {role!r}; expected one of {sorted(ROLES)}")
    cls = ROLES[key]
    if key == "switch" and isinstance(resource, str):
        r = resource.strip()
        if r.upper().startswith("ASRL") or r.startswith(
            ("/dev/", "socket://", "rfc2217://", "loop://", "COM")
        ):
            cls = DiconSwitch
    return cls(resource, rm, **kwargs)
