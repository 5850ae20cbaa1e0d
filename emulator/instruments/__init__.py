"""Firmware of the emulated instruments: one module per role, each a view on a World.

:func:`make_instruments` builds every instrument a world declares, keyed by its VISA
resource string, together with the pyvisa-sim YAML that describes its static surface.
"""

from __future__ import annotations

import copy
import functools
import os
from typing import TYPE_CHECKING, Any

from emulator.scpi import DeviceSpec
from emulator.scpi import load_spec as _load_spec

if TYPE_CHECKING:
    from emulator.world import World

SPEC_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "specs")


def spec_path(role: str) -> str:
    """Path of the pyvisa-sim 1.1 YAML of ``role`` (transmitter, receiver, ...)."""
    return os.path.join(SPEC_DIR, f"{role}.yaml")


@functools.lru_cache(maxsize=32)
def _cached_spec(path: str, device: str) -> DeviceSpec:
    return _load_spec(path, device)


def load_spec(path: str, device: str) -> DeviceSpec:
    """A private copy of a parsed spec (YAML parsing is cached per process)."""
    return copy.deepcopy(_cached_spec(path, device))


def _serial(idn: str, n: int) -> str:
    parts = idn.split(",")
    if len(parts) == 4:
        parts[2] = f"SN{n:04d}"
    return ",".join(parts)


def make_instruments(world: World) -> tuple[dict[str, Any], dict[str, tuple[str, str]]]:
    """(resource -> firmware, resource -> (YAML path, device name)) for ``world``."""
    from emulator.instruments.otdr import Otdr
    from emulator.instruments.powermeter import PowerMeter
    from emulator.instruments.receiver import Receiver
    from emulator.instruments.switch import OpticalSwitch, SerialSwitch
    from emulator.instruments.transmitter import Transmitter

    made: dict[str, Any] = {}
    specs: dict[str, tuple[str, str]] = {}

    def add(resource: str, role: str, fw: Any) -> None:
        made[resource] = fw
        specs[resource] = (spec_path(role), role)

    tx_spec = load_spec(spec_path("transmitter"), "transmitter")
    add(world.tx.resource, "transmitter", Transmitter(tx_spec, world, world.tx.resource))
    if world.switch is not None:
        if world.switch.kind == "scpi":
            spec = load_spec(spec_path("switch"), "switch")
            add(world.switch.resource, "switch", OpticalSwitch(spec, world, world.switch.resource))
        else:
            add(world.switch.resource, "switch_serial", SerialSwitch(world, world.switch.resource))
    if world.otdr_resource is not None:
        spec = load_spec(spec_path("otdr"), "otdr")
        add(world.otdr_resource, "otdr", Otdr(spec, world, world.otdr_resource))
    for name in world.links:
        link = world.link_map[name]
        if link.receiver is not None:
            spec = load_spec(spec_path("receiver"), "receiver")
            fw = Receiver(spec, world, link.receiver)
            fw.idn = _serial(fw.idn, link.port)
            add(link.receiver.resource, "receiver", fw)
        if link.powermeter is not None:
            spec = load_spec(spec_path("powermeter"), "powermeter")
            fw = PowerMeter(spec, world, link.powermeter)
            fw.idn = _serial(fw.idn, link.port)
            add(link.powermeter.resource, "powermeter", fw)
    return made, specs
