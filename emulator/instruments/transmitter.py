"""Transmitter firmware: tunable laser + AWG + I/Q modulator + VOA, and the sync laser.

Modelled on a Keysight N7711A tunable laser with an M8195A AWG. Laser 1 (``SOUR1``) carries
the quantum signal, laser 2 (``SOUR2``) the classical sync channel. Wavelengths are in
metres and frequencies in hertz (unit suffixes such as ``1550.12NM`` or ``193.4THZ`` are
accepted); ``SOUR<n>:GRID:CHAN`` (extension) tunes to ITU channel ``n`` of drivers.grid.

Waveform upload (M8195A style): ``TRAC1:DEF 1,<samples>`` defines segment 1, then
``TRAC1:DATA 1,<offset>,#<block>`` writes int16 little-endian interleaved I,Q samples
(4 bytes per sample) at sample ``offset``. ``INIT:IMM`` plays the segment in a loop,
``ABOR`` stops it (the optical output is then dark).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from drivers import grid
from emulator.physics import PeriodicWaveform
from emulator.scpi import Call, DeviceSpec, ScpiDevice, ScpiError, command, query

if TYPE_CHECKING:
    from emulator.world import Emission, World

MAX_SAMPLES = 1 << 24
MIN_SAMPLES = 128
FULL_SCALE = 32767.0
F_MIN_HZ = grid.channel_to_frequency(grid.CHANNEL_MIN) - 50e9
F_MAX_HZ = grid.channel_to_frequency(grid.CHANNEL_MAX) + 50e9
MONITOR_NOISE_DB = 0.002
MONITOR_FLOOR_W = 1e-13


class Transmitter(ScpiDevice):
    """CV-QKD transmitter firmware bound to a world."""

    def __init__(self, spec: DeviceSpec, world: World, name: str = "") -> None:
        self.world = world
        self._freq = [0.0, 0.0]
        self._segment: np.ndarray | None = None
        self._prepared: PeriodicWaveform | None = None
        self._mean_d2 = 0.0
        self._uploads = 0
        self._playing = False
        super().__init__(spec, name)
        self.reset()

    # ----- state

    def reset(self) -> None:
        super().reset()
        self._freq = [
            grid.channel_to_frequency(self.world.tx.channel),
            grid.channel_to_frequency(self.world.tx.sync_channel),
        ]
        self._segment = None
        self._prepared = None
        self._mean_d2 = 0.0
        self._playing = False

    def state(self) -> dict:
        s = super().state()
        s.update(
            {
                "frequency_hz": self._freq[0],
                "sync_frequency_hz": self._freq[1],
                "segment_samples": 0 if self._segment is None else int(self._segment.shape[0]),
                "uploads": self._uploads,
                "playing": self._playing,
            }
        )
        return s

    def emission(self) -> Emission:
        """What leaves the output port now (used by the world)."""
        from emulator.world import Emission

        p = self.props
        power = 0.0
        wf = None
        if p["laser_on"] and p["output_on"] and self._playing and self._segment is not None:
            if self._prepared is None:
                self._prepared = PeriodicWaveform(self._segment)
            wf = self._prepared
            power = (
                grid.dbm_to_watt(p["laser_power_dbm"])
                * 10.0 ** (-self.world.tx.modulator_loss_db / 10.0)
                * self._mean_d2
                / FULL_SCALE**2
                * 10.0 ** (-p["voa_db"] / 10.0)
            )
            if power <= 0.0:
                wf = None
        sync_w = grid.dbm_to_watt(p["sync_power_dbm"]) if p["sync_on"] else 0.0
        return Emission(
            frequency_hz=self._freq[0],
            power_w=power,
            waveform=wf,
            dac_rate_hz=float(p["sample_rate_hz"]),
            sync_frequency_hz=self._freq[1],
            sync_power_w=sync_w,
        )

    # ----- lasers

    def _laser(self, call: Call) -> int:
        n = call.suffixes[0]
        if n not in (1, 2):
            raise ScpiError(-114, f"Header suffix out of range;SOURce{n} (lasers 1 and 2)")
        return n - 1

    @command("SOURce#:WAVelength")
    def _set_wav(self, call: Call) -> None:
        i = self._laser(call)
        call.nargs(1)
        wl = call.float(0, "M", grid.C_M_PER_S / F_MAX_HZ, grid.C_M_PER_S / F_MIN_HZ)
        self._freq[i] = grid.wavelength_to_frequency(wl)

    @query("SOURce#:WAVelength?")
    def _get_wav(self, call: Call) -> float:
        i = self._laser(call)
        call.nargs(0)
        return grid.frequency_to_wavelength(self._freq[i])

    @command("SOURce#:FREQuency")
    def _set_freq(self, call: Call) -> None:
        i = self._laser(call)
        call.nargs(1)
        self._freq[i] = call.float(0, "HZ", F_MIN_HZ, F_MAX_HZ)

    @query("SOURce#:FREQuency?")
    def _get_freq(self, call: Call) -> float:
        i = self._laser(call)
        call.nargs(0)
        return self._freq[i]

    @command("SOURce#:GRID:CHANnel")
    def _set_chan(self, call: Call) -> None:
        i = self._laser(call)
        call.nargs(1)
        self._freq[i] = grid.channel_to_frequency(call.int(0, grid.CHANNEL_MIN, grid.CHANNEL_MAX))

    @query("SOURce#:GRID:CHANnel?")
    def _get_chan(self, call: Call) -> int:
        i = self._laser(call)
        call.nargs(0)
        return round((self._freq[i] - grid.GRID_ORIGIN_HZ) / grid.GRID_SPACING_HZ)

    # ----- AWG

    @command("TRACe1:DEFine")
    def _def(self, call: Call) -> None:
        call.nargs(2, 3)
        seg = call.int(0)
        if seg != 1:
            raise ScpiError(-224, f"Illegal parameter value;segment {seg} (only segment 1)")
        n = call.int(1, MIN_SAMPLES, MAX_SAMPLES)
        init = call.int(2, -32768, 32767) if len(call.args) > 2 else 0
        self._segment = np.full(n, complex(init, init), dtype=np.complex64)
        self._prepared = None
        self._mean_d2 = 2.0 * init * init
        self._uploads += 1

    @query("TRACe1:DEFine?")
    def _def_q(self, call: Call) -> str:
        call.nargs(0, 1)
        n = 0 if self._segment is None else int(self._segment.shape[0])
        return f"1,{n}"

    @command("TRACe1:DELete:ALL")
    def _del(self, call: Call) -> None:
        call.nargs(0)
        self._segment = None
        self._prepared = None
        self._mean_d2 = 0.0
        self._playing = False

    @command("TRACe1[:DATA]")
    def _data(self, call: Call) -> None:
        call.nargs(3)
        seg = call.int(0)
        if seg != 1:
            raise ScpiError(-224, f"Illegal parameter value;segment {seg} (only segment 1)")
        if self._segment is None:
            raise ScpiError(-221, "Settings conflict;define segment 1 with TRAC1:DEF first")
        offset = call.int(1, 0, MAX_SAMPLES)
        payload = call.block(2)
        if len(payload) % 4:
            raise ScpiError(
                -104, "Data type error;block length must be a multiple of 4 (I,Q int16)"
            )
        n = len(payload) // 4
        if offset + n > self._segment.shape[0]:
            raise ScpiError(
                -222,
                f"Data out of range;{n} samples at offset {offset} exceed the segment "
                f"({self._segment.shape[0]} samples)",
            )
        iq = np.frombuffer(payload, dtype="<i2").astype(np.float32).reshape(-1, 2)
        self._segment[offset : offset + n].real = iq[:, 0]
        self._segment[offset : offset + n].imag = iq[:, 1]
        self._prepared = None
        seg64 = self._segment.view(np.float32)
        self._mean_d2 = float(np.dot(seg64, seg64)) / self._segment.shape[0]
        self._uploads += 1

    @command("INITiate[:IMMediate]")
    def _init(self, call: Call) -> None:
        call.nargs(0)
        if self._segment is None:
            raise ScpiError(-221, "Settings conflict;no waveform defined (TRAC1:DEF)")
        self._playing = True

    @command("ABORt")
    def _abort(self, call: Call) -> None:
        call.nargs(0)
        self._playing = False

    @query("STATus:RUN?")
    def _running(self, call: Call) -> bool:
        call.nargs(0)
        return self._playing

    # ----- monitor tap

    @query("SENSe#:POWer[:DC]?")
    def _monitor(self, call: Call) -> float:
        call.nargs(0)
        rng = self.world.rng
        p = self.world.monitor_power_w()
        read = p * 10.0 ** (MONITOR_NOISE_DB * rng.standard_normal() / 10.0)
        read = abs(read + MONITOR_FLOOR_W * rng.standard_normal())
        return round(grid.watt_to_dbm(max(read, 1e-30)), 4)
