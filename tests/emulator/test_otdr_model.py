"""OTDR trace synthesis and the instrument's own analysis (emulator/otdr_model.py)."""

from __future__ import annotations

import numpy as np
import pytest

from emulator import otdr_model as om

PATH = om.FibrePath(
    front_loss_db=0.8,
    length_m=20_000.0,
    attenuation_db_per_km=0.22,
    events=[(5_000.0, 0.3, None), (12_000.0, 0.6, -40.0)],
    end_reflectance_db=-30.0,
)


def _settings(**kw) -> om.OtdrSettings:
    base = {"wavelength_m": 1625e-9, "pulse_s": 100e-9, "range_m": 40_000.0, "averaging_s": 10.0}
    base.update(kw)
    return om.OtdrSettings(**base)


def _floor_db(trace: om.OtdrTrace, beyond_m: float) -> float:
    z = np.arange(trace.points) * trace.spacing_m
    return float(np.median(trace.y_db[z > beyond_m]))


def test_noise_floor_falls_as_one_over_sqrt_averaging_time() -> None:
    rng = np.random.default_rng(1)
    lo = om.synthesise(_settings(averaging_s=1.0), PATH, rng)
    hi = om.synthesise(_settings(averaging_s=100.0), PATH, rng)
    # noise rms / 10 -> displayed floor (5 log10) 5 dB lower; the median of ~40k noise-only
    # points is stable to a few hundredths of a dB
    assert _floor_db(lo, 25_000.0) - _floor_db(hi, 25_000.0) == pytest.approx(5.0, abs=0.1)


def test_events_found_by_the_instrument_within_half_the_pulse_length() -> None:
    rng = np.random.default_rng(2)
    st = _settings()
    half = om.pulse_length_m(st) / 2
    a = om.analyse(om.synthesise(st, PATH, rng))
    kinds = [e.type for e in a.events]
    assert kinds == [om.EVENT_NONREFLECTIVE, om.EVENT_REFLECTIVE, om.EVENT_END]
    splice, conn, end = a.events
    assert abs(splice.location_m - 5000.0) <= half and splice.loss_db == pytest.approx(
        0.3, abs=0.05
    )
    assert abs(conn.location_m - 12000.0) <= half and conn.loss_db == pytest.approx(0.6, abs=0.05)
    assert conn.reflectance_db == pytest.approx(-40.0, abs=1.0)
    assert np.isnan(splice.reflectance_db)
    assert abs(end.location_m - 20000.0) <= half
    assert a.attenuation_db_per_km == pytest.approx(0.22, abs=0.003)
    # cumulative: fibre + events up to just after the event
    assert end.cumulative_db == pytest.approx(0.22 * 20 + 0.9, abs=0.1)


def test_dead_zone_grows_with_pulse_width() -> None:
    """The peak of a reflective event is as wide as the pulse (event dead zone)."""
    rng = np.random.default_rng(3)
    widths = []
    for pulse in (50e-9, 1e-6):
        st = _settings(pulse_s=pulse, averaging_s=60.0)
        tr = om.synthesise(st, PATH, rng)
        z = np.arange(tr.points) * tr.spacing_m
        near = (z > 11_000) & (z < 14_000)
        base = np.median(tr.y_db[near])
        widths.append(np.sum(tr.y_db[near] > base + 3.0) * tr.spacing_m)
        assert widths[-1] == pytest.approx(om.pulse_length_m(st), rel=0.2, abs=2 * tr.spacing_m)
    assert widths[1] > 10 * widths[0]


def test_index_of_refraction_scales_the_distance_axis() -> None:
    rng = np.random.default_rng(4)
    st = _settings(ior=1.5, averaging_s=60.0)
    a = om.analyse(om.synthesise(st, PATH, rng))
    splice = a.events[0]
    assert splice.location_m == pytest.approx(5000.0 * 1.4682 / 1.5, abs=om.pulse_length_m(st) / 2)


def test_trace_encoding_and_parameters() -> None:
    tr = om.synthesise(_settings(range_m=5000.0), PATH, np.random.default_rng(5))
    payload = tr.encode()
    assert int.from_bytes(payload[:4], "big") == tr.points == (len(payload) - 4) // 2
    y = np.frombuffer(payload[4:], ">u2") / 1000.0
    assert np.allclose(y, tr.y_db, atol=5e-4) and y.max() <= om.Y_MAX
    fields = tr.parameters().split(",")
    assert int(fields[0]) == tr.points and float(fields[1]) == tr.spacing_m
    assert tr.points < om.MAX_POINTS and tr.spacing_m * (tr.points - 1) >= 5000.0 - tr.spacing_m


def test_no_fibre_gives_no_events() -> None:
    tr = om.synthesise(_settings(), om.FibrePath(front_loss_db=0.8), np.random.default_rng(6))
    assert om.analyse(tr).events == []
