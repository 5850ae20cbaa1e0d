"""The capture file (NPZ): one frame's raw receiver records, calibrations and Alice's data.

A capture holds everything ``qkd-hil dsp`` needs to redo Bob's DSP and the parameter
estimation offline, from an emulated or a real receiver. Format version 1, fields (all
numpy arrays inside a ``numpy.savez`` archive, no pickles)::

    format_version      int64 scalar      CAPTURE_FORMAT_VERSION (1)
    frame_format        str scalar        JSON of dsp.frame.FrameFormat.to_dict()
    i, q                int16 [n]         signal capture, raw codes of CH1 (I), CH2 (Q)
    scale               float64 [6]       ymult, yoff, yzero of CH1 then of CH2 (WFMO:*)
    adc_rate_hz         float64 scalar    1 / WFMO:XINC
    shot_i, shot_q      int16 [m]         LO on, input shutter closed (vacuum noise)
    shot_scale          float64 [6]
    el_i, el_q          int16 [k]         LO off (electronic noise only)
    el_scale            float64 [6]
    eta                 float64 scalar    CAL:EFF? (detector efficiency)
    alice_symbols       complex128 [n_q]  Alice's quantum symbols, unit design variance
    alice_amplitude     float64 scalar    DAC units per unit symbol (TxFrame.amplitude)
    alice_mean_power    float64 scalar    mean |d|^2 of the played int16 samples
    alice_pulse_energy  float64 scalar    sum p^2 of the shaping pulse (DAC samples)
    monitor_power_w     float64 scalar    SENS:POW? of the transmitter, in watts
    frequency_hz        float64 scalar    optical carrier frequency (SOUR1)
    dac_rate_hz         float64 scalar    FREQ:RAST
    metadata            str scalar        JSON object, free-form (link, distance, ...)

:func:`analyse_capture` is the one analysis used both in memory and by ``qkd-hil dsp``, so a
saved capture reproduces the in-memory result exactly.
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dsp.calibration import calibrate
from dsp.estimation import estimate_parameters
from dsp.frame import FrameFormat, FrameFormatError
from dsp.keyrate import key_rate_from_estimates
from dsp.rx import AdcScaling, correct_for_phase_error, process_frame
from dsp.waveform import TxFrame, alice_modulation_variance

CAPTURE_FORMAT_VERSION = 1


class CaptureFormatError(ValueError):
    """A capture file is missing, corrupt or inconsistent (names the file and the field)."""

    exit_code = 2


@dataclass
class CaptureFile:
    """In-memory form of a capture file (see the module docstring for the fields)."""

    fmt: FrameFormat
    i: np.ndarray
    q: np.ndarray
    scale: tuple[AdcScaling, AdcScaling]
    adc_rate_hz: float
    shot_i: np.ndarray
    shot_q: np.ndarray
    shot_scale: tuple[AdcScaling, AdcScaling]
    el_i: np.ndarray
    el_q: np.ndarray
    el_scale: tuple[AdcScaling, AdcScaling]
    eta: float
    alice_symbols: np.ndarray
    alice_amplitude: float
    alice_mean_power: float
    alice_pulse_energy: float
    monitor_power_w: float
    frequency_hz: float
    dac_rate_hz: float
    metadata: dict[str, Any] = field(default_factory=dict)

    def alice_alpha(self) -> tuple[float, np.ndarray]:
        """``(V_A, alpha)``: the modulation variance from the monitor power and Alice's
        symbols as coherent-state amplitudes in shot-noise units."""
        v_a = alice_modulation_variance(
            self.monitor_power_w, self.frequency_hz, self.tx_frame(), self.dac_rate_hz
        )
        return v_a, self.alice_symbols * math.sqrt(0.5 * v_a)

    def calibration(self, cfo_hz: float) -> Any:
        """The shot- and electronic-noise calibration of this capture at the frame's CFO."""
        return calibrate(
            (self.shot_i, self.shot_q, *self.shot_scale),
            (self.el_i, self.el_q, *self.el_scale),
            self.eta,
            self.fmt,
            cfo_hz=cfo_hz,
        )

    def tx_frame(self) -> TxFrame:
        """Alice's frame data as far as the analysis needs it (no DAC samples)."""
        empty = np.zeros(0, dtype=np.int16)
        return TxFrame(
            fmt=self.fmt,
            symbols=self.alice_symbols,
            i=empty,
            q=empty,
            amplitude=self.alice_amplitude,
            pulse_energy=self.alice_pulse_energy,
            mean_power=self.alice_mean_power,
        )


def _scale_array(pair: tuple[AdcScaling, AdcScaling]) -> np.ndarray:
    a, b = pair
    return np.array([a.ymult, a.yoff, a.yzero, b.ymult, b.yoff, b.yzero], dtype=np.float64)


def _scale_pair(arr: np.ndarray, where: str) -> tuple[AdcScaling, AdcScaling]:
    if arr.shape != (6,):
        raise CaptureFormatError(f"{where}: must hold 6 values (ymult, yoff, yzero x 2)")
    try:
        return AdcScaling(*map(float, arr[:3])), AdcScaling(*map(float, arr[3:]))
    except ValueError as exc:
        raise CaptureFormatError(f"{where}: {exc}") from exc


def save_capture(path: str | Path, cap: CaptureFile) -> None:
    """Write ``cap`` as an uncompressed NPZ (atomically: temp file then rename)."""
    path = Path(path)
    arrays = {
        "format_version": np.int64(CAPTURE_FORMAT_VERSION),
        "frame_format": np.array(json.dumps(cap.fmt.to_dict())),
        "i": np.asarray(cap.i, dtype=np.int16),
        "q": np.asarray(cap.q, dtype=np.int16),
        "scale": _scale_array(cap.scale),
        "adc_rate_hz": np.float64(cap.adc_rate_hz),
        "shot_i": np.asarray(cap.shot_i, dtype=np.int16),
        "shot_q": np.asarray(cap.shot_q, dtype=np.int16),
        "shot_scale": _scale_array(cap.shot_scale),
        "el_i": np.asarray(cap.el_i, dtype=np.int16),
        "el_q": np.asarray(cap.el_q, dtype=np.int16),
        "el_scale": _scale_array(cap.el_scale),
        "eta": np.float64(cap.eta),
        "alice_symbols": np.asarray(cap.alice_symbols, dtype=np.complex128),
        "alice_amplitude": np.float64(cap.alice_amplitude),
        "alice_mean_power": np.float64(cap.alice_mean_power),
        "alice_pulse_energy": np.float64(cap.alice_pulse_energy),
        "monitor_power_w": np.float64(cap.monitor_power_w),
        "frequency_hz": np.float64(cap.frequency_hz),
        "dac_rate_hz": np.float64(cap.dac_rate_hz),
        "metadata": np.array(json.dumps(cap.metadata)),
    }
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    tmp.replace(path)


_INT16 = ("i", "q", "shot_i", "shot_q", "el_i", "el_q")
_SCALARS = (
    "adc_rate_hz",
    "eta",
    "alice_amplitude",
    "alice_mean_power",
    "alice_pulse_energy",
    "monitor_power_w",
    "frequency_hz",
    "dac_rate_hz",
)


def load_capture(path: str | Path) -> CaptureFile:
    """Read and validate a capture file; every problem raises :class:`CaptureFormatError`."""
    path = Path(path)
    if not path.is_file():
        raise CaptureFormatError(f"capture file {path}: not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise CaptureFormatError(
            f"capture file {path}: not a readable NPZ archive ({exc})"
        ) from exc

    def need(name: str) -> np.ndarray:
        if name not in data:
            what = "calibration capture " if name.startswith(("shot", "el_")) else ""
            raise CaptureFormatError(f"capture file {path}: missing {what}field {name!r}")
        return data[name]

    version = need("format_version")
    if version.shape != () or int(version) != CAPTURE_FORMAT_VERSION:
        raise CaptureFormatError(
            f"capture file {path}: format_version {version!r} is not supported "
            f"(expected {CAPTURE_FORMAT_VERSION})"
        )
    try:
        fmt = FrameFormat.from_dict(json.loads(str(need("frame_format"))))
    except (json.JSONDecodeError, TypeError, FrameFormatError) as exc:
        raise CaptureFormatError(f"capture file {path}: field 'frame_format': {exc}") from exc
    for name in _INT16:
        arr = need(name)
        if arr.dtype != np.int16 or arr.ndim != 1 or arr.size == 0:
            raise CaptureFormatError(
                f"capture file {path}: field {name!r} must be a non-empty 1-D int16 array, "
                f"got {arr.dtype} {arr.shape}"
            )
    for a, b in (("i", "q"), ("shot_i", "shot_q"), ("el_i", "el_q")):
        if data[a].size != data[b].size:
            raise CaptureFormatError(f"capture file {path}: {a!r} and {b!r} differ in length")
    scalars: dict[str, float] = {}
    for name in _SCALARS:
        arr = need(name)
        if arr.shape != () or not np.isfinite(arr) or float(arr) <= 0:
            raise CaptureFormatError(
                f"capture file {path}: field {name!r} must be a positive finite scalar, got {arr!r}"
            )
        scalars[name] = float(arr)
    if scalars["eta"] > 1:
        raise CaptureFormatError(f"capture file {path}: field 'eta' must be <= 1")
    symbols = need("alice_symbols")
    if symbols.dtype != np.complex128 or symbols.shape != (fmt.n_quantum,):
        raise CaptureFormatError(
            f"capture file {path}: field 'alice_symbols' must be complex128 of length "
            f"{fmt.n_quantum}, got {symbols.dtype} {symbols.shape}"
        )
    if not np.all(np.isfinite(symbols)):
        raise CaptureFormatError(f"capture file {path}: field 'alice_symbols' holds NaN/inf")
    if abs(scalars["adc_rate_hz"] / fmt.adc_rate_hz - 1) > 1e-6:
        raise CaptureFormatError(
            f"capture file {path}: adc_rate_hz {scalars['adc_rate_hz']:g} differs from the "
            f"frame format's {fmt.adc_rate_hz:g}"
        )
    try:
        metadata = json.loads(str(data.get("metadata", np.array("{}"))))
    except json.JSONDecodeError as exc:
        raise CaptureFormatError(f"capture file {path}: field 'metadata': {exc}") from exc
    return CaptureFile(
        fmt=fmt,
        i=data["i"],
        q=data["q"],
        scale=_scale_pair(need("scale"), f"capture file {path}: field 'scale'"),
        shot_i=data["shot_i"],
        shot_q=data["shot_q"],
        shot_scale=_scale_pair(need("shot_scale"), f"capture file {path}: field 'shot_scale'"),
        el_i=data["el_i"],
        el_q=data["el_q"],
        el_scale=_scale_pair(need("el_scale"), f"capture file {path}: field 'el_scale'"),
        alice_symbols=symbols,
        metadata=metadata if isinstance(metadata, dict) else {"value": metadata},
        **scalars,
    )


def analyse_capture(
    cap: CaptureFile, *, beta: float = 0.95, eps_pe: float = 1e-10, trusted: bool = True
) -> dict[str, Any]:
    """Bob's DSP, calibration, parameter estimation and key rate for one capture.

    All symbols serve for estimation after reconciliation (Ruppert et al. 2014) and for the
    residual global phase. ``estimates`` (what security uses) count everything, the
    receiver's residual phase error included; ``channel_estimates`` take the measured phase
    error out (:func:`dsp.rx.correct_for_phase_error`) to judge the channel itself.
    Returns a JSON-ready dict (finite floats only).
    """
    fmt = cap.fmt
    v_a, alpha = cap.alice_alpha()
    res = process_frame(
        cap.i,
        cap.q,
        cap.scale[0],
        cap.scale[1],
        fmt,
        n0=None,
        revealed_index=np.arange(alpha.size),
        revealed_alpha=alpha,
        measure_phase=True,
    )
    cal = cap.calibration(res.cfo_hz)
    y = res.symbols / np.float32(math.sqrt(cal.n0))
    est = estimate_parameters(
        alpha,
        y,
        eta=cal.eta,
        v_el=cal.v_el,
        V_A=v_a,
        v_el_stderr=cal.v_el_stderr,
        n0_rel_stderr=cal.n0_rel_stderr,
        eps_pe=eps_pe,
        all_symbols=True,
        symbols="amplitude",
    )
    rate = key_rate_from_estimates(est, beta, trusted=trusted)
    se = _with_calibration(est)
    pe = res.phase_error_measured
    assert pe is not None
    channel = correct_for_phase_error(
        est.T, se["T_stderr"], est.xi, se["xi_stderr"], v_a, pe.var, pe.stderr
    )
    out: dict[str, Any] = {
        "capture_format_version": CAPTURE_FORMAT_VERSION,
        "frame_format_version": fmt.version,
        "n_symbols": int(y.size),
        "V_A": v_a,
        "dsp": {
            "cfo_hz": res.cfo_hz,
            "clock_ppm": res.clock_ppm,
            "frame_start": res.frame_start,
            "pilot_db": res.pilot_db,
            "pilot_snr": res.pilot_snr,
            "tracking_hz": res.tracking_hz,
            "linewidth_hz": res.linewidth_hz,
            "phase_excess_model": res.phase_excess * v_a,
            "phase_error_var_model": res.phase_error_var,
            "phase_error_var": pe.var,
            "phase_error_var_stderr": pe.stderr,
            "phase_error_parts": {"noise": pe.noise, "lag": pe.lag, "tail": pe.tail},
            "preamble_peak": res.preamble_peak,
            "phase": res.phase,
        },
        "calibration": {
            "n0_v2": cal.n0,
            "n0_rel_stderr": cal.n0_rel_stderr,
            "v_el": cal.v_el,
            "v_el_stderr": cal.v_el_stderr,
            "eta": cal.eta,
            "shot_samples": cal.n_shot,
            "electronic_samples": cal.n_el,
        },
        "estimates": est.as_dict(),
        "stderr_with_calibration": se,
        "channel_estimates": {
            "T": channel.T,
            "T_stderr": channel.T_stderr,
            "xi": channel.xi,
            "xi_stderr": channel.xi_stderr,
        },
        "key_rate": _jsonable(rate),
        "metadata": cap.metadata,
    }
    _check_finite(out)
    return out


def _with_calibration(est: Any) -> dict[str, float]:
    """Standard errors of T-hat and xi-hat including the shot-noise calibration's, and
    that part alone (:func:`dsp.estimation.estimate_parameters`, ``n0_rel_stderr``)."""
    return {
        "T_stderr": est.T_stderr,
        "xi_stderr": est.xi_stderr,
        "T_stderr_calibration": est.T_stderr_calibration,
        "xi_stderr_calibration": est.xi_stderr_calibration,
    }


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "as_dict"):
        return obj.as_dict()
    from dataclasses import asdict, is_dataclass

    return asdict(obj) if is_dataclass(obj) else obj


def _check_finite(obj: Any, where: str = "result") -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_finite(v, f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        for k, v in enumerate(obj):
            _check_finite(v, f"{where}[{k}]")
    elif isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"analysis produced a non-finite value at {where}")
