"""``make bench`` rows for the DSP: throughput, peak memory, DSP-added noise, validation.

* Throughput of the whole receiver chain (phase recovery included) on one core for a
  1e6-symbol frame, and per stage, beside ``ref_numpy_fft_seconds`` of the capture length.
* Peak memory of a fresh process running the chain on a 1e6-symbol frame.
* Excess noise added by the DSP (0 km, xi = 0), measured on the emulated bench through SCPI.
* Criterion-1 validation rows per distance (mean T-hat / xi-hat against the emulator's truth,
  reported standard error against the spread across frames).

The emulated frames are made by :func:`emulated_capture`, which drives the emulator only
through the drivers (SCPI), exactly as on a bench; the truth is read for judging only.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from hil.bench import Row, best_time, in_fresh_process, ref_numpy_fft_seconds

AREA = "dsp"


# --------------------------------------------------------------------------- emulated bench
def world_config(
    length_km: float,
    *,
    xi: float = 0.01,
    linewidth_hz: float = 50e3,
    ppm_tx: float = 25.0,
    ppm_rx: float = -25.0,
    cfo_hz: float = 50e6,
) -> dict[str, Any]:
    """One transmitter, one link, one receiver: the criterion-1 operating point.

    ``cfo_hz`` is split between the transmitter's and the LO's detuning; ``ppm_tx - ppm_rx``
    is the clock mismatch.
    """
    return {
        "transmitter": {
            "channel": 34,
            "detuning_hz": cfo_hz / 2,
            "linewidth_hz": linewidth_hz,
            "ppm": ppm_tx,
            "sync": {"channel": 40},
        },
        "links": [
            {
                "name": "link1",
                "fibre": {"length_km": max(length_km, 1e-3)},
                "excess_noise": xi,
                "receiver": {
                    "lo_detuning_hz": -cfo_hz / 2,
                    "lo_linewidth_hz": linewidth_hz,
                    "ppm": ppm_rx,
                },
            }
        ],
    }


def emulated_capture(
    config: dict[str, Any],
    seed: int,
    fmt: Any,
    v_a: float,
    rng: np.random.Generator,
    *,
    frames: int = 1,
    cal_points: int = 1 << 20,
    monitor_reads: int = 32,
) -> tuple[list[Any], dict[str, Any]]:
    """Play frames on an emulated bench through SCPI; return capture files and the truth.

    Each frame gets fresh symbols (from ``rng``) and its own shot-noise and electronic-noise
    captures. The VOA is set from the monitor power so that ``V_A`` is close to ``v_a``.
    """
    from drivers import grid
    from drivers.receiver import Receiver
    from drivers.transmitter import Transmitter
    from dsp.rx import AdcScaling
    from dsp.waveform import alice_modulation_variance, build_frame
    from emulator.backend import resource_manager
    from emulator.world import World
    from hil.capture import CaptureFile

    world = World.from_config(config, seed=seed)
    rm = resource_manager(world)
    tx = Transmitter(world.tx.resource, rm)
    link = world.link_map[world.links[0]]
    rx = Receiver(link.receiver.resource, rm)
    freq = grid.channel_to_frequency(world.tx.channel)
    tx.channel = world.tx.channel
    tx.power_dbm = 10.0
    tx.laser_enabled = True
    tx.dac_rate = fmt.dac_rate_hz
    tx.voa_db = 20.0
    tx.output = True
    rx.lo_channel = world.tx.channel
    rx.lo_power_dbm = 10.0
    rx.lo_enabled = True
    rx.input_open = True
    rx.sample_rate = fmt.adc_rate_hz
    eta = float(rx.efficiency)

    def scales(c: Any) -> tuple[AdcScaling, AdcScaling]:
        return tuple(AdcScaling(s.ymul, s.yoff, s.yzero) for s in (c.scale_i, c.scale_q))  # type: ignore[return-value]

    out = []
    for _ in range(frames):
        frame = build_frame(fmt, rng)
        tx.stop()
        tx.upload_iq(frame.dac_iq())
        tx.play()
        for _ in range(3):
            p = grid.dbm_to_watt(float(tx.monitor_power_dbm))
            now = alice_modulation_variance(p, freq, frame, fmt.dac_rate_hz)
            att = float(tx.voa_db) + 10 * math.log10(now / v_a)
            if abs(att - float(tx.voa_db)) < 0.005:
                break
            tx.voa_db = round(min(max(att, 0.0), 60.0), 3)
        # the monitor reading has a small independent noise: average it away
        monitor_w = float(
            np.mean([grid.dbm_to_watt(float(tx.monitor_power_dbm)) for _ in range(monitor_reads)])
        )
        rx.record_length = fmt.capture_points
        cap = rx.acquire()
        rx.record_length = cal_points
        rx.input_open = False
        shot = rx.acquire()
        rx.lo_enabled = False
        el = rx.acquire()
        rx.lo_enabled = True
        rx.input_open = True
        out.append(
            CaptureFile(
                fmt=fmt,
                i=cap.raw_i.copy(),
                q=cap.raw_q.copy(),
                scale=scales(cap),
                adc_rate_hz=cap.sample_rate,
                shot_i=shot.raw_i.copy(),
                shot_q=shot.raw_q.copy(),
                shot_scale=scales(shot),
                el_i=el.raw_i.copy(),
                el_q=el.raw_q.copy(),
                el_scale=scales(el),
                eta=eta,
                alice_symbols=frame.symbols,
                alice_amplitude=frame.amplitude,
                alice_mean_power=frame.mean_power,
                alice_pulse_energy=frame.pulse_energy,
                monitor_power_w=monitor_w,
                frequency_hz=freq,
                dac_rate_hz=fmt.dac_rate_hz,
                metadata={"seed": seed},
            )
        )
    truth = world.truth(world.links[0])
    rm.close()
    return out, truth


# --------------------------------------------------------------------------- throughput
def _synthetic_frame(n_symbols: int, seed: int = 0) -> tuple[Any, Any]:
    """A frame and a capture of it through a simple in-process channel (for speed only)."""
    from dsp.frame import FrameFormat
    from dsp.rx import AdcScaling
    from dsp.waveform import build_frame

    fmt = FrameFormat(n_symbols=n_symbols)
    rng = np.random.default_rng(seed)
    frame = build_frame(fmt, rng)
    n = fmt.capture_points
    start = int(rng.integers(0, fmt.frame_samples))
    idx = (start + np.arange(n)) % fmt.frame_samples
    d = (frame.i[idx].astype(np.float32) + 1j * frame.q[idx].astype(np.float32)) * np.float32(
        4e-4
    )
    m = np.arange(n)
    phase = 2 * np.pi * 23.4e6 / fmt.adc_rate_hz * m + np.cumsum(
        rng.normal(0, math.sqrt(2 * np.pi * 100e3 / fmt.adc_rate_hz), n)
    )
    v = d * np.exp(1j * phase).astype(np.complex64)
    v += (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(np.complex64)
    v *= np.float32(100)
    i = np.clip(np.rint(v.real), -2048, 2047).astype(np.int16) * np.int16(16)
    q = np.clip(np.rint(v.imag), -2048, 2047).astype(np.int16) * np.int16(16)
    return fmt, (i, q, AdcScaling(1.0), AdcScaling(1.0))


def chain_once(n_symbols: int) -> dict[str, float]:
    """Run the chain on one synthetic frame; return the stage timings (module-level for
    :func:`in_fresh_process`)."""
    from dsp.rx import process_frame

    fmt, (i, q, si, sq) = _synthetic_frame(n_symbols)
    t0 = time.perf_counter()
    res = process_frame(i, q, si, sq, fmt, n0=1.0)
    total = time.perf_counter() - t0
    return {"total": total, **res.timings}


def _measure_peak(n_symbols: int) -> float:
    """Chain timing in a fresh process (the peak RSS there is the chain's footprint)."""
    return chain_once(n_symbols)["total"]


def throughput_rows(n_symbols: int, repeat: int) -> list[Row]:
    """Whole-chain and per-stage throughput, beside a numpy FFT of the capture length."""
    from dsp.rx import process_frame

    fmt, (i, q, si, sq) = _synthetic_frame(n_symbols)
    process_frame(i, q, si, sq, fmt, n0=1.0)  # compile / warm up
    stage_best: dict[str, float] = {}
    total_best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = process_frame(i, q, si, sq, fmt, n0=1.0)
        total_best = min(total_best, time.perf_counter() - t0)
        for k, v in res.timings.items():
            stage_best[k] = min(stage_best.get(k, math.inf), v)
    ref = ref_numpy_fft_seconds(fmt.capture_points, repeat=3)
    sym_rate = n_symbols / total_best
    rows = [
        Row(
            AREA,
            "chain throughput (1 core, phase recovery incl.)",
            sym_rate,
            "symbol/s",
            f"numpy fft of {fmt.capture_points} points (s)",
            ref,
            ratio=total_best / ref,
            target=">= 1e6 symbol/s",
        ),
        Row(
            AREA,
            "chain throughput in ADC samples",
            fmt.capture_points / total_best,
            "Sa/s",
            "chain time / numpy fft time",
            ref,
            ratio=total_best / ref,
        ),
    ]
    for k, v in stage_best.items():
        rows.append(
            Row(
                AREA,
                f"stage {k}",
                n_symbols / v if v > 0 else math.inf,
                "symbol/s",
                "stage time / numpy fft time",
                ref,
                ratio=v / ref,
            )
        )
    return rows


def memory_row(n_symbols: int) -> Row:
    """Peak RSS of a fresh process running the chain once."""
    _, peak = in_fresh_process(_measure_peak, n_symbols)
    return Row(
        AREA,
        f"peak memory, {n_symbols:.0e}-symbol frame (fresh process)",
        peak / 2**30,
        "GiB",
        target="< 0.5 GB",
    )


# --------------------------------------------------------------------------- accuracy
def _analyse(cf: Any) -> dict[str, Any]:
    from hil.capture import analyse_capture

    return analyse_capture(cf)


def dsp_excess_rows(frames: int, n_symbols: int, linewidth_hz: float, v_a: float) -> list[Row]:
    """Excess noise the DSP adds on a 0 km emulated link with xi = 0 (criterion 2)."""
    from dsp.frame import FrameFormat

    fmt = FrameFormat(n_symbols=n_symbols)
    cfg = world_config(0.0, xi=0.0, linewidth_hz=linewidth_hz)
    caps, truth = emulated_capture(cfg, 101, fmt, v_a, np.random.default_rng(101), frames=frames)
    xs, ses, n = [], [], 0
    for cf in caps:
        r = _analyse(cf)
        xs.append(r["estimates"]["xi"] - truth["xi"])
        ses.append(r["estimates"]["xi_stderr"])
        n += r["n_symbols"]
    w = 1 / np.square(ses)
    mean = float(np.sum(w * xs) / np.sum(w))
    se = float(1 / math.sqrt(np.sum(w)))
    return [
        Row(
            AREA,
            f"DSP-added excess noise, 0 km, {linewidth_hz / 1e3:g} kHz/laser, V_A={v_a:g}, "
            f"{n:.2g} symbols (+-{se:.4f})",
            mean,
            "SNU",
            target="< 0.005 SNU",
        )
    ]


def validation_rows(
    distances: list[float], frames: int, n_symbols: int, v_a: float = 4.0
) -> list[Row]:
    """Criterion 1: per distance, mean estimate vs truth in reported standard errors."""
    from dsp.frame import FrameFormat

    fmt = FrameFormat(n_symbols=n_symbols)
    rows = []
    for j, km in enumerate(distances):
        sign = 1 if j % 2 == 0 else -1
        cfg = world_config(km, ppm_tx=25.0 * sign, ppm_rx=-25.0 * sign, cfo_hz=50e6 * sign)
        caps, truth = emulated_capture(cfg, 200 + j, fmt, v_a, np.random.default_rng(200 + j), frames=frames)
        ts, tse, xs, xse = [], [], [], []
        for cf in caps:
            e = _analyse(cf)["estimates"]
            ts.append(e["T"])
            tse.append(e["T_stderr"])
            xs.append(e["xi"])
            xse.append(e["xi_stderr"])
        for name, vals, ses, true in (("T", ts, tse, truth["T"]), ("xi", xs, xse, truth["xi"])):
            vals_a = np.asarray(vals)
            se_rep = float(np.mean(ses))
            spread = float(np.std(vals_a, ddof=1)) if len(vals) > 1 else math.nan
            dev = (float(vals_a.mean()) - true) / (se_rep / math.sqrt(len(vals)))
            rows.append(
                Row(
                    AREA,
                    f"{km:g} km {name}: (mean - truth) / SE(mean), {len(vals)} frames",
                    dev,
                    "SE",
                    target="|.| < 2",
                )
            )
            rows.append(
                Row(
                    AREA,
                    f"{km:g} km {name}: reported SE / spread across frames",
                    se_rep / spread if spread > 0 else math.nan,
                    "ratio",
                    target="0.7 .. 1.3",
                )
            )
    return rows


def run(quick: bool) -> list[Row]:
    """All DSP rows; ``quick`` trims frames and repeats."""
    rows = throughput_rows(1_000_000, repeat=2 if quick else 4)
    rows.append(memory_row(1_000_000))
    if quick:
        rows += dsp_excess_rows(frames=2, n_symbols=1_000_000, linewidth_hz=100e3, v_a=4.0)
        rows += validation_rows([25.0], frames=4, n_symbols=250_000)
    else:
        rows += dsp_excess_rows(frames=10, n_symbols=1_000_000, linewidth_hz=100e3, v_a=4.0)
        rows += dsp_excess_rows(frames=4, n_symbols=1_000_000, linewidth_hz=5e3, v_a=4.0)
        rows += validation_rows([5.0, 25.0, 50.0, 100.0], frames=20, n_symbols=1_000_000)
    return rows
