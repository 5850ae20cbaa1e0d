"""The emulated world: fibre links, switch, lasers, clocks and detectors the instruments share.

Only this package knows the true channel. Instruments (``emulator/instruments``) are views
on one :class:`World`: what the transmitter emits through the switch is what the receiver
and the power meter at the far end of the routed link see, and what the OTDR traces.

The configuration schema (the ``emulator:`` section of a bench file) is documented in
docs/emulator.md; :meth:`World.from_config` validates it and raises :class:`ConfigError`
naming the offending field. Hidden hardware facts (laser detunings, clock offsets) are drawn
from the world's own ``numpy.random.Generator`` seeded by :attr:`World.seed`, so a world is
reproducible from its seed and two worlds never share state.
"""

from __future__ import annotations

import copy
import math
import os
import secrets
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from drivers import grid
from emulator import otdr_model, physics
from emulator.scenario import ConfigError, ScenarioEvent, parse_scenario

if TYPE_CHECKING:
    from emulator.scpi import ScpiDevice, SerialDevice

__all__ = ["ConfigError", "Emission", "FibreEvent", "Link", "World"]

SPEC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "specs")

EVENT_KINDS = ("connector", "splice", "bend", "tap", "cut")
DEFAULT_REFLECTANCE_DB = {"connector": -45.0, "cut": -30.0}
DEFAULT_ATTENUATION = {1310.0: 0.33, 1530.0: 0.20, 1550.0: 0.20, 1625.0: 0.22, 1650.0: 0.22}
BEND_DOUBLING_NM = 75.0
"""Macro-bend loss doubles every 75 nm towards longer wavelengths (referenced to 1550 nm)."""
READOUT_S = 0.2
"""Fixed readout time added to every acquisition (docs/physics.md, Time)."""


def _grid_wavelength_nm(channel: int) -> float:
    return grid.channel_to_wavelength(channel) * 1e9


# --------------------------------------------------------------------------- config helpers


def _num(
    d: dict,
    key: str,
    where: str,
    default: Any,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    allow_none: bool = False,
) -> Any:
    value = d.get(key, default)
    path = f"{where}.{key}" if where else key
    if value is None:
        if allow_none:
            return None
        raise ConfigError(f"{path}: missing")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{path}: must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"{path}: must be finite, got {value!r}")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ConfigError(f"{path}: must be {'>' if lo_open else '>='} {lo:g}, got {value:g}")
    if hi is not None and value > hi:
        raise ConfigError(f"{path}: must be <= {hi:g}, got {value:g}")
    return value


def _int(d: dict, key: str, where: str, default: Any, lo: int, hi: int) -> int:
    value = d.get(key, default)
    path = f"{where}.{key}" if where else key
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise ConfigError(f"{path}: must be an integer, got {value!r}")
    if not lo <= int(value) <= hi:
        raise ConfigError(f"{path}: must be in {lo}..{hi}, got {int(value)}")
    return int(value)


def _str(d: dict, key: str, where: str, default: str | None) -> str:
    value = d.get(key, default)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}.{key}: must be a non-empty string, got {value!r}")
    return value.strip()


def _section(
    d: dict, key: str, where: str, allowed: set[str], optional: bool = True
) -> dict | None:
    value = d.get(key, {} if optional else None)
    path = f"{where}.{key}" if where else key
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: must be a mapping, got {type(value).__name__}")
    extra = set(value) - allowed
    if extra:
        raise ConfigError(f"{path}: unknown key(s) {sorted(map(str, extra))}")
    return value


# --------------------------------------------------------------------------- the physical parts


@dataclass
class FibreEvent:
    """A point event on a link: connector, splice, bend, tap or cut."""

    kind: str
    position_km: float
    loss_db: float = 0.0
    reflectance_db: float | None = None
    excess_noise: float = 0.0

    def loss_at(self, wavelength_nm: float) -> float:
        """One-way loss in dB at ``wavelength_nm`` (inf for a cut; bends grow with lambda)."""
        if self.kind == "cut":
            return math.inf
        if self.kind == "bend":
            return self.loss_db * 2.0 ** ((wavelength_nm - 1550.0) / BEND_DOUBLING_NM)
        return self.loss_db

    def as_dict(self) -> dict:
        return {
            "kind": self.kind,
            "position_km": self.position_km,
            "loss_db": math.inf if self.kind == "cut" else self.loss_db,
            "reflectance_db": self.reflectance_db,
            "excess_noise": self.excess_noise,
        }


@dataclass
class Link:
    """One fibre link, on switch port ``port``."""

    name: str
    port: int
    length_km: float
    attenuation: dict[float, float]
    ior: float = 1.4682
    excess_noise: float = 0.0
    end_reflectance_db: float = -50.0
    raman_per_mw_km: float = 2e-4
    events: list[FibreEvent] = field(default_factory=list)
    classical: dict[int, float] = field(default_factory=dict)
    receiver: ReceiverHw | None = None
    powermeter: PowerMeterHw | None = None

    def attenuation_at(self, wavelength_nm: float) -> float:
        """Fibre attenuation in dB/km, linear between the configured wavelengths."""
        xs = sorted(self.attenuation)
        return float(np.interp(wavelength_nm, xs, [self.attenuation[x] for x in xs]))

    @property
    def cut_km(self) -> float | None:
        cuts = [e.position_km for e in self.events if e.kind == "cut"]
        return min(cuts) if cuts else None

    def loss_db(self, wavelength_nm: float) -> float:
        """Fibre + event loss over the whole link (inf if cut)."""
        total = self.attenuation_at(wavelength_nm) * self.length_km
        for e in self.events:
            total += e.loss_at(wavelength_nm)
        return total

    def tap_noise(self) -> float:
        return sum(e.excess_noise for e in self.events)


@dataclass
class LaserHw:
    """Hidden facts of one laser: detuning from its set frequency and linewidth."""

    detuning_hz: float
    linewidth_hz: float


@dataclass
class TransmitterHw:
    resource: str
    channel: int
    laser: LaserHw
    sync_channel: int
    sync: LaserHw
    ppm: float
    modulator_loss_db: float


@dataclass
class ReceiverHw:
    resource: str
    link: str
    lo: LaserHw
    ppm: float
    detector: physics.DetectorParams
    lo_ref_dbm: float


@dataclass
class PowerMeterHw:
    resource: str
    link: str
    filter_channel: int | None


@dataclass
class SwitchHw:
    resource: str
    kind: str
    ports: int
    insertion_loss_db: float
    route: int = 1


@dataclass
class Emission:
    """What the transmitter puts on its output port right now (set by its firmware)."""

    frequency_hz: float
    """Laser 1 set frequency (the hidden detuning is added by the world)."""
    power_w: float = 0.0
    """Mean optical output power P_out at the output port (0 when dark)."""
    waveform: physics.PeriodicWaveform | None = None
    """The DAC samples (I + iQ, int16 units) being played in a loop, or None."""
    dac_rate_hz: float = 1e9
    sync_frequency_hz: float = 0.0
    sync_power_w: float = 0.0


# --------------------------------------------------------------------------- the world


class World:
    """Fibre links, switch, lasers, clocks and detectors shared by one bench of instruments."""

    def __init__(self, config: dict, seed: int | None = None) -> None:
        self.seed: int = int(seed) if seed is not None else secrets.randbits(63)
        self.rng = np.random.default_rng(self.seed)
        self.now: float = 0.0
        self.lock = threading.RLock()
        self.log: list[tuple[float, str, dict]] = []
        self._config = copy.deepcopy(config)
        self._pending: list[ScenarioEvent] = []
        self._order = 0
        self._instruments: dict[str, ScpiDevice | SerialDevice] | None = None
        self._specs: dict[str, tuple[str, str]] = {}
        self._build(config)

    # ----- construction

    @classmethod
    def default(cls, seed: int | None = None) -> World:
        """One of each instrument on one 25 km link (switch 1x2, link on port 1)."""
        return cls.from_config(default_config(), seed=seed)

    @classmethod
    def from_config(cls, config: dict, seed: int | None = None) -> World:
        """Build a world from the ``emulator:`` section of a bench file (docs/emulator.md)."""
        if not isinstance(config, dict):
            raise ConfigError(f"emulator: must be a mapping, got {type(config).__name__}")
        if config.get("seed") is not None:
            s = config["seed"]
            if isinstance(s, bool) or not isinstance(s, int) or s < 0:
                raise ConfigError(f"seed: must be a non-negative integer, got {s!r}")
            if seed is None:
                seed = s
        return cls(config, seed=seed)

    def _uniform(self, value: float | None, span: float) -> float:
        return float(value) if value is not None else float(self.rng.uniform(-span, span))

    def _build(self, cfg: dict) -> None:
        allowed = {"seed", "transmitter", "switch", "otdr", "links", "scenario"}
        extra = set(cfg) - allowed
        if extra:
            raise ConfigError(f"emulator: unknown key(s) {sorted(map(str, extra))}")
        tx = _section(
            cfg,
            "transmitter",
            "",
            {
                "resource",
                "channel",
                "detuning_hz",
                "detuning_max_hz",
                "linewidth_hz",
                "ppm",
                "ppm_max",
                "modulator_loss_db",
                "sync",
            },
        )
        assert tx is not None
        w = "transmitter"
        det_max = _num(tx, "detuning_max_hz", w, 15e6, 0.0, 5e9)
        ppm_max = _num(tx, "ppm_max", w, 2.0, 0.0, 100.0)
        sync = _section(tx, "sync", w, {"channel", "detuning_hz", "linewidth_hz"}) or {}
        self.tx = TransmitterHw(
            resource=_str(tx, "resource", w, "TCPIP0::qkdsim-tx::inst0::INSTR"),
            channel=_int(tx, "channel", w, 34, grid.CHANNEL_MIN, grid.CHANNEL_MAX),
            laser=LaserHw(
                self._uniform(
                    _num(tx, "detuning_hz", w, None, -5e9, 5e9, allow_none=True), det_max
                ),
                _num(tx, "linewidth_hz", w, 5e3, 0.0, 1e8),
            ),
            sync_channel=_int(sync, "channel", f"{w}.sync", 40, grid.CHANNEL_MIN, grid.CHANNEL_MAX),
            sync=LaserHw(
                self._uniform(
                    _num(sync, "detuning_hz", f"{w}.sync", None, -5e9, 5e9, allow_none=True),
                    det_max,
                ),
                _num(sync, "linewidth_hz", f"{w}.sync", 1e5, 0.0, 1e9),
            ),
            ppm=self._uniform(_num(tx, "ppm", w, None, -1000.0, 1000.0, allow_none=True), ppm_max),
            modulator_loss_db=_num(tx, "modulator_loss_db", w, 6.0, 0.0, 40.0),
        )
        sw = _section(cfg, "switch", "", {"resource", "kind", "ports", "insertion_loss_db"})
        links_cfg = cfg.get("links")
        if not isinstance(links_cfg, list) or not links_cfg:
            raise ConfigError(f"links: must be a non-empty list of links, got {links_cfg!r}")
        if sw is not None:
            kind = sw.get("kind", "scpi")
            if kind not in ("scpi", "serial"):
                raise ConfigError(f"switch.kind: must be 'scpi' or 'serial', got {kind!r}")
            default_res = (
                "TCPIP0::qkdsim-switch::inst0::INSTR" if kind == "scpi" else "ASRL1::INSTR"
            )
            ports = _int(sw, "ports", "switch", max(2, len(links_cfg)), 1, 64)
            if ports < len(links_cfg):
                raise ConfigError(
                    f"switch.ports: {ports} ports cannot serve {len(links_cfg)} links"
                )
            self.switch: SwitchHw | None = SwitchHw(
                resource=_str(sw, "resource", "switch", default_res),
                kind=kind,
                ports=ports,
                insertion_loss_db=_num(sw, "insertion_loss_db", "switch", 0.8, 0.0, 20.0),
            )
        else:
            if len(links_cfg) != 1:
                raise ConfigError("switch: a world without a switch must have exactly one link")
            self.switch = None
        otdr = _section(cfg, "otdr", "", {"resource"})
        self.otdr_resource = (
            _str(otdr, "resource", "otdr", "TCPIP0::qkdsim-otdr::inst0::INSTR")
            if otdr is not None
            else None
        )
        self.link_map: dict[str, Link] = {}
        self.links: list[str] = []
        for i, lc in enumerate(links_cfg):
            link = self._build_link(lc, i)
            if link.name in self.link_map:
                raise ConfigError(f"links[{i}].name: duplicate link name {link.name!r}")
            self.link_map[link.name] = link
            self.links.append(link.name)
        resources: list[tuple[str, str]] = [(self.tx.resource, "transmitter")]
        if self.switch:
            resources.append((self.switch.resource, "switch"))
        if self.otdr_resource:
            resources.append((self.otdr_resource, "otdr"))
        for link in self.link_map.values():
            if link.receiver:
                resources.append((link.receiver.resource, f"links[{link.port - 1}].receiver"))
            if link.powermeter:
                resources.append((link.powermeter.resource, f"links[{link.port - 1}].powermeter"))
        seen: dict[str, str] = {}
        for res, where in resources:
            if res in seen:
                raise ConfigError(f"{where}.resource: {res!r} already used by {seen[res]}")
            seen[res] = where
        if cfg.get("scenario") is not None:
            self.load_scenario(cfg["scenario"])

    def _build_link(self, lc: Any, i: int) -> Link:
        w = f"links[{i}]"
        if not isinstance(lc, dict):
            raise ConfigError(f"{w}: must be a mapping, got {lc!r}")
        extra = set(lc) - {
            "name",
            "fibre",
            "excess_noise",
            "end_reflectance_db",
            "raman_per_mw_km",
            "events",
            "classical",
            "receiver",
            "powermeter",
        }
        if extra:
            raise ConfigError(f"{w}: unknown key(s) {sorted(map(str, extra))}")
        fib = _section(
            lc, "fibre", w, {"length_km", "attenuation_db_per_km", "ior"}, optional=False
        )
        if fib is None:
            raise ConfigError(f"{w}.fibre: missing (needs at least length_km)")
        length = _num(fib, "length_km", f"{w}.fibre", None, 0.0, 500.0, lo_open=True)
        att_cfg = fib.get("attenuation_db_per_km", None)
        if att_cfg is None:
            att = dict(DEFAULT_ATTENUATION)
        elif isinstance(att_cfg, dict):
            att = {}
            for k, v in att_cfg.items():
                where = f"{w}.fibre.attenuation_db_per_km[{k}]"
                try:
                    nm = float(k)
                except (TypeError, ValueError):
                    raise ConfigError(f"{where}: key must be a wavelength in nm") from None
                if not 800.0 <= nm <= 1700.0:
                    raise ConfigError(f"{where}: wavelength must be 800..1700 nm, got {nm:g}")
                att[nm] = _num({"v": v}, "v", "", None, 0.0, 10.0)
            if not att:
                raise ConfigError(f"{w}.fibre.attenuation_db_per_km: empty mapping")
        else:
            a = _num(fib, "attenuation_db_per_km", f"{w}.fibre", None, 0.0, 10.0)
            att = {nm: a + (v - 0.20) for nm, v in DEFAULT_ATTENUATION.items()}
        name = lc.get("name", f"link{i + 1}")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{w}.name: must be a non-empty string, got {name!r}")
        link = Link(
            name=name,
            port=i + 1,
            length_km=length,
            attenuation=att,
            ior=_num(fib, "ior", f"{w}.fibre", 1.4682, 1.3, 1.7),
            excess_noise=_num(lc, "excess_noise", w, 0.0, 0.0, 10.0),
            end_reflectance_db=_num(lc, "end_reflectance_db", w, -50.0, -90.0, 0.0),
            raman_per_mw_km=_num(lc, "raman_per_mw_km", w, 2e-4, 0.0, 1.0),
        )
        events = lc.get("events") or []
        if not isinstance(events, list):
            raise ConfigError(f"{w}.events: must be a list")
        for j, ev in enumerate(events):
            ew = f"{w}.events[{j}]"
            if not isinstance(ev, dict):
                raise ConfigError(f"{ew}: must be a mapping")
            extra = set(ev) - {"kind", "position_km", "loss_db", "reflectance_db", "excess_noise"}
            if extra:
                raise ConfigError(f"{ew}: unknown key(s) {sorted(map(str, extra))}")
            link.events.append(self._make_event(link, ev, ew))
        link.events.sort(key=lambda e: e.position_km)
        classical = lc.get("classical") or []
        if not isinstance(classical, list):
            raise ConfigError(f"{w}.classical: must be a list")
        for j, c in enumerate(classical):
            cw = f"{w}.classical[{j}]"
            if not isinstance(c, dict) or set(c) - {"channel", "power_dbm"}:
                raise ConfigError(f"{cw}: must be a mapping with channel and power_dbm")
            ch = _int(c, "channel", cw, None, grid.CHANNEL_MIN, grid.CHANNEL_MAX)
            link.classical[ch] = _num(c, "power_dbm", cw, None, -60.0, 30.0)
        rx = _section(
            lc,
            "receiver",
            w,
            {
                "resource",
                "eta",
                "v_el",
                "bandwidth_hz",
                "ppm",
                "ppm_max",
                "lo_detuning_hz",
                "detuning_max_hz",
                "lo_linewidth_hz",
                "lo_ref_dbm",
                "shot_rms_lsb",
            },
        )
        if rx is not None:
            rw = f"{w}.receiver"
            det_max = _num(rx, "detuning_max_hz", rw, 15e6, 0.0, 5e9)
            ppm_max = _num(rx, "ppm_max", rw, 2.0, 0.0, 100.0)
            lo_ref = _num(rx, "lo_ref_dbm", rw, 10.0, -10.0, 20.0)
            link.receiver = ReceiverHw(
                resource=_str(rx, "resource", rw, f"TCPIP0::qkdsim-rx{i + 1}::inst0::INSTR"),
                link=name,
                lo=LaserHw(
                    self._uniform(
                        _num(rx, "lo_detuning_hz", rw, None, -5e9, 5e9, allow_none=True), det_max
                    ),
                    _num(rx, "lo_linewidth_hz", rw, 5e3, 0.0, 1e8),
                ),
                ppm=self._uniform(
                    _num(rx, "ppm", rw, None, -1000.0, 1000.0, allow_none=True), ppm_max
                ),
                detector=physics.DetectorParams(
                    eta=_num(rx, "eta", rw, 0.65, 0.0, 1.0, lo_open=True),
                    v_el=_num(rx, "v_el", rw, 0.02, 0.0, 10.0),
                    bandwidth_hz=_num(rx, "bandwidth_hz", rw, 4e8, 1e6, 1e11),
                    lo_ref_w=grid.dbm_to_watt(lo_ref),
                    shot_rms_lsb=_num(rx, "shot_rms_lsb", rw, 100.0, 1.0, 1000.0),
                ),
                lo_ref_dbm=lo_ref,
            )
        pm = _section(lc, "powermeter", w, {"resource", "filter_channel"})
        if pm is not None:
            pw = f"{w}.powermeter"
            fc = pm.get("filter_channel", self.tx.sync_channel)
            if fc is not None:
                fc = _int(pm, "filter_channel", pw, self.tx.sync_channel, 1, grid.CHANNEL_MAX)
            link.powermeter = PowerMeterHw(
                resource=_str(pm, "resource", pw, f"TCPIP0::qkdsim-pm{i + 1}::inst0::INSTR"),
                link=name,
                filter_channel=fc,
            )
        return link

    def _make_event(self, link: Link, ev: dict, where: str) -> FibreEvent:
        kind = ev.get("kind")
        if kind not in EVENT_KINDS:
            raise ConfigError(
                f"{where}.kind: must be one of {', '.join(EVENT_KINDS)}, got {kind!r}"
            )
        pos = _num(ev, "position_km", where, None, 0.0, link.length_km)
        loss = _num(ev, "loss_db", where, 0.0, 0.0, 60.0)
        refl_default = DEFAULT_REFLECTANCE_DB.get(kind)
        refl = _num(ev, "reflectance_db", where, refl_default, -90.0, 0.0, allow_none=True)
        xi = _num(ev, "excess_noise", where, 0.0, 0.0, 10.0)
        return FibreEvent(kind, pos, loss, refl, xi)

    # ----- instruments

    def instruments(self) -> dict[str, ScpiDevice | SerialDevice]:
        """VISA resource string -> firmware object bound to this world (same objects every call)."""
        with self.lock:
            if self._instruments is None:
                self._instruments = self._make_instruments()
            return dict(self._instruments)

    def specs(self) -> dict[str, tuple[str, str]]:
        """Resource string -> (path of its pyvisa-sim YAML, device name in that YAML)."""
        self.instruments()
        return dict(self._specs)

    def _make_instruments(self) -> dict[str, ScpiDevice | SerialDevice]:
        from emulator.instruments import make_instruments

        made, specs = make_instruments(self)
        self._specs = specs
        return made

    def _firmware(self, resource: str | None) -> Any:
        if resource is None:
            return None
        return self.instruments().get(resource)

    def emission(self) -> Emission:
        """The transmitter's current output (dark before its firmware exists)."""
        fw = self._firmware(self.tx.resource)
        if fw is None:
            return Emission(frequency_hz=grid.channel_to_frequency(self.tx.channel))
        return fw.emission()

    # ----- clock and scenario

    def advance(self, seconds: float) -> None:
        """Move the virtual clock forward, firing scenario events as it passes them."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"advance: seconds must be finite and >= 0, got {seconds}")
        with self.lock:
            end = self.now + seconds
            while self._pending and self._pending[0].at_s <= end:
                ev = self._pending.pop(0)
                self.now = max(self.now, ev.at_s)
                self._apply(ev)
            self.now = end

    def next_event_time(self) -> float:
        """Virtual time of the next pending scenario event (inf if none)."""
        return self._pending[0].at_s if self._pending else math.inf

    def load_scenario(self, scenario: str | os.PathLike | dict | list) -> None:
        """Queue a timeline (times relative to now); validated against this world's links."""
        events = parse_scenario(scenario)
        for i, ev in enumerate(events):
            self._check_scenario_event(ev, f"scenario[{ev.order}]")
            events[i] = ScenarioEvent(self.now + ev.at_s, self._order, ev.action, ev.params)
            self._order += 1
        with self.lock:
            self._pending = sorted(self._pending + events)
            self.advance(0.0)

    def _check_scenario_event(self, ev: ScenarioEvent, where: str) -> None:
        p = ev.params
        if "link" in p:
            if p["link"] not in self.link_map:
                raise ConfigError(f"{where}.link: unknown link {p['link']!r} (have {self.links})")
            length = self.link_map[p["link"]].length_km
            if "position_km" in p and p["position_km"] > length:
                raise ConfigError(
                    f"{where}.position_km: {p['position_km']} beyond the link end ({length} km)"
                )
        if ev.action == "classical" and not grid.CHANNEL_MIN <= p["channel"] <= grid.CHANNEL_MAX:
            raise ConfigError(f"{where}.channel: must be an ITU channel 1..72, got {p['channel']}")
        if ev.action == "drift":
            self._laser(p["which"], where + ".which")
        if ev.action == "remove" and p.get("kind") is not None and p["kind"] not in EVENT_KINDS:
            raise ConfigError(f"{where}.kind: must be one of {', '.join(EVENT_KINDS)}")

    def _apply(self, ev: ScenarioEvent) -> None:
        p = dict(ev.params)
        a = ev.action
        if a in ("bend", "tap", "cut", "splice"):
            self.add_event(p.pop("link"), a, **p)
        elif a == "connector":
            self.degrade_connector(**p)
        elif a == "remove":
            self.remove_event(p["link"], p["position_km"], p.get("kind"))
        elif a == "classical":
            if p["power_dbm"] is None:
                self.remove_classical_channel(p["link"], p["channel"])
            else:
                self.add_classical_channel(p["link"], p["channel"], p["power_dbm"])
        elif a == "drift":
            self.drift_laser(p["which"], p["delta_hz"])

    # ----- fault injection

    def _link(self, link: str) -> Link:
        if link not in self.link_map:
            raise ValueError(f"unknown link {link!r} (have {self.links})")
        return self.link_map[link]

    def add_event(
        self,
        link: str,
        kind: str,
        position_km: float,
        loss_db: float = 0.0,
        reflectance_db: float | None = None,
        excess_noise: float = 0.0,
    ) -> None:
        """Add a connector, splice, bend, tap or cut at ``position_km`` on ``link``."""
        ln = self._link(link)
        spec: dict[str, Any] = {
            "kind": kind,
            "position_km": position_km,
            "loss_db": loss_db,
            "excess_noise": excess_noise,
        }
        if reflectance_db is not None:
            spec["reflectance_db"] = reflectance_db
        try:
            ev = self._make_event(ln, spec, "event")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        with self.lock:
            ln.events.append(ev)
            ln.events.sort(key=lambda e: e.position_km)
            self.log.append((self.now, "add_event", {"link": link, **ev.as_dict()}))

    def degrade_connector(
        self, link: str, position_km: float, loss_db: float, reflectance_db: float | None = None
    ) -> None:
        """Add ``loss_db`` to the connector at ``position_km`` (within 1 m), or add one."""
        ln = self._link(link)
        with self.lock:
            for e in ln.events:
                if e.kind == "connector" and abs(e.position_km - position_km) <= 1e-3:
                    e.loss_db += loss_db
                    if reflectance_db is not None:
                        e.reflectance_db = reflectance_db
                    self.log.append((self.now, "degrade_connector", {"link": link, **e.as_dict()}))
                    return
        self.add_event(link, "connector", position_km, loss_db, reflectance_db)

    def remove_event(self, link: str, position_km: float, kind: str | None = None) -> None:
        """Remove the events within 1 m of ``position_km`` (only of ``kind`` if given)."""
        ln = self._link(link)
        with self.lock:
            keep = [
                e
                for e in ln.events
                if abs(e.position_km - position_km) > 1e-3 or (kind is not None and e.kind != kind)
            ]
            if len(keep) == len(ln.events):
                raise ValueError(f"no {kind or 'event'} at {position_km} km on link {link!r}")
            ln.events = keep
            self.log.append((self.now, "remove_event", {"link": link, "position_km": position_km}))

    def add_classical_channel(self, link: str, channel: int, power_dbm: float) -> None:
        """A classical DWDM channel launched into ``link`` (adds Raman noise)."""
        ln = self._link(link)
        grid.channel_to_frequency(channel)
        if not math.isfinite(power_dbm) or not -60.0 <= power_dbm <= 30.0:
            raise ValueError(f"classical power must be -60..30 dBm, got {power_dbm}")
        with self.lock:
            ln.classical[int(channel)] = float(power_dbm)
            self.log.append(
                (self.now, "classical", {"link": link, "channel": channel, "power_dbm": power_dbm})
            )

    def remove_classical_channel(self, link: str, channel: int) -> None:
        ln = self._link(link)
        with self.lock:
            ln.classical.pop(int(channel), None)

    def _laser(self, which: str, where: str = "which") -> LaserHw:
        if which == "tx":
            return self.tx.laser
        if which == "sync":
            return self.tx.sync
        if which.startswith("lo:"):
            name = which[3:]
            if name in self.link_map and self.link_map[name].receiver is not None:
                return self.link_map[name].receiver.lo  # type: ignore[union-attr]
        raise ConfigError(
            f"{where}: must be 'tx', 'sync' or 'lo:<link with a receiver>', got {which!r}"
        )

    def drift_laser(self, which: str, delta_hz: float) -> None:
        """Shift a laser's hidden detuning: ``"tx"``, ``"sync"`` or ``"lo:<link>"``."""
        try:
            laser = self._laser(which)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        with self.lock:
            laser.detuning_hz += float(delta_hz)
            self.log.append((self.now, "drift", {"which": which, "delta_hz": delta_hz}))

    # ----- channel

    def routed_link(self) -> Link | None:
        """The link the switch currently connects to the transmitter and OTDR."""
        if self.switch is None:
            return self.link_map[self.links[0]]
        for ln in self.link_map.values():
            if ln.port == self.switch.route:
                return ln
        return None

    def switch_loss_db(self) -> float:
        return self.switch.insertion_loss_db if self.switch else 0.0

    def transmittance(self, link: str, frequency_hz: float) -> float:
        """Power transmittance from the transmitter output port to the end of ``link``."""
        ln = self._link(link)
        if self.routed_link() is not ln:
            return 0.0
        loss = self.switch_loss_db() + ln.loss_db(grid.frequency_to_wavelength(frequency_hz) * 1e9)
        return 0.0 if math.isinf(loss) else 10.0 ** (-loss / 10.0)

    def raman_photons(self, link: str, frequency_hz: float) -> float:
        """Raman noise photons per mode at the end of ``link`` (simple forward model).

        ``n_R = rho * sum(P_c[mW]) * L_km * T_fibre`` over the classical channels on the
        link plus the transmitter's sync laser when routed to it (docs/emulator.md).
        """
        ln = self._link(link)
        wl = grid.frequency_to_wavelength(frequency_hz) * 1e9
        fibre_loss = ln.loss_db(wl)
        if math.isinf(fibre_loss):
            return 0.0
        p_mw = sum(grid.dbm_to_watt(p) * 1e3 for p in ln.classical.values())
        if self.routed_link() is ln:
            em = self.emission()
            p_mw += em.sync_power_w * 1e3 * 10.0 ** (-self.switch_loss_db() / 10.0)
        return ln.raman_per_mw_km * p_mw * ln.length_km * 10.0 ** (-fibre_loss / 10.0)

    def _lo_setpoint(self, link: Link) -> tuple[float, float, bool]:
        """(LO set frequency, LO power W, LO on) of the receiver on ``link``."""
        rx = link.receiver
        assert rx is not None
        fw = self._firmware(rx.resource)
        if fw is None:
            return grid.channel_to_frequency(self.tx.channel), grid.dbm_to_watt(rx.lo_ref_dbm), True
        return fw.lo_setpoint()

    # ----- what the instruments measure

    def capture(
        self,
        rx: ReceiverHw,
        points: int,
        srate_hz: float,
        lo_frequency_hz: float,
        lo_power_w: float,
        lo_on: bool,
        shutter_open: bool,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One acquisition of ``points`` samples per channel: raw int16 I and Q codes.

        Implements docs/physics.md: band-limited DAC->ADC resampling across both clock
        offsets, carrier offset and Wiener phase noise of both lasers, shot noise set by the
        LO power, excess and Raman noise, analogue low-pass, electronic noise, 12-bit ADC.
        Advances the clock by the record length plus the readout time.
        """
        with self.lock:
            link = self._link(rx.link)
            fs = srate_hz * (1.0 + rx.ppm * 1e-6)
            det = rx.detector
            em = self.emission()
            f_tx = em.frequency_hz + self.tx.laser.detuning_hz
            f_lo = lo_frequency_hz + rx.lo.detuning_hz
            cfo = f_tx - f_lo
            T = self.transmittance(link.name, f_tx) if shutter_open else 0.0
            lo_w = lo_power_w if lo_on else 0.0
            noise_var = 1.0
            sig = None
            # the signal (and its excess noise) is seen only when the LO beats it in band
            emitting = (
                em.power_w > 0.0 and em.waveform is not None and T > 0.0 and abs(cfo) < 0.5 * fs
            )
            if shutter_open:
                noise_var += det.eta * self.raman_photons(link.name, f_lo)
                if emitting:
                    noise_var += det.eta * T * (link.excess_noise + link.tap_noise()) / 2.0
            if emitting:
                wf = em.waveform
                assert wf is not None
                photons_per_s = em.power_w / grid.photon_energy(f_tx)
                amp = math.sqrt(2.0 * det.eta * T / fs) * math.sqrt(photons_per_s / wf.mean_power)
                rate = em.dac_rate_hz * (1.0 + self.tx.ppm * 1e-6)
                u0 = float(self.rng.uniform(0.0, wf.n))
                dphase = physics.wiener_increments(
                    points, self.tx.laser.linewidth_hz + rx.lo.linewidth_hz, fs, self.rng
                )
                sig = physics.resample_periodic(
                    wf,
                    u0,
                    rate / fs,
                    points,
                    amp=amp,
                    cfo_rad_per_sample=2.0 * math.pi * cfo / fs,
                    phase0=float(self.rng.uniform(0.0, 2.0 * math.pi)),
                    dphase=dphase,
                )
            if sig is None:
                sig = np.zeros(points, dtype=np.complex64)
            i, q = physics.detect(sig, det, fs, lo_w, noise_var, self.rng)
            self.advance(points / fs + READOUT_S)
            return i, q

    def monitor_power_w(self) -> float:
        """True output power at the transmitter's output port (the monitor tap reads it)."""
        return self.emission().power_w

    def powermeter_power_w(self, pm: PowerMeterHw) -> float:
        """Optical power reaching the power meter at the far end of its link (true value)."""
        link = self._link(pm.link)
        em = self.emission()
        total = 0.0

        def passes(freq: float) -> bool:
            if pm.filter_channel is None:
                return True
            return abs(freq - grid.channel_to_frequency(pm.filter_channel)) <= 50e9

        f_sync = em.sync_frequency_hz + self.tx.sync.detuning_hz
        if em.sync_power_w > 0 and passes(f_sync):
            total += em.sync_power_w * self.transmittance(link.name, f_sync)
        f_tx = em.frequency_hz + self.tx.laser.detuning_hz
        if em.power_w > 0 and passes(f_tx):
            total += em.power_w * self.transmittance(link.name, f_tx)
        for ch, p_dbm in link.classical.items():
            f = grid.channel_to_frequency(ch)
            if passes(f):
                loss = link.loss_db(grid.frequency_to_wavelength(f) * 1e9)
                if not math.isinf(loss):
                    total += grid.dbm_to_watt(p_dbm) * 10.0 ** (-loss / 10.0)
        return total

    def otdr_path(self, wavelength_m: float) -> otdr_model.FibrePath:
        """What the OTDR (WDM-coupled before the switch) looks into at ``wavelength_m``."""
        wl = wavelength_m * 1e9
        link = self.routed_link()
        front = self.switch_loss_db()
        if link is None:
            return otdr_model.FibrePath(front_loss_db=front, length_m=0.0, ior=1.4682)
        events = []
        end_m = link.length_km * 1e3
        end_refl = link.end_reflectance_db
        for e in link.events:
            if e.kind == "cut":
                end_m = e.position_km * 1e3
                end_refl = e.reflectance_db if e.reflectance_db is not None else -30.0
                break
            events.append((e.position_km * 1e3, e.loss_at(wl), e.reflectance_db))
        return otdr_model.FibrePath(
            front_loss_db=front,
            length_m=end_m,
            ior=link.ior,
            attenuation_db_per_km=link.attenuation_at(wl),
            events=events,
            end_reflectance_db=end_refl,
        )

    # ----- truth (tests only)

    def truth(self, link: str | None = None) -> dict:
        """The true channel of ``link`` (default: the first link) for judging estimates."""
        with self.lock:
            ln = self._link(link if link is not None else self.links[0])
            em = self.emission()
            f_tx = em.frequency_hz + self.tx.laser.detuning_hz
            wl_nm = grid.frequency_to_wavelength(f_tx) * 1e9
            T = self.transmittance(ln.name, f_tx)
            out: dict[str, Any] = {
                "seed": self.seed,
                "now": self.now,
                "link": ln.name,
                "port": ln.port,
                "routed": self.routed_link() is ln,
                "T": T,
                "loss_db": -10.0 * math.log10(T) if T > 0 else math.inf,
                "fibre_loss_db": ln.loss_db(wl_nm),
                "switch_loss_db": self.switch_loss_db(),
                "length_km": ln.length_km,
                "attenuation_db_per_km": ln.attenuation_at(wl_nm),
                "ior": ln.ior,
                "cut": ln.cut_km is not None,
                "events": [e.as_dict() for e in ln.events],
                "classical": dict(ln.classical),
                "f_tx_hz": f_tx,
                "ppm_tx": self.tx.ppm,
                "linewidth_tx_hz": self.tx.laser.linewidth_hz,
                "modulator_loss_db": self.tx.modulator_loss_db,
                "output_power_w": em.power_w,
            }
            xi_link = ln.excess_noise + ln.tap_noise()
            out["xi_link"] = xi_link
            if ln.receiver is not None:
                rx = ln.receiver
                f_set, _lo_w, _lo_on = self._lo_setpoint(ln)
                f_lo = f_set + rx.lo.detuning_hz
                n_r = self.raman_photons(ln.name, f_lo)
                xi_raman = 2.0 * n_r / T if T > 0 else 0.0
                out.update(
                    {
                        "eta": rx.detector.eta,
                        "v_el": rx.detector.v_el,
                        "bandwidth_hz": rx.detector.bandwidth_hz,
                        "lo_ref_dbm": rx.lo_ref_dbm,
                        "f_lo_hz": f_lo,
                        "cfo_hz": f_tx - f_lo,
                        "ppm_rx": rx.ppm,
                        "linewidth_lo_hz": rx.lo.linewidth_hz,
                        "raman_photons": n_r,
                        "xi_raman": xi_raman,
                        "xi": xi_link + xi_raman,
                    }
                )
            else:
                out["xi"] = xi_link
            return out


def default_config() -> dict:
    """The configuration of :meth:`World.default` (also a template for bench files)."""
    return {
        "transmitter": {"channel": 34, "sync": {"channel": 40}},
        "switch": {"kind": "scpi", "ports": 2, "insertion_loss_db": 0.8},
        "otdr": {},
        "links": [
            {
                "name": "link1",
                "fibre": {"length_km": 25.0},
                "excess_noise": 0.002,
                "events": [
                    {"kind": "connector", "position_km": 0.0, "loss_db": 0.25},
                    {"kind": "splice", "position_km": 12.5, "loss_db": 0.05},
                ],
                "receiver": {},
                "powermeter": {},
            }
        ],
    }
