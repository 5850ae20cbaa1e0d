"""OTDR (Anritsu MT9083 / EXFO FTB-style readout).

``SENS:WAV`` (m), ``SENS:PULS:WIDT`` (s), ``SENS:RANG`` (m), ``SENS:AVER:TIME`` (s),
``SENS:IOR``, ``INIT`` + ``*OPC?``, ``TRAC:PAR?``, ``TRAC:DATA?`` (block: big-endian uint32
point count, then big-endian uint16 loss in dB x 1000 per point), ``CALC:EVEN:COUN?``,
``CALC:EVEN? <i>`` (``location_m,type,loss_db,reflectance_db,cumulative_db``).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

import numpy as np

from drivers.base import Instrument, InstrumentError, control, in_range, measurement

__all__ = ["Otdr", "OtdrEvent", "OtdrTrace", "decode_trace", "parse_trace_params"]


@dataclass
class OtdrTrace:
    """A backscatter trace: one-way loss (dB) against distance (m)."""

    distance_m: np.ndarray
    loss_db: np.ndarray  # displayed level, dB (one-way), as the instrument sends it
    params: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class OtdrEvent:
    """One event from the OTDR's own analysis of its trace."""

    location_m: float
    type: str
    loss_db: float
    reflectance_db: float | None
    cumulative_db: float


def decode_trace(payload: bytes) -> np.ndarray:
    """Loss in dB per point of a ``TRAC:DATA?`` payload (uint32 BE count, uint16 BE dB x 1000)."""
    if len(payload) < 4:
        raise ValueError(f"OTDR trace block of {len(payload)} bytes is shorter than its header")
    (count,) = struct.unpack(">I", payload[:4])
    if len(payload) != 4 + 2 * count:
        raise ValueError(
            f"OTDR trace block declares {count} points but carries {(len(payload) - 4) / 2:g}"
        )
    return np.frombuffer(payload, dtype=">u2", offset=4, count=count).astype(np.float64) / 1000.0


TRACE_PARAMS = (
    "points",
    "spacing_m",
    "start_m",
    "wavelength_m",
    "pulse_s",
    "ior",
    "range_m",
    "averaging_s",
)
"""Fields of the ``TRAC:PAR?`` reply, in order."""

WAVELENGTHS_M = (1310e-9, 1550e-9, 1625e-9, 1650e-9)


def parse_trace_params(reply: str) -> dict[str, float]:
    """``TRAC:PAR?`` reply as a dict keyed by :data:`TRACE_PARAMS`."""
    values = [v.strip() for v in reply.strip().split(",")]
    if len(values) < len(TRACE_PARAMS):
        raise ValueError(f"TRAC:PAR? reply {reply!r} has {len(values)} fields, expected 8")
    return {k: float(v) for k, v in zip(TRACE_PARAMS, values, strict=False)}


def _wavelength(value: object, name: str) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a wavelength in m, got {value!r}") from None
    for w in WAVELENGTHS_M:
        if abs(v - w) <= 1e-3 * w:
            return w
    shown = ", ".join(f"{w * 1e9:g} nm" for w in WAVELENGTHS_M)
    raise ValueError(f"{name}: {value!r} not one of {shown}")


class Otdr(Instrument):
    """Optical time-domain reflectometer on the transmitter side of the link."""

    role = "otdr"

    wavelength = control(
        "SENS:WAV?",
        "SENS:WAV %.12g",
        "Test wavelength",
        validator=in_range(1.2e-6, 1.7e-6),
        unit="m",
    )
    pulse_width = control(
        "SENS:PULS:WIDT?",
        "SENS:PULS:WIDT %.12g",
        "Pulse width",
        validator=in_range(3e-9, 20e-6),
        unit="s",
    )
    range = control(
        "SENS:RANG?", "SENS:RANG %.12g", "Distance range", validator=in_range(500, 400e3), unit="m"
    )
    averaging_time = control(
        "SENS:AVER:TIME?",
        "SENS:AVER:TIME %.12g",
        "Averaging time",
        validator=in_range(1, 3600),
        unit="s",
    )
    ior = control(
        "SENS:IOR?", "SENS:IOR %.8g", "Group index of refraction", validator=in_range(1.3, 1.7)
    )

    def measure(self) -> None:
        """Start a scan and wait for it to complete (``INIT``, ``*OPC?``)."""
        self.write("INIT")
        self.wait()

    attenuation_db_per_km = measurement(
        "CALC:ATT?", "Fibre attenuation from the OTDR's analysis (ext)", unit="dB/km"
    )

    def trace(self) -> OtdrTrace:
        """Transfer the last trace with its acquisition parameters."""
        reply = self.query("TRAC:PAR?")
        try:
            params = parse_trace_params(reply)
        except ValueError as exc:
            raise InstrumentError(self.resource_name, "TRAC:PAR?", None, str(exc)) from None
        payload = self.query_block("TRAC:DATA?")
        try:
            level = decode_trace(payload)
        except ValueError as exc:
            raise InstrumentError(self.resource_name, "TRAC:DATA?", None, str(exc)) from None
        distance = params["start_m"] + params["spacing_m"] * np.arange(level.size)
        return OtdrTrace(distance_m=distance, loss_db=level, params=params)

    def scan(self) -> OtdrTrace:
        """Measure and transfer one trace."""
        self.measure()
        return self.trace()

    def events(self) -> list[OtdrEvent]:
        """The event table of the last scan."""
        count = int(float(self.query("CALC:EVEN:COUN?")))
        out: list[OtdrEvent] = []
        for i in range(1, count + 1):
            fields = [f.strip().strip('"') for f in self.query(f"CALC:EVEN? {i}").split(",")]
            if len(fields) < 5:
                raise InstrumentError(
                    self.resource_name, f"CALC:EVEN? {i}", None, f"reply {fields!r} (5 fields)"
                )
            try:
                refl: float | None = float(fields[3])
            except ValueError:
                refl = math.nan
            if refl is not None and (not math.isfinite(refl) or abs(refl) >= 9e37):
                refl = None  # SCPI NaN (9.91E+37): a non-reflective event
            out.append(
                OtdrEvent(
                    location_m=float(fields[0]),
                    type=fields[1].lower(),
                    loss_db=float(fields[2]),
                    reflectance_db=refl,
                    cumulative_db=float(fields[4]),
                )
            )
        return out
