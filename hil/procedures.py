"""Bench procedures: open a bench, bring it up, calibrate, scan, make frames, make keys.

Everything here talks to instruments through the drivers (``drivers/``) and to the DSP
through ``dsp/`` and ``hil.capture``; nothing reads the emulator's truth. The same code
runs on the emulated bench and on real instruments; only :meth:`Session.open` differs
(which ResourceManager, and a world to build and a scenario to load for the emulator).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import math
import pkgutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from drivers import grid
from hil.bench_file import Bench, BenchError, Instrument, Link
from hil.monitor import OtdrEvent, OtdrScan, event_kind, two_point_resolution_m

SHARED_ROLES = ("transmitter", "switch", "otdr")


class ProcedureError(RuntimeError):
    """A procedure could not be carried out (not an instrument fault)."""


class DistillUnavailableError(ProcedureError):
    """Key distillation is not available in this installation."""


class FrameError(ProcedureError):
    """One frame could not be turned into estimates (no sync, clipped, ...): skip it."""


class InstrumentFailureError(RuntimeError):
    """An instrument failed or stopped answering; ``shared`` if the whole run depends on it."""

    def __init__(self, instrument: Instrument, action: str, cause: BaseException) -> None:
        self.instrument = instrument
        self.action = action
        self.cause = cause
        self.shared = instrument.role in SHARED_ROLES
        super().__init__(
            f"{instrument.role} {instrument.name} ({instrument.resource}) failed during "
            f"{action}: {cause}"
        )


# --------------------------------------------------------------------------- drivers


def _driver_class(inst: Instrument) -> type:
    """The driver class for an instrument: the bench's ``driver:`` or the role's default."""
    if inst.driver:
        module_name, _, class_name = inst.driver.partition(":")
        try:
            module = importlib.import_module(module_name)
            return getattr(module, class_name)
        except (ImportError, AttributeError) as exc:
            raise BenchError(
                "bench", f"instruments.{inst.name}.driver", f"cannot load {inst.driver}: {exc}"
            ) from None
    import drivers

    candidates: list[type] = []
    base = importlib.import_module("drivers.base").Instrument
    for info in pkgutil.iter_modules(drivers.__path__):
        if info.name in ("base", "grid", "ieee488") or info.name.startswith("_"):
            continue
        try:
            module = importlib.import_module(f"drivers.{info.name}")
        except ImportError:
            continue
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if getattr(obj, "role", None) == inst.role and obj.__module__ == module.__name__:
                candidates.append(obj)
    serial = _is_serial(inst.resource)
    for cls in candidates:
        is_visa = isinstance(cls, type) and issubclass(cls, base)
        if inst.role == "switch" and serial != (not is_visa or "serial" in cls.__name__.lower()):
            continue
        return cls
    if candidates:
        return candidates[0]
    raise ProcedureError(f"no driver for role {inst.role!r} in the drivers package")


def _is_serial(resource: str) -> bool:
    return resource.upper().startswith("ASRL") or "://" in resource or resource.startswith("/dev/")


class _Guard:
    """Wraps a driver: any failure becomes an :class:`InstrumentFailureError` naming it."""

    def __init__(self, inst: Instrument, driver: Any) -> None:
        self.inst = inst
        self.driver = driver

    @contextlib.contextmanager
    def doing(self, action: str):  # type: ignore[no-untyped-def]
        try:
            yield self.driver
        except (InstrumentFailureError, FrameError, ProcedureError):
            raise
        except Exception as exc:
            if _is_instrument_exception(exc):
                raise InstrumentFailureError(self.inst, action, exc) from exc
            raise


def _is_instrument_exception(exc: BaseException) -> bool:
    import pyvisa

    names = {c.__name__ for c in type(exc).__mro__}
    return (
        isinstance(exc, pyvisa.errors.Error | OSError | TimeoutError | ValueError)
        or "InstrumentError" in names
        or "SerialException" in names
        or "BlockError" in names
    )


# --------------------------------------------------------------------------- session


class Session:
    """An open bench: its drivers by instrument name, its clock and (emulator) world.

    ``world`` is kept only to build the ResourceManager, to read the bench clock and to
    load fault scenarios; no procedure reads its truth.
    """

    def __init__(self, bench: Bench, rm: Any, world: Any = None, scpi_log: Path | None = None):
        self.bench = bench
        self.rm = rm
        self.world = world
        self.scpi_log = scpi_log
        self.guards: dict[str, _Guard] = {}
        self._port: int | None = None
        self._t0 = time.monotonic()
        self.settings: dict[str, dict[str, Any]] = {}
        self.tx_channel: int | None = None
        self.sync_channel: int | None = None

    # ----- opening
    @classmethod
    def open(
        cls,
        bench: Bench,
        scpi_log: Path | str | None = None,
        seed: int | None = None,
        world: Any = None,
    ) -> Session:
        """Open every instrument of ``bench`` (building the emulated world if needed)."""
        import pyvisa

        log = Path(scpi_log) if scpi_log else None
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text("", encoding="utf-8")
        if bench.backend == "emulator":
            from emulator.backend import resource_manager
            from hil.bench_file import build_world

            if world is None:
                world = build_world(bench, seed=seed)
            rm = resource_manager(world)
        else:
            try:
                rm = pyvisa.ResourceManager(bench.visa_library)
            except (OSError, ValueError, pyvisa.errors.Error) as exc:
                raise ProcedureError(
                    f"cannot open the VISA library {bench.visa_library or '(system default)'}: "
                    f"{exc}"
                ) from None
        self = cls(bench, rm, world, log)
        try:
            for inst in bench.instruments.values():
                self.guards[inst.name] = _Guard(inst, self._open_driver(inst))
        except BaseException:
            self.close()
            raise
        return self

    def _open_driver(self, inst: Instrument) -> Any:
        cls = _driver_class(inst)
        kwargs: dict[str, Any] = dict(inst.options)
        params = inspect.signature(cls).parameters
        if "rm" in params:
            kwargs["rm"] = self.rm
        if "timeout_ms" in params:
            kwargs.setdefault("timeout_ms", inst.timeout_ms)
        if "log" in params and self.scpi_log is not None:
            kwargs["log"] = self.scpi_log
        if _is_serial(inst.resource) and self.bench.backend == "emulator" and "world" in params:
            kwargs["world"] = self.world
        try:
            return cls(inst.resource, **kwargs)
        except Exception as exc:
            if _is_instrument_exception(exc):
                raise InstrumentFailureError(inst, "open", exc) from exc
            raise

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for guard in self.guards.values():
            with contextlib.suppress(Exception):
                guard.driver.close()
        self.guards.clear()
        if self.rm is not None:
            with contextlib.suppress(Exception):
                self.rm.close()
            self.rm = None

    # ----- lookup
    def clock(self) -> float:
        """Bench time in seconds: the emulator's virtual clock, or wall time on hardware."""
        if self.world is not None:
            return float(self.world.now)
        return time.monotonic() - self._t0

    def load_scenario(self, path: Path | str) -> None:
        """Hand a fault scenario to the emulated world (emulator backend only)."""
        if self.world is None:
            raise BenchError(str(path), "", "fault scenarios need the emulator backend")
        try:
            self.world.load_scenario(str(path))
        except (ValueError, OSError) as exc:
            raise BenchError(str(path), "", str(exc)) from None

    def guard(self, role_or_name: str) -> _Guard:
        if role_or_name in self.guards:
            return self.guards[role_or_name]
        inst = self.bench.one(role_or_name)
        if inst is None:
            raise ProcedureError(f"the bench has no {role_or_name}")
        return self.guards[inst.name]

    def has(self, role: str) -> bool:
        return self.bench.one(role) is not None

    @property
    def has_otdr(self) -> bool:
        return self.has("otdr")

    def link(self, name: str) -> Link:
        return self.bench.link(name)

    def link_of_port(self, port: int | None) -> str | None:
        for link in self.bench.links:
            if link.switch_port == port:
                return link.name
        return None

    def identify(self) -> list[dict[str, Any]]:
        """``*IDN?`` of every instrument (a failure is reported in the row, not raised)."""
        rows = []
        for name, guard in self.guards.items():
            inst = guard.inst
            try:
                idn = str(_idn(guard.driver))
            except Exception as exc:
                idn = f"ERROR: {exc}"
            rows.append({"name": name, "role": inst.role, "resource": inst.resource, "idn": idn})
        return rows

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Identity and settings snapshot of every instrument (for ``run.json``)."""
        out: dict[str, dict[str, Any]] = {}
        for name, guard in self.guards.items():
            inst = guard.inst
            entry: dict[str, Any] = {"role": inst.role, "resource": inst.resource}
            try:
                snap = guard.driver.snapshot() if hasattr(guard.driver, "snapshot") else {}
                entry["idn"] = snap.pop("idn", None) or _idn(guard.driver)
                entry["settings"] = snap
            except Exception as exc:
                entry["error"] = str(exc)
            out[name] = entry
        return out

    # ----- switch
    def route(self, target: str | int) -> int:
        """Route the transmitter (and OTDR) to a link (by name) or port; returns the port."""
        if isinstance(target, str) and not target.isdigit():
            port = self.link(target).switch_port
        else:
            port = int(target)
        if port is None or not self.has("switch"):
            return port or 1
        if port == self._port:
            return port
        guard = self.guard("switch")
        with guard.doing(f"route to port {port}") as sw:
            _set_route(sw, port)
        self._port = port
        return port

    def link_loss_db(self, link_name: str) -> float:
        return link_loss_db(self, link_name)

    def otdr_scan(self, link_name: str) -> OtdrScan:
        return otdr_scan(self, link_name)

    def current_port(self) -> int | None:
        if not self.has("switch"):
            return None
        guard = self.guard("switch")
        with guard.doing("route query") as sw:
            self._port = _get_route(sw)
        return self._port


def _idn(driver: Any) -> str:
    value = getattr(driver, "idn", None)
    if callable(value):
        value = value()
    return str(value)


def _set_route(sw: Any, port: int) -> None:
    if hasattr(sw, "route"):
        sw.route(int(port))
    else:
        sw.port = int(port)


def _get_route(sw: Any) -> int:
    return int(sw.port)


# --------------------------------------------------------------------------- bring-up


def bring_up(session: Session, links: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Identify every instrument, tune and set powers, check every error queue.

    Returns the identity and settings snapshot of every instrument (for ``run.json``).
    """
    bench = session.bench
    run = bench.run
    names = links or [lk.name for lk in bench.links]
    first = bench.link(names[0])
    fmt = frame_format(bench, bench.run.symbols_per_frame)
    for guard in session.guards.values():
        with guard.doing("identify (*IDN?) and clear status") as drv:
            _idn(drv)
            if hasattr(drv, "clear_status"):
                drv.clear_status()
                drv.check_errors("*CLS")
    tx = session.guard("transmitter")
    with tx.doing("bring-up: tune, powers, DAC rate") as t:
        t.stop()
        t.channel = first.channel
        t.power_dbm = run.tx_power_dbm
        t.laser_enabled = True
        t.dac_rate = fmt.dac_rate_hz
        t.voa_db = 30.0
        t.output = True
        t.sync_channel = first.sync_channel
        t.sync_power_dbm = run.sync_power_dbm
        t.sync_output = True
    session.tx_channel = first.channel
    session.sync_channel = first.sync_channel
    for name in names:
        link = bench.link(name)
        rx = session.guards[link.receiver]
        with rx.doing("bring-up: LO, shutter, digitiser") as r:
            r.lo_channel = link.channel
            r.lo_power_dbm = run.lo_power_dbm
            r.lo_enabled = True
            r.input_open = True
            r.sample_rate = fmt.adc_rate_hz
            r.record_length = fmt.capture_points
        if link.powermeter:
            pm = session.guards[link.powermeter]
            with pm.doing("bring-up: wavelength, unit, averaging") as m:
                m.wavelength = grid.channel_to_wavelength(link.sync_channel)
                m.unit = "DBM"
                m.averaging_time = bench.monitoring.powermeter_averaging_s
    if session.has_otdr:
        configure_otdr(session, names)
    return session.snapshot()


def configure_otdr(session: Session, links: list[str] | None = None) -> None:
    """Set the OTDR to the bench's monitoring settings (range from the longest link)."""
    bench = session.bench
    names = links or [lk.name for lk in bench.links]
    o = bench.monitoring.otdr
    span = max((bench.link(n).length_km or 0.0) for n in names)
    rng = o.range_km or max(1.0, 1.5 * span + 1.0)
    with session.guard("otdr").doing("settings: wavelength, pulse, range, averaging") as d:
        d.wavelength = o.wavelength_nm * 1e-9
        d.pulse_width = o.pulse_width_ns * 1e-9
        d.range = rng * 1e3
        d.averaging_time = o.averaging_s
        d.ior = o.ior


def frame_format(bench: Bench, n_symbols: int) -> Any:
    """The frame format of a run (the DSP's defaults with the run's frame length)."""
    from dsp.frame import FrameFormat

    return FrameFormat(n_symbols=int(n_symbols))


def tune_for(session: Session, link: Link) -> None:
    """Retune the transmitter when a link uses other channels than the last one."""
    if (
        getattr(session, "tx_channel", None) == link.channel
        and getattr(session, "sync_channel", None) == link.sync_channel
    ):
        return
    with session.guard("transmitter").doing(f"retune for link {link.name}") as t:
        t.channel = link.channel
        t.sync_channel = link.sync_channel
    session.tx_channel = link.channel
    session.sync_channel = link.sync_channel


# --------------------------------------------------------------------------- measurements


def link_loss_db(session: Session, link_name: str) -> float:
    """Loss of the routed link from its power meter: sync laser set point - reading (dB).

    ``inf`` when no light arrives; ``nan`` when the link has no power meter.
    """
    link = session.link(link_name)
    if not link.powermeter:
        return math.nan
    with session.guards[link.powermeter].doing("power reading (READ1:POW?)") as pm:
        dbm = float(pm.read_dbm())
    if not math.isfinite(dbm) or dbm < -90.0:
        return math.inf
    return session.bench.run.sync_power_dbm - dbm


def otdr_scan(session: Session, link_name: str) -> OtdrScan:
    """Route to the link, scan it and read the trace (as a level falling with distance)."""
    session.route(link_name)
    o = session.bench.monitoring.otdr
    guard = session.guard("otdr")
    with guard.doing(f"scan of link {link_name}") as d:
        trace = d.scan()
        events = d.events()
        pulse_s = float(d.pulse_width)
        ior = float(d.ior)
    values = np.asarray(trace.loss_db, dtype=np.float64)
    distance = _otdr_distance(trace, values.size)
    level = _as_level(values)
    evs = [
        OtdrEvent(
            location_m=float(e.location_m),
            kind=event_kind(e.type),
            loss_db=float(e.loss_db),
            reflectance_db=None
            if e.reflectance_db is None or not math.isfinite(e.reflectance_db)
            else float(e.reflectance_db),
            cumulative_db=float(e.cumulative_db),
        )
        for e in events
    ]
    return OtdrScan(
        link=link_name,
        time=session.clock(),
        distance_m=distance,
        level_db=level,
        events=evs,
        resolution_m=two_point_resolution_m(pulse_s * 1e9, ior),
        settings={
            "wavelength_nm": o.wavelength_nm,
            "pulse_width_ns": pulse_s * 1e9,
            "averaging_s": o.averaging_s,
            "ior": ior,
        },
    )


def _otdr_distance(trace: Any, n: int) -> np.ndarray:
    """Distances of the trace points, also from a positional ``TRAC:PAR?`` reply.

    Positional form: ``points,spacing_m,start_m,...``; the driver maps it to ``p0..``.
    """
    params = getattr(trace, "params", {}) or {}
    p0, p1, p2 = params.get("p0"), params.get("p1"), params.get("p2")
    if isinstance(p0, float) and isinstance(p1, float) and int(p0) == n and p1 > 0:
        start = p2 if isinstance(p2, float) else 0.0
        return start + p1 * np.arange(n, dtype=np.float64)
    return np.asarray(trace.distance_m, dtype=np.float64)


def _as_level(values: np.ndarray) -> np.ndarray:
    """A trace as a level that falls with distance (a loss trace is negated)."""
    if values.size < 16:
        return values
    q = values.size // 4
    rising = float(np.median(values[q : 2 * q])) > float(np.median(values[:q])) + 0.05
    return -values if rising else values


# --------------------------------------------------------------------------- calibration


@dataclass
class Calibration:
    """A receiver's shot-noise unit, electronic noise and efficiency, with when."""

    n0: float
    v_el: float
    v_el_stderr: float
    eta: float
    time: float
    cfo_hz: float = 0.0
    n0_rel_stderr: float = 0.0
    noise: Any = field(default=None, repr=False)
    """The :class:`dsp.calibration.NoiseCalibration` (with the captures' spectra)."""

    def at_cfo(self, cfo_hz: float, fmt: Any) -> tuple[float, float]:
        """``(n0, v_el)`` with the matched filter at the frame's carrier offset."""
        if self.noise is None:
            return self.n0, self.v_el
        moved = self.noise.at_cfo(cfo_hz, fmt)
        return moved.n0, moved.v_el

    def as_dict(self) -> dict[str, Any]:
        return {
            "n0": self.n0,
            "n0_rel_stderr": self.n0_rel_stderr,
            "v_el": self.v_el,
            "v_el_stderr": self.v_el_stderr,
            "eta": self.eta,
            "time": self.time,
        }


CAL_POINTS = 1 << 19
"""Points of the electronic-noise capture (~1.3e5 symbol-spaced samples: v_el to ~0.5 %)."""

SHOT_CAL_POINTS = 1 << 23
SHOT_CAL_CAPTURES = 4
"""Shot-noise captures of SHOT_CAL_POINTS points pooled per calibration: ~8.4e6
symbol-spaced samples, N0 to 0.035 %.

An error ``e`` in N0 shifts xi-hat by ``2 e / (eta T)``: with the single 2^19-point capture
used before, 0.28 % gave 0.02 SNU (one sigma) on a 12 km link, four times the statistical
error of a 2e6-symbol block, and the spread of xi-hat across identical links showed it.
The error is carried into the worst-case estimates (``n0_rel_stderr``, at the same
epsilon as the block's own statistics), so its size costs key: with about 3x the
block's samples it widens the worst-case excess-noise margin by roughly 15 %."""


def calibrate(session: Session, link_name: str, cfo_hz: float = 0.0) -> Calibration:
    """Shot noise (LO on, input shutter closed) and electronic noise (LO off) captures.

    Both go through the signal path's matched filter (:mod:`dsp.calibration`); the
    detector efficiency comes from the receiver's factory calibration (``CAL:EFF?``).
    """
    from dsp import calibration as dcal
    from dsp.rx import DspError

    bench = session.bench
    link = session.link(link_name)
    fmt = frame_format(bench, bench.run.symbols_per_frame)
    guard = session.guards[link.receiver]
    with guard.doing("calibration captures (shutter closed, LO on/off)") as r:
        eta = float(r.efficiency)
        r.record_length = SHOT_CAL_POINTS
        r.input_open = False
        r.lo_enabled = True
        shots = [r.acquire() for _ in range(SHOT_CAL_CAPTURES)]
        r.record_length = CAL_POINTS
        r.lo_enabled = False
        elec = r.acquire()
        r.lo_enabled = True
        r.input_open = True
        r.record_length = fmt.capture_points
    try:
        cal = dcal.calibrate(
            [(s.raw_i, s.raw_q, _scaling(s.scale_i), _scaling(s.scale_q)) for s in shots],
            (elec.raw_i, elec.raw_q, _scaling(elec.scale_i), _scaling(elec.scale_q)),
            eta,
            fmt,
            cfo_hz,
        )
    except DspError as exc:
        raise ProcedureError(f"calibration of {link.receiver} failed: {exc}") from None
    # v_el = V_el / N0 from two variance estimates of n samples each (relative SE
    # 1/sqrt(n) per complex sample): delta method as in dsp.estimation.
    n_el, n_shot = max(cal.n_el, 2), max(cal.n_shot, 2)
    v = cal.v_el
    se = math.sqrt((1 + v) ** 2 * v**2 / n_shot + v**2 * (1 + v) ** 2 / n_el) if v > 0 else 0.0
    return Calibration(
        cal.n0, cal.v_el, se, cal.eta, session.clock(), cfo_hz, cal.n0_rel_stderr, cal
    )


def _scaling(scale: Any) -> Any:
    from dsp.rx import AdcScaling

    return AdcScaling(ymult=float(scale.ymul), yoff=float(scale.yoff), yzero=float(scale.yzero))


# --------------------------------------------------------------------------- modulation


def initial_modulation_variance(
    bench: Bench, cal: Calibration | None, loss_db: float, n_symbols: int
) -> float:
    """First ``V_A`` of a link, from the power meter's loss (no estimate yet).

    Assumes a small excess noise (0.01 SNU) until the first frame is measured.
    """
    eta = cal.eta if cal else 0.6
    v_el = cal.v_el if cal else 0.05
    T = 10 ** (-loss_db / 10) if math.isfinite(loss_db) else 0.1
    return choose_modulation_variance(bench, T, 0.01, eta, v_el, block_symbols(bench, n_symbols))


def block_symbols(bench: Bench, n_symbols: int) -> int:
    """Key symbols of a finite-size block of frames of ``n_symbols`` slots (the preamble
    and the symbols revealed for the phase taken out)."""
    usable = frame_format(bench, n_symbols).n_quantum - bench.run.reveal_symbols
    return bench.run.block_frames * max(usable, 0)


V_A_SWITCH_GAIN = 0.03
"""Relative gain in expected key (:func:`expected_key_rate`) a new ``V_A`` must promise
before a link moves to it. With ``run.beta: auto`` the key has a maximum near each
code's operating point, and per-frame estimates of ``xi`` scatter by ~0.007 SNU; without
this margin a link can flip between two maxima from frame to frame (measured: mdina
alternated SNR 0.40 and 0.31 within one block)."""


def pooled_estimates(summaries: list[dict[str, Any]]) -> tuple[float, float] | None:
    """``(T, xi)`` of several frames, each weighted by its inverse variance (equal
    weights where a standard error is missing); ``None`` if no frame has both."""
    pts = [
        (float(sm["T"]), sm.get("T_err"), float(sm["xi"]), sm.get("xi_err"))
        for sm in summaries
        if sm.get("T") is not None and sm.get("xi") is not None and 0 < sm["T"] < 1
    ]
    if not pts:
        return None

    def mean(values: list[float], errs: list[Any]) -> float:
        ok = all(e is not None and math.isfinite(e) and e > 0 for e in errs)
        w = [1.0 / (e * e) for e in errs] if ok else [1.0] * len(values)
        return sum(wi * v for wi, v in zip(w, values, strict=True)) / sum(w)

    return mean([p[0] for p in pts], [p[1] for p in pts]), mean(
        [p[2] for p in pts], [p[3] for p in pts]
    )


def next_modulation_variance(
    bench: Bench,
    cal: Calibration | None,
    recent: list[dict[str, Any]],
    current: float | None,
    n_symbols: int,
) -> float | None:
    """``V_A`` for the link's next frame (``None``: keep ``current``).

    ``recent`` are the summaries of the link's latest frames (the runner passes one
    finite-size block's worth); their pooled ``T`` and ``xi`` choose the variance, and
    the link moves only if that promises ``V_A_SWITCH_GAIN`` more key than ``current``.
    """
    if cal is None or bench.run.v_a is not None:
        return None
    pooled = pooled_estimates(recent)
    if pooled is None:
        return None
    T, xi = pooled
    n_block = block_symbols(bench, n_symbols)
    v = choose_modulation_variance(bench, T, xi, cal.eta, cal.v_el, n_block)
    if current is None or v == current:
        return v
    now = expected_key_rate(bench, current, T, xi, cal.eta, cal.v_el, n_block)
    new = expected_key_rate(bench, v, T, xi, cal.eta, cal.v_el, n_block)
    if now > 0 and new < now * (1.0 + V_A_SWITCH_GAIN):
        return None
    return v


# --------------------------------------------------------------------------- key delivery


class KeyDelivery:
    """Delivery of distilled keys: per link, a KME-A/KME-B pair on loopback (lab mode).

    Each link's lab sites (:class:`kms_bridge.site.LabSites`) hold the link's SAE pair
    (named in the bench) in their policy; Alice's bridge node feeds KME-A, Bob's feeds
    KME-B, both under the same key IDs. ``mode: none`` keeps keys local (IDs only).
    """

    def __init__(self, bench: Bench, links: list[Link], workdir: Path, progress: Any = None):
        self.bench = bench
        self.links = {lk.name: lk for lk in links}
        self.workdir = Path(workdir)
        self.sites: dict[str, Any] = {}
        self.progress = progress or (lambda kind, **data: None)
        self.error: str | None = None

    @classmethod
    def start(
        cls, bench: Bench, links: list[Link], workdir: Path, progress: Any = None
    ) -> KeyDelivery:
        self = cls(bench, links, workdir, progress)
        if bench.kms.mode != "lab":
            return self
        try:
            from kms_bridge.site import LabSites
        except ImportError as exc:
            self.error = f"key delivery unavailable ({exc}); keys are not delivered"
            self.progress("error", message=self.error)
            return self
        self.progress("stage", message=f"starting KME-A and KME-B for {len(links)} link(s)")
        errors: dict[str, BaseException] = {}

        def start_one(link: Link) -> None:
            sites_cls = type(
                "LinkSites",
                (LabSites,),
                {"master_id": link.sae_master, "slave_id": link.sae_slave},
            )
            try:
                self.sites[link.name] = sites_cls.start(
                    str(self.workdir / link.name),
                    link_id=link.name,
                    key_size=bench.kms.key_size_bits,
                )
            except Exception as exc:
                errors[link.name] = exc

        threads = [threading.Thread(target=start_one, args=(lk,)) for lk in links]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            self.stop()
            name, exc = next(iter(errors.items()))
            raise ProcedureError(f"cannot start the KMEs of link {name}: {exc}")
        return self

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.bench.kms.mode, "error": self.error, "links": {}}
        for name, sites in self.sites.items():
            out["links"][name] = {
                "kme_a": sites.url("A"),
                "kme_b": sites.url("B"),
                "master_sae": sites.master_id,
                "slave_sae": sites.slave_id,
                "workdir": sites.workdir,
            }
        return out

    @property
    def available(self) -> bool:
        return bool(self.sites)

    def deliver(
        self,
        link: str,
        block_id: int,
        alice_keys: list[tuple[str, bytes]],
        bob_keys: list[tuple[str, bytes]],
        metadata: dict[str, Any],
    ) -> bool:
        """Push Alice's keys to KME-A and Bob's to KME-B (same IDs); False if not delivered."""
        sites = self.sites.get(link)
        if sites is None:
            return False
        if [k for k, _ in alice_keys] != [k for k, _ in bob_keys]:
            raise ProcedureError(f"link {link} block {block_id}: Alice's and Bob's key IDs differ")
        sites.node("alice").push(block_id, alice_keys, metadata)
        sites.node("bob").push(block_id, bob_keys, metadata)
        return True

    def flush(self, timeout: float = 60.0) -> None:
        for name, sites in self.sites.items():
            for side in ("alice", "bob"):
                if not sites.node(side).flush(timeout):
                    raise ProcedureError(
                        f"link {name}: the {side} bridge still holds unacknowledged key "
                        f"blocks after {timeout:g} s (they stay in its outbox)"
                    )

    def sae_check(self, links: list[Link]) -> dict[str, Any]:
        """The master SAE gets one key by ``enc_keys`` at KME-A, the slave the same ID by
        ``dec_keys`` at KME-B; both must match. Done for every link that delivered keys."""
        results = []
        for link in links:
            sites = self.sites.get(link.name)
            if sites is None:
                continue
            try:
                master, slave = sites.sae_client("master"), sites.sae_client("slave")
                got_a = master.enc_keys(sites.slave_id, number=1)
                got_b = slave.dec_keys(sites.master_id, [got_a[0][0]])
                ok = got_a == got_b
                results.append(
                    {
                        "link": link.name,
                        "key_ID": got_a[0][0],
                        "master_sae": sites.master_id,
                        "slave_sae": sites.slave_id,
                        "bits": 8 * len(got_a[0][1]),
                        "match": ok,
                        "digest": _short_digest(got_a[0][1]),
                    }
                )
            except Exception as exc:
                results.append({"link": link.name, "match": False, "error": str(exc)})
        if not results:
            return {
                "match": False,
                "results": [],
                "message": "no link delivered keys: nothing to fetch",
            }
        ok = all(r["match"] for r in results)
        lines = []
        for r in results:
            if r.get("error"):
                lines.append(f"{r['link']}: FAILED ({r['error']})")
            else:
                lines.append(
                    f"{r['link']}: {r['master_sae']} enc_keys@KME-A and {r['slave_sae']} "
                    f"dec_keys@KME-B got key {r['key_ID']} ({r['bits']} bits, sha256 "
                    f"{r['digest']}): {'MATCH' if r['match'] else 'MISMATCH'}"
                )
        return {"match": ok, "results": results, "message": "; ".join(lines)}

    def stop(self) -> None:
        for sites in self.sites.values():
            with contextlib.suppress(Exception):
                sites.stop()
        self.sites.clear()


def _short_digest(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()[:16]


# --------------------------------------------------------------------------- modulation


def beta_at(bench: Bench, snr: float) -> float:
    """The reconciliation efficiency the run expects at this SNR: ``run.beta``, or with
    ``auto`` what the LDPC family of ``run.ldpc_block_bits`` reaches there (its best
    code's measured operating point, lowered where the code is shortened or punctured;
    :func:`dsp.reconciliation.family_beta`), held within ``0.5 .. 1``."""
    run = bench.run
    if run.beta is not None:
        return run.beta
    from dsp import reconciliation

    family = _family(run.ldpc_block_bits)
    return min(1.0, max(0.5, reconciliation.family_beta(family, max(snr, 1e-6))))


_FAMILIES: dict[int, Any] = {}


def _family(block_bits: int) -> Any:
    """The code family of this length (specifications only: no matrix is built)."""
    if block_bits not in _FAMILIES:
        from dsp import reconciliation

        _FAMILIES[block_bits] = reconciliation.code_family(block_bits)
    return _FAMILIES[block_bits]


def predicted_key_rate(
    bench: Bench, v_a: float, T: float, xi: float, eta: float, v_el: float, n_block: int
) -> float:
    """Finite-size key rate of a block of ``n_block`` symbols at ``v_a`` for this channel,
    at the efficiency the run expects there (:func:`beta_at`), counting only the symbols
    whole reconciliation frames use (:func:`frames_fill`); ``-inf`` if undefined."""
    from dsp import keyrate

    run = bench.run
    kw: dict[str, Any] = (
        {"all_symbols": True} if run.pe_fraction == 0 else {"pe_fraction": run.pe_fraction}
    )
    T = min(max(T, 1e-4), 0.999)
    xi = max(xi, 0.0)
    try:
        snr = keyrate.snr(v_a, T, xi, eta, v_el)
        rate = keyrate.finite_size_key_rate(
            v_a,
            T,
            xi,
            eta,
            v_el,
            beta_at(bench, snr),
            n_block,
            eps_pe=run.epsilon,
            eps_smooth=run.epsilon,
            eps_pa=run.epsilon,
            **kw,
        ).rate
    except (ValueError, ArithmeticError):
        return -math.inf
    return rate * frames_fill(bench, snr, n_block) if rate > 0 else rate


SNR_SPREAD = 0.01
"""Relative scatter of a block's SNR around the one its ``V_A`` was chosen for (Malta
links, 5 runs: chosen for 0.3113, blocks came out at 0.3090 .. 0.3108). Both the codes'
efficiency and the frames' fill of a block fall off cliffs in SNR, so a variance is
judged by its key averaged over this spread, not at one point."""


def expected_key_rate(
    bench: Bench, v_a: float, T: float, xi: float, eta: float, v_el: float, n_block: int
) -> float:
    """:func:`predicted_key_rate` averaged over SNRs within ``SNR_SPREAD`` of ``v_a``'s
    (SNR is proportional to ``V_A``)."""
    rates = [
        predicted_key_rate(bench, v_a * (1.0 + SNR_SPREAD * k), T, xi, eta, v_el, n_block)
        for k in (-1.0, -0.5, 0.0, 0.5, 1.0)
    ]
    return float(np.mean(rates))


def frames_fill(bench: Bench, snr: float, n_block: int) -> float:
    """Fraction of a block's ``2 n_block`` real symbols that whole reconciliation frames
    use at this SNR (the code and beta the distillation would take); the rest is left.

    A frame of a 1e6-bit code takes up to 1e6 symbols: met-r0.18 at beta 0.93 takes
    995,064 at SNR 0.3095 (0.5 % punctured) and 993,656 at 0.3100, so a block of 3 frames
    of 993,907 key symbols holds six frames from SNR 0.3100 up and five below, where a
    sixth of it makes no key.
    """
    from dsp import reconciliation

    if n_block <= 0 or not snr > 0:
        return 0.0
    run = bench.run
    spec = reconciliation.select_code(_family(run.ldpc_block_bits), snr, run.beta)
    per_frame = reconciliation.frame_data_bits(spec, snr, beta_at(bench, snr))
    if per_frame <= 0:
        return 0.0
    return (2 * n_block) // per_frame * per_frame / (2 * n_block)


def choose_modulation_variance(
    bench: Bench, T: float, xi: float, eta: float, v_el: float, n_block: int
) -> float:
    """``V_A`` maximising the key a block of ``n_block`` symbols is expected to give.

    First the finite-size rate's optimum (the asymptotic one when no finite-size rate
    is positive), with ``run.beta: auto`` at the efficiency the codes reach at each SNR
    (:func:`beta_at`); then a scan of :func:`expected_key_rate`, which also counts the
    symbols whole frames leave unused and the scatter of the SNR, replaces it where it
    finds more. Stays within ``run.v_a_min .. run.v_a_max`` and below ``run.snr_max``.
    A fixed ``run.v_a`` wins.
    """
    from dsp import keyrate

    run = bench.run
    if run.v_a is not None:
        return run.v_a
    T = min(max(T, 1e-4), 0.999)
    xi = max(xi, 0.0)
    # Stay within the SNR the reconciliation codes cover (SNR is linear in V_A).
    noise = 1.0 + v_el + eta * T * xi / 2.0
    v_snr = 2.0 * run.snr_max * noise / (eta * T)
    hi = max(min(run.v_a_max, v_snr), run.v_a_min * 1.01)
    kw: dict[str, Any] = (
        {"all_symbols": True} if run.pe_fraction == 0 else {"pe_fraction": run.pe_fraction}
    )
    beta: Any = run.beta if run.beta is not None else (lambda s: beta_at(bench, s))
    try:
        v, rate = keyrate.best_modulation_variance(
            T,
            xi,
            eta,
            v_el,
            beta,
            N=n_block,
            V_A_range=(run.v_a_min, hi),
            eps_pe=run.epsilon,
            eps_smooth=run.epsilon,
            eps_pa=run.epsilon,
            **kw,
        )
        if rate <= 0:
            v, rate = keyrate.best_modulation_variance(
                T, xi, eta, v_el, beta, V_A_range=(run.v_a_min, hi)
            )
    except (ValueError, ArithmeticError):
        v = math.sqrt(run.v_a_min * hi)
    v = min(max(v, run.v_a_min), hi)
    # The key rate's optimum ignores the symbols whole frames leave unused and the
    # scatter of the SNR a block comes out at; a scan of the block's expected key may
    # find a variance where the frames fill the block and the codes keep their margin.
    grid = [float(g) for g in np.geomspace(run.v_a_min, hi, 241)]
    rates = [expected_key_rate(bench, g, T, xi, eta, v_el, n_block) for g in [v, *grid]]
    best = int(np.argmax(rates))
    if best > 0 and rates[best] > 0:
        v = grid[best - 1]
    return float(v)


# --------------------------------------------------------------------------- frames


@dataclass
class FrameData:
    """One captured and processed frame of one link, held until monitoring vouches for it."""

    link: str
    x: np.ndarray  # Alice's amplitudes alpha (complex, SNU scale: x_A = 2 Re alpha)
    y: np.ndarray  # Bob's calibrated, phase-corrected samples (complex, SNU)
    v_a: float
    summary: dict[str, Any]
    plot: dict[str, Any] | None = None
    record: dict[str, Any] = field(default_factory=dict)


VOA_RANGE_DB = (0.0, 60.0)


def key_frame(
    session: Session,
    link_name: str,
    cal: Calibration,
    n_symbols: int,
    v_a_target: float | None,
    want_plot: bool = False,
) -> FrameData:
    """One key-generation frame on the routed link.

    Alice draws symbols from a cryptographic source, the DSP builds the waveform, the
    transmitter plays it and its VOA is set so the monitor power gives ``V_A``; the
    receiver captures; Bob's DSP turns the capture into calibrated symbols; Alice reveals
    ``run.reveal_symbols`` random symbols for the residual global phase (they are
    dropped from the key). Quick per-frame estimates go into the frame record.
    """
    from dsp import estimation, keyrate
    from dsp.rx import DspError, process_frame
    from dsp.waveform import alice_symbols_snu, build_frame

    bench = session.bench
    link = session.link(link_name)
    fmt = frame_format(bench, n_symbols)
    tune_for(session, link)
    t0 = time.perf_counter()
    frame = build_frame(fmt)
    freq = grid.channel_to_frequency(link.channel)
    target = v_a_target or choose_modulation_variance(
        bench, 0.5, 0.01, cal.eta, cal.v_el, n_symbols
    )
    with session.guard("transmitter").doing("waveform upload and modulation variance") as t:
        t.stop()
        t.upload_iq(frame.interleaved().reshape(-1, 2))
        t.play()
        v_a = _set_modulation_variance(t, frame, freq, fmt.dac_rate_hz, target)
    with session.guards[link.receiver].doing("acquisition (ACQ:STAT RUN, CURV?)") as r:
        if int(r.record_length) != fmt.capture_points:
            r.record_length = fmt.capture_points
        cap = r.acquire()
    t_dsp = time.perf_counter()
    x_all = 2.0 * alice_symbols_snu(frame, v_a)  # x_A = 2 alpha: Var(Re x_A) = V_A
    reveal = _reveal_indices(fmt.n_quantum, bench.run.reveal_symbols)
    try:
        res = process_frame(
            cap.raw_i,
            cap.raw_q,
            _scaling(cap.scale_i),
            _scaling(cap.scale_q),
            fmt,
            n0=cal.n0,
            revealed_index=reveal,
            revealed_alpha=x_all[reveal] / 2.0 if reveal.size else None,
        )
    except DspError as exc:
        raise FrameError(f"DSP: {exc}") from None
    keep = np.ones(fmt.n_quantum, dtype=bool)
    keep[reveal] = False
    x = x_all[keep]
    y = np.asarray(res.symbols)[keep].astype(np.complex128)
    # The calibration was made with the filter at its own carrier offset: move it to this
    # frame's (dsp.calibration.NoiseCalibration.at_cfo) and rescale the samples.
    n0, v_el = cal.at_cfo(res.cfo_hz, fmt)
    y *= math.sqrt(cal.n0 / n0)
    summary: dict[str, Any] = {
        "symbols": int(x.size),
        "v_a": v_a,
        "cfo_hz": res.cfo_hz,
        "clock_ppm": res.clock_ppm,
        "eta": cal.eta,
        "v_el": v_el,
        "n0_cfo_factor": n0 / cal.n0,
    }
    cal.cfo_hz = res.cfo_hz
    try:
        est = estimation.estimate_parameters(
            x,
            y,
            eta=cal.eta,
            v_el=v_el,
            V_A=v_a,
            v_el_stderr=cal.v_el_stderr,
            n0_rel_stderr=cal.n0_rel_stderr,
            eps_pe=None,
        )
        summary.update(
            {
                "T": est.T,
                "T_err": est.T_stderr,
                "xi": est.xi,
                "xi_err": est.xi_stderr,
                "snr": est.snr,
            }
        )
        run = bench.run
        beta = beta_at(bench, est.snr)
        summary["beta"] = beta
        if 0 < est.T < 1:
            asym = keyrate.asymptotic_key_rate(v_a, est.T, max(est.xi, 0.0), cal.eta, v_el, beta)
            summary["key_rate_asymptotic"] = asym.rate
            kw: dict[str, Any] = (
                {"all_symbols": True} if run.pe_fraction == 0 else {"pe_fraction": run.pe_fraction}
            )
            fs = keyrate.finite_size_key_rate(
                v_a,
                est.T,
                max(est.xi, 0.0),
                cal.eta,
                v_el,
                beta,
                run.block_frames * int(x.size),
                eps_pe=run.epsilon,
                eps_smooth=run.epsilon,
                eps_pa=run.epsilon,
                **kw,
            )
            summary["key_rate_finite"] = fs.rate
    except ValueError as exc:
        raise FrameError(f"estimation: {exc}") from None
    summary["dsp_seconds"] = time.perf_counter() - t_dsp
    summary["frame_seconds"] = time.perf_counter() - t0
    plot = None
    if want_plot:
        plot = {
            "symbols": y[:20_000],
            "note": f"V_A={v_a:.2f} SNU, T={summary.get('T', math.nan):.3f}",
        }
        plot["freq_hz"], plot["psd_db"] = capture_spectrum(cap.samples, fmt.adc_rate_hz)
    return FrameData(link_name, x, y, v_a, summary, plot)


def _reveal_indices(n: int, count: int) -> np.ndarray:
    """Random symbols Alice discloses for the global phase (cryptographic choice)."""
    import secrets

    count = min(count, n // 10)
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(secrets.randbits(128))
    return np.sort(rng.choice(n, size=count, replace=False))


MONITOR_READINGS = 16
"""Transmitter monitor readings averaged for each V_A measurement."""


def _set_modulation_variance(
    t: Any, frame: Any, freq_hz: float, dac_rate: float, target: float
) -> float:
    """Set the VOA so the monitor power gives ``V_A = target``; return the V_A obtained.

    ``V_A`` is proportional to the output power (``dsp.waveform.alice_modulation_variance``),
    so one measurement at the present attenuation gives the correction in dB; a second
    measures what was obtained (each the mean of ``MONITOR_READINGS`` readings).
    """
    from dsp.waveform import alice_modulation_variance

    def measure() -> float:
        # Mean of several readings: one carries up to 0.01 dB of noise, i.e. 0.23 % of V_A
        # and of T-hat, more than a block's statistical error at short range.
        p_w = (
            sum(grid.dbm_to_watt(float(t.monitor_power_dbm)) for _ in range(MONITOR_READINGS))
            / MONITOR_READINGS
        )
        if p_w <= 0:
            raise ProcedureError("transmitter monitor reads no output power")
        return alice_modulation_variance(p_w, freq_hz, frame, dac_rate)

    v_now = measure()
    att = float(t.voa_db)
    for _ in range(2):
        want = att + 10.0 * math.log10(v_now / target)
        new = min(max(want, VOA_RANGE_DB[0]), VOA_RANGE_DB[1])
        if abs(new - att) < 0.01:
            break
        t.voa_db = round(new, 3)
        att = new
        v_now = measure()
    return v_now


def capture_spectrum(
    samples: np.ndarray, rate_hz: float, nfft: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Welch power spectral density of a complex capture (for the plot), centred."""
    from scipy import signal

    x = np.asarray(samples)[: 64 * nfft]
    f, p = signal.welch(x, fs=rate_hz, nperseg=nfft, return_onesided=False, detrend=False)
    order = np.argsort(f)
    return f[order], 10.0 * np.log10(np.maximum(p[order], 1e-30))


@dataclass
class BlockJob:
    """A block ready for distillation: its record so far and what the protocol needs."""

    out: dict[str, Any]
    x: np.ndarray
    y: np.ndarray
    snr: float
    chi: float
    est: Any
    segments: tuple[tuple[int, float], ...] = ()
    """``(complex symbols, SNR)`` of each frame, in order (see :func:`block_segments`)."""


def process_block(
    bench: Bench,
    link: Link,
    block_id: int,
    frames: list[FrameData],
    calibration: Any,
    delivery: KeyDelivery | None,
    parties: Any = None,
) -> dict[str, Any]:
    """A full finite-size block of clean frames: estimate, bound, distil, deliver.

    ``parties`` is the link's ``(Alice, Bob)`` distillation pair (:func:`new_parties`),
    kept across blocks (their MAC key pools are refilled from each block's key). The
    runner may instead run :func:`distill_job` in a worker process between
    :func:`prepare_block` and :func:`finish_block`.
    """
    job = prepare_block(bench, link, block_id, frames, calibration)
    if isinstance(job, dict):
        return job
    try:
        _parties, result = distill_job(bench, parties, job.x, job.y, job.snr, job.chi, job.segments)
    except ProcedureError as exc:
        return fail_block(job, exc)
    return finish_block(bench, link, job, result, delivery)


def prepare_block(
    bench: Bench,
    link: Link,
    block_id: int,
    frames: list[FrameData],
    calibration: Any,
) -> BlockJob | dict[str, Any]:
    """Estimate a block and bound its finite-size key rate.

    Estimation uses all symbols after reconciliation (Ruppert et al. 2014) when
    ``run.pe_fraction`` is 0, else a random disclosed subset (Leverrier et al. 2010).
    Returns the block's final record (a dict) when no key can be made (no estimate,
    finite-size rate not positive or bounding the block below one key, distillation
    disabled), else a :class:`BlockJob`.
    """
    from dsp import estimation, keyrate

    run = bench.run
    x = np.concatenate([f.x for f in frames])
    y = np.concatenate([f.y for f in frames])
    n_total = int(x.size)
    v_a = float(sum(f.v_a * f.x.size for f in frames) / max(n_total, 1))
    eta, v_el, v_el_se, n0_rel = _cal_values(calibration)
    frame_v_el = [f.summary["v_el"] for f in frames if "v_el" in f.summary]
    if frame_v_el:  # each frame's, at its own carrier offset
        v_el = float(np.mean(frame_v_el))
    out: dict[str, Any] = {
        "link": link.name,
        "block": block_id,
        "frames": [f.record.get("frame") for f in frames],
        "symbols": n_total,
        "v_a": v_a,
        "key_ids_delivered": [],
        "keys": 0,
    }
    all_symbols = run.pe_fraction == 0
    try:
        if all_symbols:
            x_pe, y_pe = x, y
        else:
            import secrets

            rng = np.random.default_rng(secrets.randbits(128))
            pe, _key = estimation.split_for_estimation(n_total, run.pe_fraction, rng)
            x_pe, y_pe = x[pe], y[pe]
        est = estimation.estimate_parameters(
            x_pe,
            y_pe,
            eta=eta,
            v_el=v_el,
            V_A=v_a,
            v_el_stderr=v_el_se,
            n0_rel_stderr=n0_rel,
            eps_pe=run.epsilon,
            n_total=n_total,
            all_symbols=all_symbols,
        )
        beta = beta_at(bench, est.snr)
        fs = keyrate.key_rate_from_estimates(est, beta, eps_smooth=run.epsilon, eps_pa=run.epsilon)
        asym = keyrate.asymptotic_key_rate(
            v_a, min(max(est.T, 1e-9), 1 - 1e-9), max(est.xi, 0.0), eta, v_el, beta
        )
    except ValueError as exc:
        out["message"] = f"block {block_id}: no estimate ({exc})"
        return out
    out["estimates"] = {
        "T": est.T,
        "T_err": est.T_stderr,
        "xi": est.xi,
        "xi_err": est.xi_stderr,
        "snr": est.snr,
        "V_A": v_a,
        "eta": eta,
        "v_el": v_el,
        "T_worst": est.T_worst,
        "xi_worst": est.xi_worst,
    }
    out["beta"] = beta
    out["key_rate_finite"] = fs.rate
    out["key_rate_asymptotic"] = asym.rate
    out["finite_size"] = fs.as_dict()
    if fs.rate <= 0:
        out["message"] = (
            f"block {block_id}: finite-size key rate {fs.rate:.3g} bit/symbol <= 0 at "
            f"N={n_total}: no key"
        )
        return out
    if fs.rate * n_total < bench.kms.key_size_bits:
        out["message"] = (
            f"block {block_id}: finite-size key rate {fs.rate:.3g} bit/symbol at N={n_total} "
            f"bounds the block's key to {fs.rate * n_total:.0f} bits, less than one "
            f"{bench.kms.key_size_bits}-bit key: no key"
        )
        return out
    if not run.distill:
        out["message"] = f"block {block_id}: distillation disabled (run.distill: false)"
        return out
    if 2 * n_total < run.ldpc_block_bits:
        out["message"] = (
            f"block {block_id}: {2 * n_total} quadratures are fewer than one LDPC code "
            f"length ({run.ldpc_block_bits}); lower run.ldpc_block_bits or use longer blocks"
        )
        return out
    chi = float(fs.chi_be_worst if hasattr(fs, "chi_be_worst") else fs.chi_BE_worst)
    segments = block_segments([(int(f.x.size), float(f.v_a)) for f in frames], float(est.snr))
    return BlockJob(out, x, y, float(est.snr), chi, est, segments)


def block_segments(frames: list[tuple[int, float]], snr: float) -> tuple[tuple[int, float], ...]:
    """Each frame's SNR in a block whose frames may differ in ``V_A``.

    ``frames`` are ``(symbols, V_A)``; ``snr`` is the block's estimate at the
    symbol-weighted mean ``V_A``. SNR is proportional to ``V_A`` on one channel
    (``eta T V_A / 2`` over a noise that does not depend on it), so frame ``f`` has
    ``snr * V_A_f / mean(V_A)``: the block's precise estimate, not the frame's own.
    """
    n = sum(k for k, _ in frames)
    mean_va = sum(k * v for k, v in frames) / n if n else 0.0
    if mean_va <= 0:
        return tuple((k, snr) for k, _ in frames)
    return tuple((k, snr * v / mean_va) for k, v in frames)


def segment_snr(segments: tuple[tuple[int, float], ...], start: int, length: int) -> float:
    """Mean SNR over real symbols ``start .. start + length`` of a block cut into
    ``segments`` of ``(complex symbols, SNR)`` (two real symbols per complex one)."""
    total = weight = 0.0
    lo = 0
    for k, s in segments:
        hi = lo + 2 * k
        overlap = min(hi, start + length) - max(lo, start)
        if overlap > 0:
            total += overlap * s
            weight += overlap
        lo = hi
    if weight == 0:
        return segments[-1][1]
    return total / weight


def fail_block(job: BlockJob, exc: BaseException) -> dict[str, Any]:
    """The record of a block whose distillation could not run."""
    out = job.out
    block_id = out["block"]
    if isinstance(exc, DistillUnavailableError):
        out["message"] = f"block {block_id}: {exc}; no keys"
    else:
        out["message"] = f"block {block_id}: distillation failed ({exc}); block discarded"
    out["distill_error"] = str(exc)
    return out


def finish_block(
    bench: Bench,
    link: Link,
    job: BlockJob,
    result: DistillResult,
    delivery: KeyDelivery | None,
) -> dict[str, Any]:
    """Account a distilled block (actual beta, frame errors, authentication) and deliver."""
    from dsp import keyrate

    run = bench.run
    out = job.out
    n_total = out["symbols"]
    block_id = out["block"]
    out.update(result.summary)
    out["beta_target"] = beta_at(bench, job.snr)
    beta = result.summary.get("beta")
    if beta is not None and math.isfinite(beta) and 0 < beta <= 1:
        try:
            fs_real = keyrate.key_rate_from_estimates(
                job.est, beta, eps_smooth=run.epsilon, eps_pa=run.epsilon
            )
            fer = float(result.summary.get("fer") or 0.0)
            good = 1.0 - (fer if math.isfinite(fer) else 1.0)
            # The finite-size rate with the beta the codes reached, frame errors charged;
            # "net" also charges the verification tags and the key spent authenticating
            # the block's messages (one-time MAC keys, refilled from the block's key).
            acct = result.summary.get("accounting") or {}
            spent = float(result.summary.get("auth_bits", 0.0)) + float(
                acct.get("leak_ver_bits", 0.0)
            )
            out["key_rate_finite_planned"] = out.get("key_rate_finite")
            out["key_rate_finite"] = fs_real.rate * good
            out["key_rate_finite_net"] = fs_real.rate * good - spent / n_total
        except ValueError:
            pass
    out["keys"] = len(result.alice_keys)
    if result.summary.get("distill_stopped") and not result.alice_keys:
        out["message"] = f"block {block_id}: no key ({result.summary['distill_stopped']})"
    if result.alice_keys and delivery is not None and delivery.available:
        meta = {
            "link": link.name,
            "block": block_id,
            "symbols": n_total,
            "key_rate_finite": out.get("key_rate_finite"),
        }
        if delivery.deliver(link.name, block_id, result.alice_keys, result.bob_keys, meta):
            out["key_ids_delivered"] = [k for k, _ in result.alice_keys]
    elif result.alice_keys:
        out["message"] = f"block {block_id}: {len(result.alice_keys)} keys kept (no KMS)"
    return out


@dataclass
class DistillResult:
    alice_keys: list[tuple[str, bytes]]
    bob_keys: list[tuple[str, bytes]]
    summary: dict[str, Any]


def new_parties(bench: Bench) -> Any:
    """A fresh ``(Alice, Bob)`` pair sharing a pre-shared secret (lab bootstrap).

    The secret seeds the one-time MAC key pools of the authenticated classical channel;
    each block refills them from its own key. On a deployed link it would be provisioned.
    Raises :class:`DistillUnavailableError` when ``dsp.distill`` is missing.
    """
    import secrets

    try:
        from dsp import distill
    except ImportError as exc:
        raise DistillUnavailableError(
            f"key distillation (dsp.distill) is not available: {exc}"
        ) from None
    psk = secrets.token_bytes(2 * 512 * 32)
    config = distill.DistillConfig(
        block_bits=bench.run.ldpc_block_bits,
        key_bits=bench.kms.key_size_bits,
        beta=bench.run.beta,
    )
    return distill.Alice(psk, config), distill.Bob(psk, config)


def distill_job(
    bench: Bench,
    parties: Any,
    x: np.ndarray,
    y: np.ndarray,
    snr: float,
    chi: float,
    segments: tuple[tuple[int, float], ...] = (),
) -> tuple[Any, DistillResult]:
    """Reverse reconciliation, verification and privacy amplification of one block.

    ``segments`` (``(complex symbols, SNR)`` per frame, :func:`block_segments`) give
    each reconciliation frame the SNR of the symbols it uses, for a block whose frames
    were sent at different modulation variances; empty: ``snr`` throughout.

    Pure computation (runs in a worker process too): returns the parties (their MAC
    pools refilled) and the keys. ``x`` (Alice, ``x_A`` scale) and ``y`` (Bob, SNU) are
    complex; the distillation works on real quadratures (I, Q interleaved). Eve's
    information per real dimension is half the finite-size Holevo bound per complex
    symbol ``chi`` (worst-case ``T``, ``xi``) plus half the smoothing term of Leverrier
    et al. 2010 (the privacy-amplification term ``2 log2(1/eps_PA)`` is charged by
    :func:`dsp.privacy.output_length` itself).
    """
    try:
        from dsp import distill
    except ImportError as exc:
        raise DistillUnavailableError(
            f"key distillation (dsp.distill) is not available: {exc}"
        ) from None

    if parties is None:
        parties = new_parties(bench)
    alice, bob = parties
    eps = bench.run.epsilon
    _share_codes(parties, bench.run.ldpc_block_bits)

    def eve_bits(n_real: int) -> float:
        n_complex = max(n_real // 2, 1)
        return 0.5 * (chi + 7.0 * math.sqrt(math.log2(2.0 / eps) / n_complex))

    xr = np.empty(2 * x.size)
    xr[0::2], xr[1::2] = x.real, x.imag
    yr = np.empty(2 * y.size)
    yr[0::2], yr[1::2] = y.real, y.imag

    def mac_bits_used() -> float:
        return sum(
            float(getattr(getattr(p, "party", None), "mac_bits_used", 0.0)) for p in (alice, bob)
        )

    auth_before = mac_bits_used()
    built_before = _build_seconds(parties)
    try:
        res, stopped = _distill_frames(
            distill,
            alice,
            bob,
            xr,
            yr,
            segments or ((x.size, float(snr)),),
            eve_bits,
            bench.run.distill_budget_s,
        )
    except (ValueError, RuntimeError) as exc:
        raise ProcedureError(str(exc)) from None
    a_keys = [(str(k), bytes(v)) for k, v in res.alice_keys]
    b_keys = [(str(k), bytes(v)) for k, v in res.bob_keys]
    if a_keys != b_keys:
        raise ProcedureError(
            f"Alice's and Bob's keys differ after privacy amplification "
            f"({len(a_keys)} vs {len(b_keys)} keys): block discarded"
        )
    n_complex = x.size
    auth_bits = mac_bits_used() - auth_before  # one-time MAC keys spent on this block
    summary = {
        "auth_bits": auth_bits,
        "beta": res.beta,
        "fer": res.fer,
        "ldpc_frames": len(res.frames),
        "ldpc_frames_ok": res.frames_ok,
        "ldpc_frames_rescued": sum(1 for f in res.frames if f.status == "ok" and f.attempts > 1),
        "distill_seconds": res.seconds,
        "code_build_seconds": _build_seconds(parties) - built_before,
        "key_bits": res.key_bits,
        "key_rate_distilled": res.key_bits / n_complex if n_complex else 0.0,
        "accounting": res.accounting,
    }
    if stopped:
        summary["distill_stopped"] = stopped
    _share_codes(parties, None)
    return (alice, bob), DistillResult(a_keys, b_keys, summary)


_CODE_CACHE: dict[int, dict[int, Any]] = {}
"""LDPC parity-check matrices by code length, then code index, shared by every party in
this process: the codes are deterministic (same seed, same matrix on both sides), and
building a 1e6-bit code costs seconds, so Alice and Bob of every link share one copy."""


def _share_codes(parties: Any, block_bits: int | None) -> None:
    """Point both parties' code caches at the process-wide one, filled from the on-disk
    store (:mod:`hil.code_store`); ``None``: detach them, so parties pickled back from a
    worker process do not carry the matrices."""
    from hil import code_store

    for p in parties:
        party = getattr(p, "party", None)
        if party is None or not isinstance(getattr(party, "_codes", None), dict):
            continue
        if block_bits is None:
            party._codes = {}
        else:
            party.code_builder = code_store.load_or_build
            shared = _CODE_CACHE.setdefault(block_bits, {})
            for index, code in party._codes.items():
                shared.setdefault(index, code)
            party._codes = shared


def _build_seconds(parties: Any) -> float:
    """Seconds the parties have spent building LDPC codes (``_Party.build_seconds``)."""
    return sum(float(getattr(getattr(p, "party", None), "build_seconds", 0.0)) for p in parties)


MAX_FAILED_IN_A_ROW = 3
"""Reconciliation frames failing in a row after which Bob lowers beta (or stops)."""
BETA_STEP = 0.03
BETA_BACKOFFS = 2


def _distill_frames(
    distill: Any,
    alice: Any,
    bob: Any,
    xr: np.ndarray,
    yr: np.ndarray,
    segments: tuple[tuple[int, float], ...],
    eve_bits: Any,
    budget_s: float,
) -> tuple[Any, str]:
    """The two-party protocol of :func:`dsp.distill.distill_block`, with a time budget.

    Bob sends one reconciliation frame after the other; the block stops early (keeping
    the frames already accepted) when ``MAX_FAILED_IN_A_ROW`` frames fail in a row (the
    SNR estimate does not suit the codes) or the budget is spent, so a bad block cannot
    stall the other links. Building a code the process has not built yet (tens of
    seconds at 1e6 bits, once per code and process) does not count against the budget.
    Returns the result and why it stopped early ("" if not).
    """
    import dataclasses

    t0 = time.perf_counter()
    built0 = _build_seconds((alice, bob))
    chan = distill.InProcessChannel(alice)
    alice.load_block(xr)
    bob.load_block(yr)
    frames: list[Any] = []
    failed = 0
    stopped = ""
    party = bob.party
    config = party.config
    backoffs = 0
    n = bob.party.config.block_bits
    try:
        while True:
            snr = segment_snr(segments, bob.offset, n)
            st = distill.reconcile_frame(bob, snr, chan)
            if st is None:
                break
            frames.append(st)
            failed = 0 if st.status == "ok" else failed + 1
            if failed >= MAX_FAILED_IN_A_ROW:
                beta = party.target_beta(snr)
                if backoffs < BETA_BACKOFFS and beta - BETA_STEP > 0.5:
                    # The codes do not decode at this efficiency here: ask for less at
                    # every SNR of the block (the beta each frame used is in its
                    # FrameStart and in the accounting).
                    party.config = dataclasses.replace(
                        party.config, beta_backoff=party.config.beta_backoff + BETA_STEP
                    )
                    backoffs += 1
                    failed = 0
                    continue
                stopped = f"{failed} reconciliation frames failed in a row ({st.status})"
                break
            if time.perf_counter() - t0 - (_build_seconds((alice, bob)) - built0) > budget_s:
                stopped = f"time budget of {budget_s:g} s spent after {len(frames)} frames"
                break
    finally:
        party.config = config
    data, acct = bob.pa_message(eve_bits)
    block_id, bob_keys = bob.handle_pa_ack(distill.exchange(chan, data))
    alice_keys: list[Any] = []
    if alice.committed and alice.committed[-1][0] == block_id:
        alice_keys = alice.committed[-1][1]
    result = distill.BlockResult(
        block_id=block_id,
        alice_keys=alice_keys,
        bob_keys=bob_keys,
        frames=frames,
        n_symbols_offered=int(yr.size),
        accounting=acct,
        seconds=time.perf_counter() - t0,
    )
    return result, stopped


def _cal_values(calibration: Any) -> tuple[float, float, float, float]:
    """``(eta, v_el, v_el_stderr, n0_rel_stderr)`` from a calibration object or mapping."""
    get = (
        calibration.get
        if isinstance(calibration, dict)
        else lambda k, d=None: getattr(calibration, k, d)
    )
    eta = float(get("eta", 1.0))
    v_el = float(get("v_el", 0.0))
    se = float(get("v_el_stderr", 0.0) or 0.0)
    n0_rel = float(get("n0_rel_stderr", 0.0) or 0.0)
    return eta, v_el, se, n0_rel
