"""Scenario files: a timeline of faults the world applies as its virtual clock passes them.

A scenario is YAML (or the equivalent dict/list): either a list of entries or a mapping
with an ``events`` list. Each entry has ``at_s`` (virtual seconds after the scenario is
loaded) and an ``action``::

    - {at_s: 5,  action: bend, link: link1, position_km: 7.2, loss_db: 1.5}
    - {at_s: 8,  action: tap, link: link1, position_km: 12.0, loss_db: 0.5, excess_noise: 0.02}
    - {at_s: 9,  action: connector, link: link1, position_km: 0.0, loss_db: 0.8}
    - {at_s: 10, action: classical, link: link1, channel: 38, power_dbm: 3}
    - {at_s: 12, action: drift, which: tx, delta_hz: 2.0e6}
    - {at_s: 20, action: remove, link: link1, position_km: 7.2, kind: bend}
    - {at_s: 30, action: cut, link: link1, position_km: 18.5}

The format is documented in docs/emulator.md. Parsing validates every field and raises
:class:`emulator.world.ConfigError` naming it (``scenario[2].loss_db: ...``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import yaml

ACTIONS = ("bend", "tap", "cut", "connector", "splice", "remove", "classical", "drift")


class ConfigError(ValueError):
    """Bad world/emulator configuration; the message names the field path."""


@dataclass(order=True)
class ScenarioEvent:
    """One timeline entry: ``action`` with its validated parameters at virtual time ``at_s``."""

    at_s: float
    order: int
    action: str = field(compare=False)
    params: dict[str, Any] = field(compare=False, default_factory=dict)


_FIELDS: dict[str, dict[str, tuple[str, bool]]] = {
    # action -> field -> (type, required)
    "bend": {"link": ("str", True), "position_km": ("float", True), "loss_db": ("float", True)},
    "tap": {
        "link": ("str", True),
        "position_km": ("float", True),
        "loss_db": ("float", True),
        "excess_noise": ("float", False),
    },
    "cut": {
        "link": ("str", True),
        "position_km": ("float", True),
        "reflectance_db": ("float", False),
    },
    "connector": {
        "link": ("str", True),
        "position_km": ("float", True),
        "loss_db": ("float", True),
        "reflectance_db": ("float", False),
    },
    "splice": {"link": ("str", True), "position_km": ("float", True), "loss_db": ("float", True)},
    "remove": {"link": ("str", True), "position_km": ("float", True), "kind": ("str", False)},
    "classical": {
        "link": ("str", True),
        "channel": ("int", True),
        "power_dbm": ("float|none", True),
    },
    "drift": {"which": ("str", True), "delta_hz": ("float", True)},
}


def _convert(value: Any, kind: str, where: str) -> Any:
    if kind == "str":
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: must be a non-empty string, got {value!r}")
        return value
    if kind == "float|none":
        if value is None:
            return None
        kind = "float"
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
            raise ConfigError(f"{where}: must be an integer, got {value!r}")
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: must be a number, got {value!r}")
    if not math.isfinite(float(value)):
        raise ConfigError(f"{where}: must be finite, got {value!r}")
    return float(value)


def parse_scenario(
    source: str | os.PathLike | dict | list, where: str = "scenario"
) -> list[ScenarioEvent]:
    """Validate a scenario (file path, mapping with ``events`` or list) into sorted events.

    Semantic checks that need the world (link names, positions within the link) are done
    when the world loads the scenario.
    """
    data: Any = source
    if isinstance(source, str | os.PathLike):
        try:
            with open(source, encoding="utf-8") as fh:
                data = yaml.safe_load(fh)
        except OSError as exc:
            raise ConfigError(
                f"{where}: cannot read scenario file {os.fspath(source)!r}: {exc}"
            ) from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{where}: {os.fspath(source)} is not valid YAML: {exc}") from exc
    if isinstance(data, dict):
        extra = set(data) - {"events"}
        if extra:
            raise ConfigError(f"{where}: unknown key(s) {sorted(extra)} (expected 'events')")
        data = data.get("events")
    if data is None:
        return []
    if not isinstance(data, list):
        raise ConfigError(f"{where}: must be a list of events, got {type(data).__name__}")
    events: list[ScenarioEvent] = []
    for i, entry in enumerate(data):
        at = f"{where}[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{at}: must be a mapping, got {entry!r}")
        if "at_s" not in entry:
            raise ConfigError(f"{at}.at_s: missing")
        at_s = _convert(entry["at_s"], "float", f"{at}.at_s")
        if at_s < 0:
            raise ConfigError(f"{at}.at_s: must be >= 0, got {at_s}")
        action = entry.get("action")
        if action not in ACTIONS:
            raise ConfigError(f"{at}.action: must be one of {', '.join(ACTIONS)}, got {action!r}")
        spec = _FIELDS[action]
        extra = set(entry) - set(spec) - {"at_s", "action"}
        if extra:
            raise ConfigError(f"{at}: unknown field(s) {sorted(extra)} for action {action!r}")
        params: dict[str, Any] = {}
        for name, (kind, required) in spec.items():
            if name not in entry:
                if required:
                    raise ConfigError(f"{at}.{name}: missing (required by {action!r})")
                continue
            params[name] = _convert(entry[name], kind, f"{at}.{name}")
        for name in ("loss_db", "excess_noise", "position_km"):
            if params.get(name) is not None and params[name] < 0:
                raise ConfigError(f"{at}.{name}: must be >= 0, got {params[name]}")
        if params.get("reflectance_db") is not None and params["reflectance_db"] > 0:
            raise ConfigError(f"{at}.reflectance_db: must be <= 0, got {params['reflectance_db']}")
        events.append(ScenarioEvent(at_s, i, action, params))
    events.sort()
    return events
