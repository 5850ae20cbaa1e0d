"""Fibre monitoring: power-meter loss every frame, OTDR scans against a baseline, alarms.

What a field deployment does while it makes keys: a power meter at the far end tracks the
link loss continuously and an OTDR, out of band, scans the fibre on a schedule. Any
deviation from the baseline (a loss step, a new reflective or non-reflective event, a cut)
raises an alarm naming the link, the kind and, when the OTDR can tell, the location. Keys
of frames that the monitoring has not yet vouched for are held; a frame is released only
by a clean check that follows it, and is quarantined (never distilled, never delivered) if
an alarm is active when that check comes. An alarm clears when the link is back.

Pure logic over readings; the instruments are read by :mod:`hil.procedures`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from hil.bench_file import MonitorSettings

C_M_PER_S = 299_792_458.0

ALARM_KINDS: tuple[str, ...] = (
    "loss_step",
    "new_reflective_event",
    "new_nonreflective_event",
    "cut",
)


@dataclass(frozen=True)
class OtdrEvent:
    """One entry of an OTDR event table (``CALC:EVEN? i``), normalised."""

    location_m: float
    kind: str  # "reflective" | "non-reflective" | "end"
    loss_db: float
    reflectance_db: float | None = None
    cumulative_db: float | None = None


@dataclass
class OtdrScan:
    """An OTDR acquisition: the trace (one-way dB vs distance) and the event table."""

    link: str
    time: float
    distance_m: np.ndarray
    level_db: np.ndarray
    events: list[OtdrEvent]
    resolution_m: float
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "link": self.link,
            "time": self.time,
            "resolution_m": self.resolution_m,
            "settings": self.settings,
            "events": [asdict(e) for e in self.events],
        }


@dataclass
class Alarm:
    """An anomaly on a link, raised by the power meter or the OTDR."""

    id: str
    link: str
    kind: str
    source: str
    raised_at: float
    message: str
    location_km: float | None = None
    magnitude_db: float | None = None
    raised_frame: int | None = None
    cleared_at: float | None = None
    sources: list[str] = field(default_factory=list)  # every instrument that saw it
    reporting: list[str] = field(default_factory=list)  # those that still see it

    def __post_init__(self) -> None:
        if not self.sources:
            self.sources = [self.source]
        if not self.reporting:
            self.reporting = list(self.sources)

    @property
    def active(self) -> bool:
        return self.cleared_at is None

    def describe(self) -> str:
        where = f" at {self.location_km:.3f} km" if self.location_km is not None else ""
        size = f" ({self.magnitude_db:+.2f} dB)" if self.magnitude_db is not None else ""
        return f"{self.link}: {self.kind.replace('_', ' ')}{where}{size}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def two_point_resolution_m(pulse_width_ns: float, ior: float) -> float:
    """Spatial resolution of an OTDR pulse: ``c * tau / (2 n)``."""
    return C_M_PER_S * pulse_width_ns * 1e-9 / (2.0 * ior)


def event_kind(type_text: str) -> str:
    """Map an instrument's event-type text to reflective / non-reflective / end."""
    t = str(type_text).strip().upper().replace("_", "").replace("-", "")
    if t.startswith("END") or t in ("E", "FIBREEND", "FIBEREND"):
        return "end"
    if t.startswith(("NONREF", "NREF", "NR", "SPL", "BEND", "LOSS", "N")):
        return "non-reflective"
    if t.startswith(("REF", "CON", "R", "F")):
        return "reflective"
    return "non-reflective"


def difference_from_baseline(scan: OtdrScan, baseline: OtdrScan) -> tuple[np.ndarray, np.ndarray]:
    """``(distance_m, level - baseline level)`` on the scan's grid, within both traces.

    A loss that appears at distance z lowers the trace by that loss from z onwards, so
    the difference is a downward step at z (negative dB).
    """
    z = np.asarray(scan.distance_m, dtype=float)
    zb = np.asarray(baseline.distance_m, dtype=float)
    if z.size == 0 or zb.size == 0:
        return z[:0], z[:0]
    hi = min(z[-1], zb[-1])
    keep = z <= hi
    base = np.interp(z[keep], zb, np.asarray(baseline.level_db, dtype=float))
    return z[keep], np.asarray(scan.level_db, dtype=float)[keep] - base


class LinkMonitor:
    """Monitoring state of one link: its baselines, active alarms and pending frames.

    Call :meth:`set_baseline` once (after bring-up), :meth:`check_power` after every frame
    and :meth:`check_otdr` after every scheduled scan. Both return the alarms raised by
    that reading. :meth:`hold` a frame after capture and :meth:`release` it, which
    decides, at each clean or alarmed check, which frames are clean and which are
    quarantined.
    """

    def __init__(self, link: str, settings: MonitorSettings) -> None:
        self.link = link
        self.settings = settings
        self.baseline_scan: OtdrScan | None = None
        self.baseline_loss_db: float | None = None
        self.last_loss_db: float | None = None
        self.last_scan: OtdrScan | None = None
        self.alarms: list[Alarm] = []
        self._pending: list[int] = []
        self._ids = itertools.count(1)

    # ----------------------------------------------------------- state
    @property
    def active(self) -> list[Alarm]:
        return [a for a in self.alarms if a.active]

    @property
    def under_alarm(self) -> bool:
        return any(a.active for a in self.alarms)

    def set_baseline(self, scan: OtdrScan | None, loss_db: float | None) -> None:
        """Record the reference state of a healthy link."""
        self.baseline_scan = scan
        self.baseline_loss_db = loss_db
        self.last_scan = scan
        self.last_loss_db = loss_db

    def _raise(
        self,
        kind: str,
        source: str,
        now: float,
        message: str,
        location_km: float | None = None,
        magnitude_db: float | None = None,
        frame: int | None = None,
    ) -> Alarm | None:
        for alarm in self.active:
            if alarm.kind == kind and _same_place(alarm.location_km, location_km, self._tol_km):
                # The same fault seen by another instrument (or again): one alarm.
                if alarm.location_km is None and location_km is not None:
                    alarm.location_km = location_km
                if source not in alarm.sources:
                    alarm.sources.append(source)
                    alarm.message += f"; {source}: {message}"
                if source not in alarm.reporting:
                    alarm.reporting.append(source)
                return None
        alarm = Alarm(
            id=f"{self.link}-{next(self._ids)}",
            link=self.link,
            kind=kind,
            source=source,
            raised_at=now,
            message=message,
            location_km=location_km,
            magnitude_db=magnitude_db,
            raised_frame=frame,
        )
        self.alarms.append(alarm)
        return alarm

    @property
    def _tol_km(self) -> float:
        return self.match_tolerance_m / 1e3

    @property
    def match_tolerance_m(self) -> float:
        """Two events closer than this are the same event."""
        res = 0.0
        scan = self.baseline_scan or self.last_scan
        if scan is not None:
            res = scan.resolution_m
            if len(scan.distance_m) > 1:
                res = max(res, 3.0 * float(np.median(np.diff(scan.distance_m))))
        return max(2.0 * res, 25.0)

    # ----------------------------------------------------------- power meter
    def check_power(self, loss_db: float, now: float, frame: int | None = None) -> list[Alarm]:
        """Compare a power-meter loss (dB, ``inf`` for no light) with the baseline."""
        self.last_loss_db = loss_db
        if self.baseline_loss_db is None:
            self.baseline_loss_db = loss_db
            return []
        raised: list[Alarm] = []
        step = loss_db - self.baseline_loss_db
        s = self.settings
        if not math.isfinite(loss_db) or step >= s.cut_loss_db:
            alarm = self._raise(
                "cut",
                "powermeter",
                now,
                f"no light at the receiver (loss {_fmt_db(loss_db)}, baseline "
                f"{self.baseline_loss_db:.2f} dB)",
                magnitude_db=step if math.isfinite(step) else None,
                frame=frame,
            )
            raised += [alarm] if alarm else []
        elif abs(step) >= s.loss_step_db:
            # Only an *unexplained* change is new: an OTDR alarm may already cover it.
            alarm = self._raise(
                "loss_step",
                "powermeter",
                now,
                f"loss changed by {step:+.2f} dB (now {loss_db:.2f} dB, baseline "
                f"{self.baseline_loss_db:.2f} dB)",
                magnitude_db=step,
                frame=frame,
            )
            raised += [alarm] if alarm else []
        else:
            self._clear(("loss_step", "cut"), "powermeter", now)
        return raised

    # ----------------------------------------------------------- OTDR
    def check_otdr(self, scan: OtdrScan, now: float, frame: int | None = None) -> list[Alarm]:
        """Compare a scan with the baseline: new events, grown events, an early end."""
        self.last_scan = scan
        base = self.baseline_scan
        if base is None:
            self.baseline_scan = scan
            return []
        s = self.settings
        tol = self.match_tolerance_m
        raised: list[Alarm] = []
        base_end = _fibre_end(base)
        end = _fibre_end(scan)
        explained: list[float] = []

        cut_at: float | None = None
        if base_end is not None and (end is None or end < base_end - tol):
            cut_at = end if end is not None else _trace_end(scan)
        if cut_at is not None:
            alarm = self._raise(
                "cut",
                "otdr",
                now,
                f"fibre ends at {cut_at / 1e3:.3f} km (baseline end {base_end / 1e3:.3f} km)",
                location_km=cut_at / 1e3,
                frame=frame,
            )
            raised += [alarm] if alarm else []
            explained.append(cut_at)

        for ev in scan.events:
            if ev.kind == "end" or (cut_at is not None and ev.location_m >= cut_at - tol):
                continue
            match = _nearest(base.events, ev.location_m, tol)
            if match is None:
                reflective = ev.kind == "reflective" or (
                    ev.reflectance_db is not None and ev.reflectance_db > s.reflective_db
                )
                if not reflective and ev.loss_db < s.event_db:
                    continue
                kind = "new_reflective_event" if reflective else "new_nonreflective_event"
                refl = (
                    f", reflectance {ev.reflectance_db:.1f} dB"
                    if reflective and ev.reflectance_db is not None
                    else ""
                )
                alarm = self._raise(
                    kind,
                    "otdr",
                    now,
                    f"new {'reflective' if reflective else 'non-reflective'} event at "
                    f"{ev.location_m / 1e3:.3f} km, loss {ev.loss_db:.2f} dB{refl}",
                    location_km=ev.location_m / 1e3,
                    magnitude_db=ev.loss_db,
                    frame=frame,
                )
                raised += [alarm] if alarm else []
                explained.append(ev.location_m)
            elif ev.loss_db - match.loss_db >= s.event_db:
                alarm = self._raise(
                    "loss_step",
                    "otdr",
                    now,
                    f"event at {ev.location_m / 1e3:.3f} km grew from {match.loss_db:.2f} "
                    f"to {ev.loss_db:.2f} dB",
                    location_km=ev.location_m / 1e3,
                    magnitude_db=ev.loss_db - match.loss_db,
                    frame=frame,
                )
                raised += [alarm] if alarm else []
                explained.append(ev.location_m)

        if cut_at is None:
            step = locate_step(scan, base, s.event_db)
            if step is not None and not any(abs(step[0] - x) <= 4 * tol for x in explained):
                alarm = self._raise(
                    "loss_step",
                    "otdr",
                    now,
                    f"trace drops {-step[1]:.2f} dB from {step[0] / 1e3:.3f} km on "
                    "(not in the event table)",
                    location_km=step[0] / 1e3,
                    magnitude_db=-step[1],
                    frame=frame,
                )
                raised += [alarm] if alarm else []
                explained.append(step[0])

        if not explained:
            self._clear(ALARM_KINDS, "otdr", now)
        return raised

    def _clear(self, kinds: Iterable[str], source: str, now: float) -> None:
        """``source`` sees no fault of ``kinds``: it withdraws from those alarms; an alarm
        no instrument still reports is cleared."""
        kinds = tuple(kinds)
        for alarm in self.active:
            if alarm.kind in kinds and source in alarm.reporting:
                alarm.reporting.remove(source)
                if not alarm.reporting:
                    alarm.cleared_at = now

    # ----------------------------------------------------------- frames
    def hold(self, frame: int) -> None:
        """A frame was captured: hold it until a monitoring check vouches for it."""
        self._pending.append(frame)

    def release(self) -> tuple[list[int], list[int]]:
        """After a complete check: ``(clean, quarantined)`` frames held so far.

        Held frames are quarantined if any alarm is active now, or was raised since they
        were held (it may have started during them), else they are clean.
        """
        pending, self._pending = self._pending, []
        if not pending:
            return [], []
        first = min(pending)
        hit = self.under_alarm or any(
            a.raised_frame is not None and a.raised_frame >= first for a in self.alarms
        )
        return ([], pending) if hit else (pending, [])

    @property
    def pending(self) -> list[int]:
        return list(self._pending)


def _fmt_db(x: float) -> str:
    return f"{x:.2f} dB" if math.isfinite(x) else "no light"


def _same_place(a: float | None, b: float | None, tol_km: float) -> bool:
    if a is None or b is None:
        return True
    return abs(a - b) <= tol_km


def _nearest(events: Sequence[OtdrEvent], location_m: float, tol_m: float) -> OtdrEvent | None:
    best: OtdrEvent | None = None
    for ev in events:
        if ev.kind == "end":
            continue
        d = abs(ev.location_m - location_m)
        if d <= tol_m and (best is None or d < abs(best.location_m - location_m)):
            best = ev
    return best


def _fibre_end(scan: OtdrScan) -> float | None:
    ends = [e.location_m for e in scan.events if e.kind == "end"]
    return min(ends) if ends else None


def _trace_end(scan: OtdrScan) -> float:
    """Where the backscatter sinks into the noise floor (a cut the table did not name)."""
    z = np.asarray(scan.distance_m, dtype=float)
    y = np.asarray(scan.level_db, dtype=float)
    if z.size < 8:
        return float(z[0]) if z.size else 0.0
    floor = float(np.median(y[-max(4, y.size // 50) :]))
    above = np.nonzero(y > floor + 3.0)[0]
    return float(z[above[-1]]) if above.size else float(z[0])


def locate_step(
    scan: OtdrScan, baseline: OtdrScan, threshold_db: float
) -> tuple[float, float] | None:
    """A loss that the event table missed: ``(location_m, step_db)`` or ``None``.

    Smooths the difference from the baseline over a few resolutions and looks at its
    far-end level before the fibre end; a drop of at least ``threshold_db`` is located
    where the smoothed difference first crosses half of it.
    """
    z, d = difference_from_baseline(scan, baseline)
    end = _fibre_end(baseline)
    if end is not None:
        keep = z < end - 4 * max(scan.resolution_m, 10.0)
        z, d = z[keep], d[keep]
    if z.size < 32:
        return None
    dz = float(np.median(np.diff(z)))
    width = max(5, round(4 * max(scan.resolution_m, dz) / max(dz, 1e-9)))
    width = min(width, z.size // 8)
    kernel = np.ones(width) / width
    smooth = np.convolve(d, kernel, mode="valid")
    zs = z[width // 2 : width // 2 + smooth.size]
    tail = float(np.median(smooth[-max(width, smooth.size // 20) :]))
    head = float(np.median(smooth[: max(width, smooth.size // 20)]))
    step = tail - head
    if step > -threshold_db:
        return None
    crossing = np.nonzero(smooth - head <= step / 2.0)[0]
    if crossing.size == 0:
        return None
    return float(zs[crossing[0]]), step
