"""ITU-T G.694.1 DWDM grid and optical unit conversions: the one place for these facts.

The package numbers channels as ``f = 190.0 THz + n * 100 GHz`` (so channel 34 is
193.4 THz, 1550.12 nm), the convention used by the Madrid and Malta deployments.
Every other module (drivers, emulator, hil) imports from here.
"""

from __future__ import annotations

import math

C_M_PER_S = 299_792_458.0
"""Speed of light in vacuum (exact, SI)."""
H_J_S = 6.626_070_15e-34
"""Planck constant (exact, SI)."""

GRID_ORIGIN_HZ = 190.0e12
GRID_SPACING_HZ = 100.0e9
CHANNEL_MIN = 1
CHANNEL_MAX = 72


def channel_to_frequency(channel: int) -> float:
    """Centre frequency in Hz of ITU channel ``channel`` on the 100 GHz grid."""
    if int(channel) != channel or not CHANNEL_MIN <= channel <= CHANNEL_MAX:
        raise ValueError(
            f"ITU channel must be an integer {CHANNEL_MIN}..{CHANNEL_MAX}, got {channel}"
        )
    return GRID_ORIGIN_HZ + int(channel) * GRID_SPACING_HZ


def frequency_to_channel(frequency_hz: float, tolerance_hz: float = 1e9) -> int:
    """Nearest ITU channel to ``frequency_hz``; ``ValueError`` if off-grid beyond the tolerance."""
    n = round((frequency_hz - GRID_ORIGIN_HZ) / GRID_SPACING_HZ)
    if abs(channel_to_frequency_unchecked(n) - frequency_hz) > tolerance_hz or not (
        CHANNEL_MIN <= n <= CHANNEL_MAX
    ):
        raise ValueError(f"{frequency_hz / 1e12:.4f} THz is not on the 100 GHz ITU grid")
    return n


def channel_to_frequency_unchecked(channel: float) -> float:
    return GRID_ORIGIN_HZ + channel * GRID_SPACING_HZ


def frequency_to_wavelength(frequency_hz: float) -> float:
    """Vacuum wavelength in metres of light at ``frequency_hz``."""
    return C_M_PER_S / frequency_hz


def wavelength_to_frequency(wavelength_m: float) -> float:
    """Frequency in Hz of light of vacuum wavelength ``wavelength_m``."""
    return C_M_PER_S / wavelength_m


def channel_to_wavelength(channel: int) -> float:
    """Vacuum wavelength in metres of ITU channel ``channel``."""
    return frequency_to_wavelength(channel_to_frequency(channel))


def photon_energy(frequency_hz: float) -> float:
    """Energy of one photon in joules."""
    return H_J_S * frequency_hz


def dbm_to_watt(dbm: float) -> float:
    """Optical power in watts from dBm."""
    return 1e-3 * 10.0 ** (dbm / 10.0)


def watt_to_dbm(watt: float) -> float:
    """Optical power in dBm from watts (``-inf`` for zero)."""
    if watt <= 0.0:
        return -math.inf
    return 10.0 * math.log10(watt / 1e-3)


def db_to_linear(db: float) -> float:
    """Power ratio from decibels (loss ``L`` dB gives transmittance ``db_to_linear(-L)``)."""
    return 10.0 ** (db / 10.0)


def linear_to_db(ratio: float) -> float:
    """Decibels from a power ratio."""
    if ratio <= 0.0:
        return -math.inf
    return 10.0 * math.log10(ratio)
