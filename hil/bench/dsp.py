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

from hil.bench import Row, in_fresh_process, ref_numpy_fft_seconds

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
    d = (frame.i[idx].astype(np.float32) + 1j * frame.q[idx].astype(np.float32)) * np.float32(4e-4)
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


def chain_from_file(path: str) -> dict[str, float]:
    """Load a saved synthetic capture and run the chain once (module-level, so that
    :func:`in_fresh_process` measures the chain's footprint and not the channel's)."""
    from dsp.frame import FrameFormat
    from dsp.rx import AdcScaling, process_frame

    with np.load(path) as npz:
        i = npz["i"]
        q = npz["q"]
        fmt = FrameFormat(n_symbols=int(npz["n_symbols"]))
    t0 = time.perf_counter()
    res = process_frame(i, q, AdcScaling(1.0), AdcScaling(1.0), fmt, n0=1.0)
    total = time.perf_counter() - t0
    return {"total": total, "vm_hwm": _vm_hwm_bytes(), **res.timings}


def _vm_hwm_bytes() -> float:
    """Peak RSS of this address space (``VmHWM``; unlike ``ru_maxrss`` it is reset by exec,
    so a spawned child does not inherit its parent's high-water mark)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return math.nan


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
    """Peak RSS of a fresh process that loads one capture and runs the chain once."""
    import os
    import tempfile

    fmt, (i, q, _, _) = _synthetic_frame(n_symbols)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "capture.npz")
        np.savez(path, i=i, q=q, n_symbols=np.int64(fmt.n_symbols))
        del i, q
        result, peak_rusage = in_fresh_process(chain_from_file, path)
    # ru_maxrss of a spawned child starts at the parent's RSS at fork time (Linux keeps it
    # across exec); VmHWM measured inside the child is the child's own peak
    peak = result["vm_hwm"] if math.isfinite(result["vm_hwm"]) else peak_rusage
    return Row(
        AREA,
        f"peak memory, {n_symbols:.0e}-symbol frame (fresh process, imports incl.)",
        peak / 1e9,
        "GB",
        target="< 0.5 GB",
    )


# --------------------------------------------------------------------------- accuracy
def _analyse(cf: Any) -> dict[str, Any]:
    from hil.capture import analyse_capture

    return analyse_capture(cf)


def _frames_worker(args: tuple[dict[str, Any], int, int, float, int, int]) -> tuple[list, dict]:
    """Emulate and analyse ``frames`` frames on one world (module-level for a Pool)."""
    from dsp.frame import FrameFormat

    cfg, seed, n_symbols, v_a, frames, cal_points = args
    fmt = FrameFormat(n_symbols=n_symbols)
    rng = np.random.default_rng(seed)
    results, truth = [], {}
    for f in range(frames):
        caps, truth = emulated_capture(cfg, seed * 1000 + f, fmt, v_a, rng, cal_points=cal_points)
        r = _analyse(caps[0])
        results.append(
            {
                "estimates": r["estimates"],
                "stderr_with_calibration": r["stderr_with_calibration"],
                "channel_estimates": r["channel_estimates"],
                "dsp": r["dsp"],
                "n": r["n_symbols"],
                "V_A": r["V_A"],
            }
        )
    return results, truth


def _run_frames(
    cfg: dict[str, Any], seed: int, n_symbols: int, v_a: float, frames: int, cal_points: int
) -> tuple[list, dict]:
    """``frames`` emulated frames split over two worker processes (two worlds, same link)."""
    import multiprocessing

    half = (frames + 1) // 2
    jobs = [(cfg, seed, n_symbols, v_a, half, cal_points)]
    if frames - half:
        jobs.append((cfg, seed + 1, n_symbols, v_a, frames - half, cal_points))
    with multiprocessing.get_context("spawn").Pool(len(jobs)) as pool:
        parts = pool.map(_frames_worker, jobs)
    results = [r for part, _ in parts for r in part]
    return results, parts[0][1]


def _weighted_mean(values: np.ndarray, ses: np.ndarray) -> tuple[float, float]:
    w = 1 / np.square(ses)
    return float(np.sum(w * values) / np.sum(w)), float(1 / math.sqrt(np.sum(w)))


def dsp_excess_rows(
    frames: int, n_symbols: int, linewidth_hz: float, v_a: float, cal_points: int = 1 << 22
) -> list[Row]:
    """Excess noise the DSP adds on a 0 km emulated link with xi = 0 (criterion 2).

    Also: the part of it that is the pilot tracking's residual phase error, ``V_A sigma^2``
    with ``sigma^2`` measured on each capture (``dsp.rx.measure_phase_error``), what is left
    once that is taken out, and the model (tracking + the pilots' Lorentzian skirts, which
    the emulator does not reproduce beyond ~30 MHz).
    """
    cfg = world_config(0.0, xi=0.0, linewidth_hz=linewidth_hz)
    results, truth = _run_frames(cfg, 101, n_symbols, v_a, frames, cal_points)
    xs = np.array([r["estimates"]["xi"] - truth["xi"] for r in results])
    ses = np.array([r["stderr_with_calibration"]["xi_stderr"] for r in results])
    cxs = np.array([r["channel_estimates"]["xi"] - truth["xi"] for r in results])
    cses = np.array([r["channel_estimates"]["xi_stderr"] for r in results])
    phase = np.array([r["V_A"] * r["dsp"]["phase_error_var"] for r in results])
    model = float(np.mean([r["dsp"]["phase_excess_model"] for r in results]))
    n = sum(r["n"] for r in results)
    mean, se = _weighted_mean(xs, ses)
    rest, rest_se = _weighted_mean(cxs, cses)
    tag = f"0 km, {linewidth_hz / 1e3:g} kHz/laser, V_A={v_a:g}, {n:.2g} symbols"
    return [
        Row(
            AREA,
            f"DSP-added excess noise, {tag} (+-{se:.4f})",
            mean,
            "SNU",
            target="< 0.005 SNU",
        ),
        Row(
            AREA,
            f"  of which residual phase error V_A sigma^2 (measured on the captures), {tag}",
            float(np.mean(phase)),
            "SNU",
        ),
        Row(AREA, f"  rest, phase error taken out (+-{rest_se:.4f}), {tag}", rest, "SNU"),
        Row(
            AREA,
            f"  model with real Lorentzian skirts (tracking + pilot leakage), {tag}",
            model,
            "SNU",
        ),
    ]


def validation_rows(
    distances: list[float],
    frames: int,
    n_symbols: int,
    v_a: float = 4.0,
    cal_points: int = 1 << 22,
    label: str = "",
) -> list[Row]:
    """Criterion 1: per distance, mean estimate vs truth in reported standard errors.

    Rows come twice: the estimates as security uses them (everything counted, the receiver's
    residual phase error included) and the channel estimates with the measured phase error
    taken out (``dsp.rx.correct_for_phase_error``), which is what the emulator's truth is.
    """
    rows = []
    for j, km in enumerate(distances):
        sign = 1 if j % 2 == 0 else -1
        cfg = world_config(km, ppm_tx=25.0 * sign, ppm_rx=-25.0 * sign, cfo_hz=50e6 * sign)
        results, truth = _run_frames(cfg, 200 + 2 * j, n_symbols, v_a, frames, cal_points)
        est = [r["estimates"] for r in results]
        tot = [r["stderr_with_calibration"] for r in results]
        ch = [r["channel_estimates"] for r in results]
        series = (
            ("T", [e["T"] for e in est], [e["T_stderr"] for e in tot], truth["T"]),
            ("xi", [e["xi"] for e in est], [e["xi_stderr"] for e in tot], truth["xi"]),
            ("channel T", [c["T"] for c in ch], [c["T_stderr"] for c in ch], truth["T"]),
            ("channel xi", [c["xi"] for c in ch], [c["xi_stderr"] for c in ch], truth["xi"]),
        )
        for name, vals_list, ses, true in series:
            vals = np.array(vals_list)
            se_rep = float(np.mean(ses))
            spread = float(np.std(vals, ddof=1)) if len(vals) > 1 else math.nan
            dev = (float(vals.mean()) - true) / (se_rep / math.sqrt(len(vals)))
            tag = f"{km:g} km {name}{label}"
            rows.append(
                Row(
                    AREA,
                    f"{tag}: (mean - truth) / SE(mean), {len(vals)} x {n_symbols:.0e} symbols",
                    dev,
                    "SE",
                    target="|.| < 2",
                )
            )
            rows.append(
                Row(
                    AREA,
                    f"{tag}: reported SE / spread across frames",
                    se_rep / spread if spread > 0 else math.nan,
                    "ratio",
                    # the spread of a few frames is itself uncertain by 1 / sqrt(2 (k - 1))
                    target="0.7 .. 1.3" if len(vals) >= 10 else "",
                )
            )
        pe = np.array([r["dsp"]["phase_error_var"] for r in results])
        rows.append(
            Row(
                AREA,
                f"{km:g} km residual phase-error variance (measured, mean){label}",
                float(pe.mean()),
                "rad^2",
            )
        )
    return rows


def run(quick: bool) -> list[Row]:
    """All DSP rows; ``quick`` trims frames and repeats.

    The default run validates criterion 1 briefly (3 frames per distance, labelled
    "short"); ``QKD_BENCH_DSP_FULL=1`` runs the full validation (20 frames of 1e6 symbols
    at 5, 25, 50 and 100 km, ``QKD_BENCH_DSP_FRAMES`` overrides the 20) and the 5 kHz
    excess row, about 15-25 min on two busy cores.
    """
    import os

    rows = throughput_rows(1_000_000, repeat=2 if quick else 4)
    rows.append(memory_row(1_000_000))
    if quick:
        rows += dsp_excess_rows(frames=2, n_symbols=1_000_000, linewidth_hz=100e3, v_a=4.0)
        rows += validation_rows([25.0], frames=2, n_symbols=250_000, label=" (smoke)")
        return rows
    rows += dsp_excess_rows(frames=10, n_symbols=1_000_000, linewidth_hz=100e3, v_a=4.0)
    distances = [5.0, 25.0, 50.0, 100.0]
    if os.environ.get("QKD_BENCH_DSP_FULL", "") not in ("", "0"):
        frames = int(os.environ.get("QKD_BENCH_DSP_FRAMES", "20"))
        rows += dsp_excess_rows(frames=4, n_symbols=1_000_000, linewidth_hz=5e3, v_a=4.0)
        rows += validation_rows(distances, frames=frames, n_symbols=1_000_000)
    else:
        rows += validation_rows(
            distances,
            frames=3,
            n_symbols=1_000_000,
            label=" (short: 3 frames, QKD_BENCH_DSP_FULL=1 for criterion 1)",
        )
    return rows
