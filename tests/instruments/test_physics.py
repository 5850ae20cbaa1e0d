"""Physics checks of the emulated bench (issue 2, acceptance criterion 3).

Everything goes through raw SCPI bytes to the firmware (``device.handle(b"...")``), as a
driver would send them; the analytic expectations come from the world configuration and
docs/physics.md, never from the emulator's internals. Each tolerance is derived from the
statistics of the estimator (see the comments), with fixed seeds.
"""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from drivers import grid
from drivers.ieee488 import decode_block, encode_block
from emulator.world import World

TX = "TCPIP0::qkdsim-tx::inst0::INSTR"
OTDR = "TCPIP0::qkdsim-otdr::inst0::INSTR"
SWITCH = "TCPIP0::qkdsim-switch::inst0::INSTR"
FLAT = {1300: 0.2, 1700: 0.2}  # 0.2 dB/km at every wavelength: analytic losses stay simple
IL_SW = 0.8
DAC_RATE = 1e9
SIG_BAND_HZ = 50e6  # the test waveform occupies |f| < 50 MHz
MEAS_BAND_HZ = 100e6  # measured in |f| < 100 MHz (covers the +-30 MHz carrier offset)


def _ok(dev, msg: bytes) -> bytes | None:
    """Send ``msg``, then require an empty error queue."""
    reply = dev.handle(msg)
    err = dev.handle(b"SYST:ERR?")
    assert err == b'0,"No error"\n', (msg[:60], err)
    return reply


def _world(lengths_km: list[float], seed: int, **link_extra) -> World:
    links = [
        {
            "name": f"link{i + 1}",
            "fibre": {"length_km": length, "attenuation_db_per_km": dict(FLAT)},
            **link_extra,
        }
        for i, length in enumerate(lengths_km)
    ]
    cfg = {
        "switch": {"kind": "scpi", "ports": max(2, len(links)), "insertion_loss_db": IL_SW},
        "links": links,
    }
    return World.from_config(cfg, seed=seed)


def _gaussian_waveform(n: int, rms: float, seed: int) -> tuple[bytes, int]:
    """Band-limited complex Gaussian I/Q (|f| < SIG_BAND_HZ at DAC_RATE) as int16 LE pairs.

    Returns the payload and the number of occupied FFT bins (so the occupied bandwidth is
    exactly ``bins * DAC_RATE / n``).
    """
    rng = np.random.default_rng(seed)
    f = np.fft.fftfreq(n) * DAC_RATE
    band = np.abs(f) < SIG_BAND_HZ
    spec = np.zeros(n, complex)
    spec[band] = rng.standard_normal(band.sum()) + 1j * rng.standard_normal(band.sum())
    x = np.fft.ifft(spec)
    x *= rms / np.sqrt(np.mean(np.abs(x) ** 2))
    iq = np.empty((n, 2), "<i2")
    iq[:, 0] = np.round(x.real)
    iq[:, 1] = np.round(x.imag)
    return iq.tobytes(), int(band.sum())


def _start_transmitter(world: World, voa_db: float, n: int = 1 << 18) -> float:
    """Upload a Gaussian waveform, play it; return V_A (SNU) computed as Alice would.

    V_A = 2 <n> with <n> = photons per mode = (P_out / h nu) / B, P_out from the monitor
    tap (SENS:POW?), B the occupied bandwidth (one mode per second per hertz).
    """
    tx = world.instruments()[TX]
    payload, bins = _gaussian_waveform(n, 8000.0, seed=11)
    _ok(tx, b"SOUR1:GRID:CHAN 34;SOUR1:POW 10;SOUR1:POW:STAT ON;OUTP1 ON")
    _ok(tx, b"OUTP:ATT %.3f" % voa_db)
    _ok(tx, b"TRAC1:DEF 1,%d" % n)
    _ok(tx, b"TRAC1:DATA 1,0," + encode_block(payload))
    _ok(tx, b"INIT:IMM")
    p_w = grid.dbm_to_watt(float(_ok(tx, b"SENS:POW?")))
    photons_per_s = p_w / grid.photon_energy(grid.channel_to_frequency(34))
    return 2.0 * photons_per_s / (bins * DAC_RATE / n)


def _capture(rx, points: int) -> np.ndarray:
    """One acquisition through SCPI; complex raw samples I + iQ."""
    _ok(rx, b"ACQ:POIN %d;ACQ:STAT RUN" % points)
    i = np.frombuffer(decode_block(_ok(rx, b"DATA:SOUR CH1;DATA:ENC SRI;CURV?"))[0], "<i2")
    q = np.frombuffer(decode_block(_ok(rx, b"DATA:SOUR CH2;CURV?"))[0], "<i2")
    return i.astype(np.float64) + 1j * q.astype(np.float64)


def _band_power(z: np.ndarray, fs: float, limit_hz: float) -> tuple[float, int]:
    """(mean |Z|^2 per sample in |f| < limit_hz, number of FFT bins used)."""
    spec = np.fft.fft(z)
    m = np.abs(np.fft.fftfreq(z.shape[0]) * fs) < limit_hz
    return float(np.sum(np.abs(spec[m]) ** 2) / z.shape[0] ** 2), int(m.sum())


def _received_modulation(rx, points: int) -> tuple[float, float]:
    """Received modulation variance (SNU per quadrature) and its standard error.

    The shot-noise unit is calibrated as in a lab: a capture with the input shutter closed
    gives the vacuum (shot + electronic) noise density, one with the LO off the electronic
    noise alone; their difference is one SNU per hertz. The signal excess over the vacuum in
    the measurement band, divided by the shot noise in the occupied bandwidth B, is V_rx
    per quadrature.
    """
    on, bins = _band_power(_capture(rx, points), 1e9, MEAS_BAND_HZ)
    _ok(rx, b"INP:STAT OFF")
    vac, _ = _band_power(_capture(rx, points), 1e9, MEAS_BAND_HZ)
    _ok(rx, b"SENS:LO:STAT OFF")
    el, _ = _band_power(_capture(rx, points), 1e9, MEAS_BAND_HZ)
    _ok(rx, b"SENS:LO:STAT ON;INP:STAT ON")
    shot = vac - el
    v = (on - vac) / shot * MEAS_BAND_HZ / SIG_BAND_HZ
    # each band power is a mean over `bins` (nearly) exponential |Z|^2 values, so its
    # relative standard error is at most 1/sqrt(bins); propagate through on/shot (the
    # electronic term is 2 % of the vacuum and its error is negligible beside these).
    rel = math.sqrt(1.0 / bins)
    se = math.hypot(on * rel, vac * rel) / shot * MEAS_BAND_HZ / SIG_BAND_HZ
    return v, se


def test_vacuum_noise_linear_in_lo_power_electronic_noise_constant() -> None:
    world = _world([10.0], seed=101)
    rx = world.instruments()["TCPIP0::qkdsim-rx1::inst0::INSTR"]
    points = 1 << 18
    _ok(rx, b"INP:STAT OFF")
    lo_dbm = [1.0, 4.0, 7.0, 10.0, 13.0]
    lo_mw = np.array([grid.dbm_to_watt(p) * 1e3 for p in lo_dbm])
    var = []
    band = {}
    for p in lo_dbm:
        _ok(rx, b"SENS:LO:STAT ON;SENS:LO:POW %.1f" % p)
        z = _capture(rx, points)
        var.append(0.5 * (np.var(z.real) + np.var(z.imag)))
        band[p] = _band_power(z, 1e9, MEAS_BAND_HZ)
    var = np.array(var)
    el = []
    for p in (1.0, 13.0):  # LO off at two LO settings: electronic noise alone, unchanged
        _ok(rx, b"SENS:LO:POW %.1f;SENS:LO:STAT OFF" % p)
        z = _capture(rx, points)
        el.append(0.5 * (np.var(z.real) + np.var(z.imag)))
        band[("off", p)] = _band_power(z, 1e9, MEAS_BAND_HZ)
    # Sample variance of N' effectively independent Gaussian samples has relative standard
    # error sqrt(2/N'). The analogue low-pass correlates neighbouring samples (N' ~ 0.8 N
    # per quadrature for a 0.4 fs Butterworth); I and Q are independent, so over both
    # quadratures rel_se = sqrt(2 / (2 * 0.8 * N)) = 0.0022 for N = 2^18. 5 sigma bounds.
    rel_se = math.sqrt(2.0 / (2 * 0.8 * points))
    assert abs(el[0] / el[1] - 1.0) < 5 * math.sqrt(2) * rel_se
    # Fit var = a * P_LO + b; vacuum noise is linear in P_LO with intercept = electronic noise
    a, b = np.polyfit(lo_mw, var, 1, w=1.0 / var)
    fit = a * lo_mw + b
    assert np.all(np.abs(var / fit - 1.0) < 5 * rel_se), var / fit - 1.0
    el_mean = 0.5 * (el[0] + el[1])
    # the intercept's error is dominated by the lowest-power points: a few per cent of
    # var at 1 dBm (1.3 mW) times rel_se; 5 sigma of that, plus el's own error
    tol_b = 5 * rel_se * var[0] * 1.5 + 5 * rel_se * el_mean
    assert abs(b - el_mean) < tol_b, (b, el_mean, tol_b)
    # In SNU (in the signal band, where the analogue filter is flat), the electronic noise
    # is v_el = 0.02 of the shot noise at the reference LO power (10 dBm). Each band power
    # averages `bins` exponential |Z|^2 values: relative standard error 1/sqrt(bins).
    (vac10, bins), (el10, _) = band[10.0], band[("off", 13.0)]
    v_el = el10 / (vac10 - el10)
    se = v_el * math.sqrt(2.0 / bins) * (1.0 + v_el)
    assert abs(v_el - 0.02) < 5 * se, (v_el, se)


@pytest.mark.parametrize("seed", [7])
def test_received_modulation_scales_with_eta_t(seed: int) -> None:
    lengths = [5.0, 25.0, 50.0]
    world = _world(lengths, seed=seed)
    fw = world.instruments()
    va = _start_transmitter(world, voa_db=52.0)
    assert 50.0 < va < 400.0  # a strong test modulation keeps the ratios well above 1
    sw = fw[SWITCH]
    for port, length in enumerate(lengths, start=1):
        _ok(sw, b"ROUT1:CHAN1 A,%d" % port)
        rx = fw[f"TCPIP0::qkdsim-rx{port}::inst0::INSTR"]
        eta = float(_ok(rx, b"CAL:EFF?"))
        t = 10.0 ** (-(IL_SW + 0.2 * length) / 10.0)
        expected = eta * t * va / 2.0
        v, se = _received_modulation(rx, 1 << 20)
        # 5 standard errors (see _received_modulation) plus 0.5 % for the analogue filter's
        # in-band droop and the monitor reading noise
        assert abs(v - expected) < 5 * se + 0.005 * expected, (length, v, expected, se)


def test_power_meter_link_loss_equals_fibre_loss() -> None:
    events = [
        {"kind": "connector", "position_km": 0.0, "loss_db": 0.3},
        {"kind": "splice", "position_km": 9.0, "loss_db": 0.12},
    ]
    world = _world([25.0], seed=5, events=events)
    fw = world.instruments()
    tx = fw[TX]
    pm = fw["TCPIP0::qkdsim-pm1::inst0::INSTR"]
    _ok(tx, b"SOUR2:POW 0;SOUR2:POW:STAT ON")
    _ok(pm, b"SENS1:POW:UNIT DBM;SENS1:POW:ATIME 1")
    sync_dbm = float(_ok(tx, b"SOUR2:POW?"))
    loss = sync_dbm - float(_ok(pm, b"READ1:POW?"))
    expected = IL_SW + 0.2 * 25.0 + 0.3 + 0.12
    # reading noise: 0.001 dB at 100 ms, /sqrt(10) at 1 s -> 3e-4 dB; 0.005 dB is > 15 sigma
    # and far below any fault worth an alarm
    assert abs(loss - expected) < 0.005, (loss, expected)
    # a bend appears as extra loss in a logging run, from the reading when it happens on
    world.load_scenario([{"at_s": 1.05, "action": "bend", "link": "link1",
                          "position_km": 12.0, "loss_db": 1.0}])  # fmt: skip
    _ok(pm, b"SENS1:FUNC:PAR:LOGG 20,0.1;SENS1:FUNC:STAT LOGG,STAR")
    log = np.frombuffer(decode_block(_ok(pm, b"SENS1:FUNC:RES?"))[0], "<f4")
    log_loss = sync_dbm - 10.0 * np.log10(log.astype(np.float64) * 1e3)
    # bend loss at the sync laser (ITU 40, 1545.3 nm) is 1.0 dB x 2^((1545.3-1550)/75)
    bend = 1.0 * 2.0 ** ((grid.channel_to_wavelength(40) * 1e9 - 1550.0) / 75.0)
    assert np.all(np.abs(log_loss[:10] - expected) < 0.01)
    assert np.all(np.abs(log_loss[11:] - (expected + bend)) < 0.01)


def test_otdr_slope_and_splice_location() -> None:
    events = [{"kind": "splice", "position_km": 7.2, "loss_db": 0.5}]
    world = _world([25.0], seed=21, events=events)
    otdr = world.instruments()[OTDR]
    _ok(otdr, b"SENS:WAV 1550NM;SENS:PULS:WIDT 100NS;SENS:RANG 50KM;SENS:AVER:TIME 30;INIT")
    assert otdr.handle(b"*OPC?") == b"1\n"
    par = _ok(otdr, b"TRAC:PAR?").decode().strip().split(",")
    points, spacing, start = int(par[0]), float(par[1]), float(par[2])
    payload, _ = decode_block(_ok(otdr, b"TRAC:DATA?"))
    (count,) = struct.unpack(">I", payload[:4])
    assert count == points == (len(payload) - 4) // 2
    y = np.frombuffer(payload[4:], ">u2") / 1000.0
    z = start + spacing * np.arange(points)
    # backscatter slope (one-way dB/km) on both sides of the splice, away from the ends
    for lo, hi in ((1000.0, 7000.0), (7500.0, 24000.0)):
        m = (z > lo) & (z < hi)
        coef, res, *_ = np.polyfit(z[m] / 1e3, y[m], 1, full=True)
        resid_sd = math.sqrt(res[0] / (m.sum() - 2))
        slope_se = resid_sd / math.sqrt(np.sum((z[m] / 1e3 - np.mean(z[m] / 1e3)) ** 2))
        # least-squares slope: standard error = residual sd / sqrt(sum (z - zbar)^2)
        assert abs(-coef[0] - 0.2) < 5 * slope_se + 1e-4, (lo, -coef[0], slope_se)
    n_ev = int(_ok(otdr, b"CALC:EVEN:COUN?"))
    rows = [_ok(otdr, b"CALC:EVEN? %d" % i).decode().strip().split(",") for i in range(1, n_ev + 1)]
    half_res = grid.C_M_PER_S * 100e-9 / (2 * 1.4682) / 2.0  # half the pulse resolution
    splices = [r for r in rows if r[1] == "NONREFLECTIVE"]
    assert len(splices) == 1, rows
    assert abs(float(splices[0][0]) - 7200.0) <= half_res, splices
    assert abs(float(splices[0][2]) - 0.5) < 0.05
    assert rows[-1][1] == "END" and abs(float(rows[-1][0]) - 25000.0) <= half_res
    assert abs(float(_ok(otdr, b"CALC:ATT?")) - 0.2) < 0.002


def test_switching_moves_the_signal_to_the_other_receiver() -> None:
    world = _world([10.0, 12.0], seed=33)
    fw = world.instruments()
    _start_transmitter(world, voa_db=50.0, n=1 << 16)
    rx1 = fw["TCPIP0::qkdsim-rx1::inst0::INSTR"]
    rx2 = fw["TCPIP0::qkdsim-rx2::inst0::INSTR"]
    points = 1 << 17
    for port, (lit, dark) in ((1, (rx1, rx2)), (2, (rx2, rx1))):
        _ok(fw[SWITCH], b"ROUT1:CHAN1 A,%d" % port)
        assert _ok(fw[SWITCH], b"ROUT1:CHAN1?") == b"A,%d\n" % port
        v_lit, se_lit = _received_modulation(lit, points)
        v_dark, se_dark = _received_modulation(dark, points)
        # the lit receiver sees tens of SNU; the dark one only vacuum: zero within 5 se
        assert v_lit > 100 * se_lit
        assert abs(v_dark) < 5 * se_dark, (port, v_dark, se_dark)
    # an LO on the neighbouring ITU channel (100 GHz away) beats nothing in band
    _ok(fw[SWITCH], b"ROUT1:CHAN1 A,1")
    _ok(rx1, b"SENS:LO:CHAN 35")
    v_off, se_off = _received_modulation(rx1, points)
    assert abs(v_off) < 5 * se_off, (v_off, se_off)


def test_excess_noise_of_a_tap_and_raman_arrive_as_eta_t_xi_over_2() -> None:
    """White excess noise xi (SNU at the channel input) adds eta T xi / 2 per quadrature.

    Measured outside the signal band (150..350 MHz), normalised to the shot noise in the
    same band (vacuum minus electronic captures), so the analogue filter's shape cancels.
    """
    world = _world([10.0], seed=44)
    fw = world.instruments()
    rx = fw["TCPIP0::qkdsim-rx1::inst0::INSTR"]
    eta = float(_ok(rx, b"CAL:EFF?"))
    t = 10.0 ** (-(IL_SW + 0.2 * 10.0 + 0.5) / 10.0)
    points = 1 << 18

    def out_of_band(z: np.ndarray) -> tuple[float, int]:
        spec = np.fft.fft(z)
        f = np.abs(np.fft.fftfreq(z.shape[0]) * 1e9)
        m = (f > 150e6) & (f < 350e6)
        return float(np.sum(np.abs(spec[m]) ** 2)), int(m.sum())

    def excess() -> tuple[float, float]:
        on, bins = out_of_band(_capture(rx, points))
        _ok(rx, b"INP:STAT OFF")
        vac, _ = out_of_band(_capture(rx, points))
        _ok(rx, b"SENS:LO:STAT OFF")
        el, _ = out_of_band(_capture(rx, points))
        _ok(rx, b"SENS:LO:STAT ON;INP:STAT ON")
        # band sums of `bins` exponential values: relative standard error 1/sqrt(bins)
        return (on - vac) / (vac - el), math.hypot(on, vac) / (vac - el) / math.sqrt(bins)

    world.add_event("link1", "tap", 3.0, loss_db=0.5, excess_noise=1.0)
    _start_transmitter(world, voa_db=50.0, n=1 << 16)
    x, se = excess()
    assert abs(x - eta * t * 1.0 / 2.0) < 5 * se, (x, eta * t / 2, se)
    # Raman from a classical channel: eta * n_R with n_R = rho P[mW] L T_fibre (tx dark)
    _ok(fw[TX], b"ABOR")
    world.add_classical_channel("link1", 38, 10.0)
    n_r = 2e-4 * 10.0 * 10.0 * 10.0 ** (-(0.2 * 10.0 + 0.5) / 10.0)
    x, se = excess()
    assert abs(x - eta * n_r) < 5 * se, (x, eta * n_r, se)


def test_in_band_noise_with_signal_is_vacuum_plus_excess_only() -> None:
    """An ideal receiver (known waveform, cyclic capture) finds no noise beyond 1 + v_el +
    eta T xi / 2 under a strong signal: interpolation, modulation and quantisation add none.

    Clocks and lasers are set ideal (no offsets, no phase noise) so a capture of exactly one
    waveform period is a cyclic copy of it: Y_k = c(f_k) X_k e^{2 pi i f_k u0} + noise_k,
    with a smooth complex response c (the analogue filter) fitted by least squares.
    """
    cfg = {
        "transmitter": {"detuning_hz": 0.0, "linewidth_hz": 0.0, "ppm": 0.0},
        "links": [
            {
                "fibre": {"length_km": 1.0, "attenuation_db_per_km": dict(FLAT)},
                "excess_noise": 0.2,
                "receiver": {"lo_detuning_hz": 0.0, "lo_linewidth_hz": 0.0, "ppm": 0.0},
            }
        ],
    }
    world = World.from_config(cfg, seed=16)
    fw = world.instruments()
    tx, rx = fw[TX], fw["TCPIP0::qkdsim-rx1::inst0::INSTR"]
    n = 1 << 19
    rng = np.random.default_rng(5)
    f = np.fft.fftfreq(n) * 1e9
    spec = np.where(np.abs(f) < 137e6, rng.standard_normal(n) + 1j * rng.standard_normal(n), 0)
    x = np.fft.ifft(spec)
    x *= 6000 / np.sqrt(np.mean(np.abs(x) ** 2))
    iq = np.stack([np.round(x.real), np.round(x.imag)], axis=1).astype("<i2")
    _ok(tx, b"SOUR1:POW:STAT ON;OUTP1 ON;OUTP:ATT 52;TRAC1:DEF 1,%d" % n)
    _ok(tx, b"TRAC1:DATA 1,0," + encode_block(iq.tobytes()))
    _ok(tx, b"INIT:IMM")
    xk = np.fft.fft(iq[:, 0] + 1j * iq[:, 1].astype(np.float64))
    yk = np.fft.fft(_capture(rx, n))
    _ok(rx, b"INP:STAT OFF")
    vk = np.fft.fft(_capture(rx, n))
    _ok(rx, b"SENS:LO:STAT OFF")
    ek = np.fft.fft(_capture(rx, n))
    band = np.abs(f) < 130e6
    fb, yb, xb = f[band], yk[band], xk[band]
    k0 = int(np.argmax(np.abs(np.fft.ifft(yk * np.conj(xk)))))

    def corr(d: float) -> float:
        return abs(np.sum(yb * np.conj(xb) * np.exp(2j * np.pi * fb * d / 1e9)))

    lo, hi = k0 - 1.0, k0 + 1.0  # golden-section search of the fractional delay
    for _ in range(50):
        m1, m2 = lo + 0.382 * (hi - lo), lo + 0.618 * (hi - lo)
        lo, hi = (lo, m2) if corr(m1) > corr(m2) else (m1, hi)
    basis = np.vander(fb / 1.3e8, 7) * (xb * np.exp(-2j * np.pi * fb * (lo + hi) / 2e9))[:, None]
    coef = np.linalg.lstsq(basis, yb, rcond=None)[0]
    resid = np.sum(np.abs(yb - basis @ coef) ** 2)
    vac, el = np.sum(np.abs(vk[band]) ** 2), np.sum(np.abs(ek[band]) ** 2)
    excess = (resid - vac) / (vac - el)
    signal = np.sum(np.abs(basis @ coef) ** 2) / (vac - el)
    assert signal > 3.0  # per mode: a strong signal, so signal-dependent noise would show
    t = world.truth()
    expected = t["eta"] * t["T"] * 0.2 / 2
    # resid and vac are sums of `bins` exponential values: se = sqrt(2 / bins) of one SNU
    se = math.sqrt(2.0 / band.sum()) * vac / (vac - el)
    assert abs(excess - expected) < 5 * se, (excess, expected, se)
