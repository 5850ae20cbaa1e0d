"""Bob's DSP chain on the synthetic channel of ``dsp_synth`` (docs/physics.md), small frames.

Statistics: with ``n`` complex symbols, ``t = sqrt(eta T / 2)`` and noise variance ``s2``
per quadrature, the estimator of ``t`` has standard error ``sqrt(s2 / (2 n V_A))`` and of
``s2`` ``s2 sqrt(1 / n)``; the estimation module reports these as ``T_stderr`` and
``xi_stderr`` and tolerances below are 4 of those (a 6e-5 two-sided false-alarm chance per
assertion) plus, where stated, a bound on the DSP's own residual.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from dsp_synth import synth_capture

from dsp.calibration import calibrate
from dsp.estimation import estimate_parameters
from dsp.frame import FrameFormat, FrameFormatError
from dsp.rx import (
    ClippingError,
    NoPilotError,
    NoPreambleError,
    process_frame,
)
from dsp.waveform import alice_modulation_variance, build_frame

FMT = FrameFormat(n_symbols=131072, preamble_length=2039)


@pytest.fixture(scope="module")
def tx():
    return build_frame(FMT, np.random.default_rng(7))


def run_chain(tx, cap, fmt=FMT):
    v_a = alice_modulation_variance(cap.monitor_power_w, 193.4e12, tx, fmt.dac_rate_hz)
    alpha = tx.symbols * math.sqrt(v_a / 2)
    res = process_frame(
        cap.i,
        cap.q,
        cap.scale,
        cap.scale,
        fmt,
        revealed_index=np.arange(0, alpha.size, 10),
        revealed_alpha=alpha[::10],
    )
    cal = calibrate(
        (*cap.shot, cap.scale, cap.scale),
        (*cap.electronic, cap.scale, cap.scale),
        cap.eta,
        fmt,
        res.cfo_hz,
    )
    y = res.symbols / np.float32(math.sqrt(cal.n0))
    est = estimate_parameters(
        alpha,
        y,
        eta=cal.eta,
        v_el=cal.v_el,
        V_A=v_a,
        v_el_stderr=cal.v_el_stderr,
        eps_pe=None,
        symbols="amplitude",
        all_symbols=True,
    )
    return res, cal, est, v_a


def test_frame_format_roundtrip_and_validation():
    f = FrameFormat()
    assert FrameFormat.from_dict(f.to_dict()) == f
    assert f.sps_dac == 4 and f.frame_samples == 4_000_000
    assert f.capture_points >= f.frame_adc_samples + f.capture_margin
    with pytest.raises(FrameFormatError, match="pilot_offset_hz"):
        FrameFormat(pilot_offset_hz=150e6)
    with pytest.raises(FrameFormatError, match="version"):
        FrameFormat(version=99)
    with pytest.raises(FrameFormatError, match="missing"):
        FrameFormat.from_dict({"version": 1})
    zc = f.preamble()
    assert np.allclose(np.abs(zc), 1.0)
    # ideal periodic autocorrelation of a Zadoff-Chu sequence
    ac = np.fft.ifft(np.abs(np.fft.fft(zc)) ** 2)
    assert np.max(np.abs(ac[1:])) < 1e-6 * abs(ac[0])


def test_waveform_scaling_and_modulation_variance(tx):
    peak = max(np.abs(tx.i).max(), np.abs(tx.q).max())
    assert 0.85 * 32767 < peak <= 0.9 * 32767 + 1
    assert tx.dac_iq().shape == (FMT.frame_samples, 2)
    # quantum power per DAC sample = amplitude^2 / sps (unit-energy pulse, E|s|^2 ~ 1)
    d = tx.i.astype(float) + 1j * tx.q
    spec = np.fft.fft(d)
    f = np.fft.fftfreq(d.size, 1 / FMT.dac_rate_hz)
    band = np.abs(f) < FMT.band_edge_hz
    p_quantum = np.sum(np.abs(spec[band]) ** 2) / d.size**2
    expect = tx.amplitude**2 * np.mean(np.abs(tx.symbols) ** 2) / FMT.sps_dac
    expect *= FMT.n_quantum / FMT.n_symbols
    expect += (
        tx.amplitude**2
        * 10 ** (FMT.preamble_to_signal_db / 10)
        * (FMT.preamble_length / FMT.n_symbols)
        / FMT.sps_dac
    )
    assert p_quantum == pytest.approx(expect, rel=2e-3)
    # V_A formula inverts the physics used by the synthetic transmitter
    cap = synth_capture(tx, np.random.default_rng(1), v_a=3.3, n_points=20000)
    assert alice_modulation_variance(cap.monitor_power_w, 193.4e12, tx, 1e9) == pytest.approx(3.3)


def test_cryptographic_symbols_have_unit_variance():
    from dsp.waveform import gaussian_symbols

    s = gaussian_symbols(200_000)
    # E|s|^2 = 1 with standard error 1/sqrt(n) = 0.0022
    assert np.mean(np.abs(s) ** 2) == pytest.approx(1.0, abs=0.01)
    assert abs(np.mean(s)) < 0.01


@pytest.mark.parametrize(
    ("ppm", "cfo"), [(100.0, 50e6), (-100.0, -50e6)], ids=["+100ppm+50MHz", "-100ppm-50MHz"]
)
def test_chain_recovers_channel_under_offsets(tx, ppm, cfo):
    rng = np.random.default_rng(11 if ppm > 0 else 12)
    cap = synth_capture(
        tx,
        rng,
        t=0.5,
        xi=0.02,
        v_el=0.05,
        cfo_hz=cfo,
        ppm_tx=ppm / 2,
        ppm_rx=-ppm / 2,
        n_points=FMT.capture_points,
    )
    res, cal, est, _ = run_chain(tx, cap)
    assert res.cfo_hz == pytest.approx(cfo, abs=2e3)
    assert res.clock_ppm == pytest.approx(ppm, abs=0.05)
    assert cal.v_el == pytest.approx(0.05, abs=5 * cal.v_el_stderr)
    # 4 reported standard errors; the DSP's own residual at zero linewidth is ~1e-3 of T
    assert abs(est.T - 0.5) < 4 * est.T_stderr + 2e-3
    assert abs(est.xi - 0.02) < 4 * est.xi_stderr + 0.005


def test_chain_tracks_laser_phase_noise(tx):
    """50 kHz per laser: pilot leakage and tracking add a bounded excess (docs/dsp.md)."""
    cap = synth_capture(
        tx,
        np.random.default_rng(5),
        t=0.3,
        xi=0.0,
        linewidth_hz=100e3,
        cfo_hz=20e6,
        ppm_tx=30,
        n_points=FMT.capture_points,
    )
    res, _, est, v_a = run_chain(tx, cap)
    # ~25 independent 20-us lags in a 0.5 ms record: relative SE ~0.3 (seeded draw)
    assert res.linewidth_hz == pytest.approx(100e3, rel=0.6)
    # phase-error variance sigma^2 (~0.003) costs T a factor ~(1 - sigma^2); the predicted
    # excess (tracking + pilot leakage, ~0.02 SNU) is allowed 30 % model error
    model = v_a * res.phase_excess
    assert 0.01 < model < 0.04
    assert abs(est.T - 0.3) < 4 * est.T_stderr + 0.005 * 0.3
    assert abs(est.xi - model) < 4 * est.xi_stderr + 0.3 * model


def test_no_pilot_is_reported(tx):
    cap = synth_capture(tx, np.random.default_rng(2), t=0.0, n_points=FMT.capture_points)
    with pytest.raises(NoPilotError, match="no pilot tone"):
        process_frame(cap.i, cap.q, cap.scale, cap.scale, FMT, n0=1.0)


def test_no_preamble_is_reported(tx):
    other = FrameFormat(n_symbols=131072, preamble_length=2039, zc_root=7)
    cap = synth_capture(tx, np.random.default_rng(3), t=0.5, n_points=FMT.capture_points)
    with pytest.raises(NoPreambleError, match="preamble"):
        process_frame(cap.i, cap.q, cap.scale, cap.scale, other, n0=1.0)


def test_clipped_adc_is_reported(tx):
    cap = synth_capture(
        tx, np.random.default_rng(4), t=0.5, shot_rms_lsb=900.0, n_points=FMT.capture_points
    )
    with pytest.raises(ClippingError, match="clipped"):
        process_frame(cap.i, cap.q, cap.scale, cap.scale, FMT, n0=1.0)


def test_short_capture_is_reported(tx):
    cap = synth_capture(tx, np.random.default_rng(4), t=0.5, n_points=FMT.frame_adc_samples // 2)
    with pytest.raises(ValueError, match="fewer than one frame"):
        process_frame(cap.i, cap.q, cap.scale, cap.scale, FMT, n0=1.0)


# --------------------------------------------------------------------------- capture files
@pytest.fixture(scope="module")
def capture_file(tx, tmp_path_factory):
    from hil.capture import CaptureFile, save_capture

    cap = synth_capture(
        tx,
        np.random.default_rng(21),
        t=0.4,
        xi=0.01,
        cfo_hz=-12e6,
        ppm_tx=7,
        ppm_rx=-3,
        n_points=FMT.capture_points,
    )
    cf = CaptureFile(
        fmt=FMT,
        i=cap.i,
        q=cap.q,
        scale=(cap.scale, cap.scale),
        adc_rate_hz=1e9,
        shot_i=cap.shot[0],
        shot_q=cap.shot[1],
        shot_scale=(cap.scale, cap.scale),
        el_i=cap.electronic[0],
        el_q=cap.electronic[1],
        el_scale=(cap.scale, cap.scale),
        eta=cap.eta,
        alice_symbols=tx.symbols,
        alice_amplitude=tx.amplitude,
        alice_mean_power=tx.mean_power,
        alice_pulse_energy=tx.pulse_energy,
        monitor_power_w=cap.monitor_power_w,
        frequency_hz=193.4e12,
        dac_rate_hz=1e9,
        metadata={"source": "synthetic"},
    )
    path = tmp_path_factory.mktemp("cap") / "frame.npz"
    save_capture(path, cf)
    return cf, path


def test_cli_reproduces_in_memory_result(capture_file, tmp_path, capsys):
    from hil.capture import analyse_capture
    from hil.cli import main

    cf, path = capture_file
    live = analyse_capture(cf)
    out = tmp_path / "r.json"
    assert main(["dsp", str(path), "--json", str(out)]) == 0
    assert "xi" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(live))
    assert abs(saved["estimates"]["T"] - 0.4) < 4 * saved["estimates"]["T_stderr"] + 2e-3


def _rewrite(path: Path, dst: Path, drop: str | None = None, **replace) -> None:
    with np.load(path) as npz:
        data = {k: npz[k] for k in npz.files if k != drop}
    data.update(replace)
    np.savez(dst, **data)


def test_missing_calibration_is_reported(capture_file, tmp_path, capsys):
    from hil.capture import CaptureFormatError, load_capture
    from hil.cli import main

    _, path = capture_file
    bad = tmp_path / "nocal.npz"
    _rewrite(path, bad, drop="shot_i")
    with pytest.raises(CaptureFormatError, match="missing calibration capture field 'shot_i'"):
        load_capture(bad)
    assert main(["dsp", str(bad)]) == 2
    assert "shot_i" in capsys.readouterr().err


def test_corrupt_npz_is_reported(capture_file, tmp_path, capsys):
    from hil.capture import CaptureFormatError, load_capture
    from hil.cli import main

    _, path = capture_file
    bad = tmp_path / "corrupt.npz"
    bad.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(CaptureFormatError, match="not a readable NPZ"):
        load_capture(bad)
    assert main(["dsp", str(bad)]) == 2
    nan = tmp_path / "nan.npz"
    _rewrite(path, nan, eta=np.float64("nan"))
    with pytest.raises(CaptureFormatError, match="'eta'"):
        load_capture(nan)
    assert main(["dsp", str(tmp_path / "absent.npz")]) == 2
    assert "not found" in capsys.readouterr().err


def test_capture_without_preamble_is_reported(capture_file, tmp_path, capsys):
    from hil.cli import main

    _, path = capture_file
    other = FrameFormat(n_symbols=131072, preamble_length=2039, zc_root=7)
    bad = tmp_path / "nopre.npz"
    _rewrite(path, bad, frame_format=np.array(json.dumps(other.to_dict())))
    assert main(["dsp", str(bad)]) == 2
    assert "no Zadoff-Chu preamble" in capsys.readouterr().err


def test_clipped_capture_file_is_reported(capture_file, tmp_path, capsys):
    from hil.cli import main

    cf, path = capture_file
    i = cf.i.copy()
    i[::500] = 32752  # 12-bit full scale, left-justified
    bad = tmp_path / "clip.npz"
    _rewrite(path, bad, i=i)
    assert main(["dsp", str(bad)]) == 2
    assert "clipped" in capsys.readouterr().err
