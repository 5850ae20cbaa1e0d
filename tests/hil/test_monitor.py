"""Alarm logic on synthetic OTDR traces and power readings (no instruments)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hil.bench_file import MonitorSettings
from hil.monitor import LinkMonitor, OtdrEvent, OtdrScan, locate_step, two_point_resolution_m

RES_M = two_point_resolution_m(100.0, 1.4682)  # 100 ns pulse: ~10.2 m


def scan(
    events: list[OtdrEvent],
    length_m: float = 12_000.0,
    seed: int = 0,
    t: float = 0.0,
    table: bool = True,
) -> OtdrScan:
    """A one-way trace: 0.22 dB/km slope, steps at events, noise floor after the end."""
    rng = np.random.default_rng(seed)
    z = np.arange(0.0, 20_000.0, 2.0)
    level = -0.22e-3 * z
    end = min([e.location_m for e in events if e.kind == "end"] or [length_m])
    for e in events:
        if e.kind != "end":
            level = level - e.loss_db * (z >= e.location_m)
    level = np.where(z <= end, level, -40.0) + rng.normal(0.0, 0.01, z.size)
    evs = events if table else [e for e in events if e.kind == "end"]
    return OtdrScan("a", t, z, level, list(evs), RES_M)


BASE = [
    OtdrEvent(0.0, "reflective", 0.3, -45.0),
    OtdrEvent(5_000.0, "non-reflective", 0.05),
    OtdrEvent(12_000.0, "end", 0.0, -14.0),
]


def monitor() -> LinkMonitor:
    m = LinkMonitor("a", MonitorSettings())
    m.set_baseline(scan(BASE), loss_db=4.0)
    return m


def test_clean_scan_and_noise_raise_nothing() -> None:
    m = monitor()
    moved = [OtdrEvent(5_004.0, "non-reflective", 0.07), *BASE[::2]]
    assert m.check_otdr(scan(moved, seed=1, t=10.0), now=10.0) == []
    assert m.check_power(4.05, now=10.0) == []
    assert not m.under_alarm


def test_bend_at_7_2_km_is_a_located_nonreflective_event() -> None:
    m = monitor()
    bend = OtdrEvent(7_204.0, "non-reflective", 1.0)
    raised = m.check_otdr(scan([*BASE, bend], seed=2), now=20.0, frame=3)
    assert [a.kind for a in raised] == ["new_nonreflective_event"]
    assert abs(raised[0].location_km * 1e3 - 7_200.0) <= RES_M
    assert raised[0].raised_frame == 3 and "7.204 km" in raised[0].describe()
    power = m.check_power(5.0, now=20.5, frame=3)
    assert [a.kind for a in power] == ["loss_step"] and power[0].magnitude_db == pytest.approx(1.0)


def test_reflective_event_and_grown_event() -> None:
    m = monitor()
    connector = OtdrEvent(9_000.0, "reflective", 0.02, -40.0)
    grown = OtdrEvent(5_000.0, "non-reflective", 0.4)
    kinds = {a.kind for a in m.check_otdr(scan([*BASE, connector]), now=1.0)}
    assert kinds == {"new_reflective_event"}
    m2 = monitor()
    raised = m2.check_otdr(scan([BASE[0], grown, BASE[2]]), now=1.0)
    assert [a.kind for a in raised] == ["loss_step"]
    assert raised[0].location_km == pytest.approx(5.0)


def test_cut_from_otdr_and_powermeter() -> None:
    m = monitor()
    cut = [BASE[0], BASE[1], OtdrEvent(8_300.0, "end", 0.0, -20.0)]
    raised = m.check_otdr(scan(cut), now=5.0)
    assert [a.kind for a in raised] == ["cut"] and raised[0].location_km == pytest.approx(8.3)
    # The power meter's view of the same cut merges into the active cut alarm.
    assert m.check_power(math.inf, now=5.5) == []
    assert m.under_alarm


def test_step_missing_from_event_table_is_found_in_the_trace() -> None:
    m = monitor()
    tap = OtdrEvent(6_500.0, "non-reflective", 0.3)
    s = scan([*BASE, tap], seed=3, table=False)
    s.events = list(BASE)
    loc = locate_step(s, m.baseline_scan, 0.1)
    assert (
        loc is not None
        and abs(loc[0] - 6_500.0) < 4 * RES_M
        and loc[1] == pytest.approx(-0.3, abs=0.03)
    )
    raised = m.check_otdr(s, now=1.0)
    assert [a.kind for a in raised] == ["loss_step"]


def test_quarantine_and_clearing() -> None:
    m = monitor()
    m.hold(0)
    assert m.release() == ([0], [])
    m.hold(1)
    m.check_power(4.5, now=3.0, frame=1)  # a tap appears during frame 1
    m.check_otdr(scan([*BASE, OtdrEvent(3_000.0, "non-reflective", 0.3)]), now=3.5, frame=1)
    assert m.release() == ([], [1])
    m.hold(2)
    assert m.release() == ([], [2])  # still under alarm
    # The tap is removed: both sources clear; later frames are clean again.
    m.check_power(4.0, now=9.0, frame=3)
    m.check_otdr(scan(BASE, seed=5), now=9.5, frame=3)
    assert not m.under_alarm and all(a.cleared_at is not None for a in m.alarms)
    m.hold(4)
    assert m.release() == ([4], [])
