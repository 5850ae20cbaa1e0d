"""The world: configuration validation, seeding, independence, faults and scenarios."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from pyvisa_sim import parser as sim_parser

from drivers.ieee488 import decode_block, encode_block
from emulator.scpi import ScpiDevice
from emulator.world import ConfigError, World, default_config

TX = "TCPIP0::qkdsim-tx::inst0::INSTR"
RX = "TCPIP0::qkdsim-rx1::inst0::INSTR"
PM = "TCPIP0::qkdsim-pm1::inst0::INSTR"


def _cfg(**link_extra) -> dict:
    return {"links": [{"fibre": {"length_km": 10.0}, **link_extra}]}


def test_default_world_resources_specs_and_idn() -> None:
    world = World.default(seed=1)
    fw = world.instruments()
    assert set(fw) == {
        TX,
        RX,
        PM,
        "TCPIP0::qkdsim-otdr::inst0::INSTR",
        "TCPIP0::qkdsim-switch::inst0::INSTR",
    }
    assert world.instruments()[TX] is fw[TX]  # same objects every call
    roles = {
        TX: "transmitter",
        RX: "receiver",
        PM: "power meter",
        "TCPIP0::qkdsim-otdr::inst0::INSTR": "OTDR",
        "TCPIP0::qkdsim-switch::inst0::INSTR": "switch",
    }
    for res, (path, device) in world.specs().items():
        assert os.path.isfile(path)
        # a valid pyvisa-sim spec that declares this device
        assert device in sim_parser.parse_file(path)["devices"]
        model = fw[res].handle(b"*IDN?").decode().split(",")[1]
        assert roles[res] in model and "(emulated)" in model
    assert world.links == ["link1"]
    t = world.truth()
    assert t["length_km"] == 25.0 and t["routed"] and 0.0 < t["T"] < 1.0


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"links": [{"fibre": {"length_km": -3}}]}, "links[0].fibre.length_km"),
        ({"links": [{"fibre": {"length_km": 5}}, {"fibre": {}}]}, "links[1].fibre.length_km"),
        ({"links": []}, "links"),
        ({"links": [{"fibre": {"length_km": 5}, "colour": 1}]}, "links[0]"),
        ({"transmitter": {"channel": 99}, **_cfg()}, "transmitter.channel"),
        ({"transmitter": {"linewidth_hz": "wide"}, **_cfg()}, "transmitter.linewidth_hz"),
        ({"switch": {"kind": "rotary"}, **_cfg()}, "switch.kind"),
        (
            {"switch": {"ports": 1}, "links": [{"fibre": {"length_km": 1}}] * 2},
            "switch.ports",
        ),
        (_cfg(receiver={"eta": 1.5}), "links[0].receiver.eta"),
        (_cfg(events=[{"kind": "kink", "position_km": 1}]), "links[0].events[0].kind"),
        (_cfg(events=[{"kind": "bend", "position_km": 11}]), "links[0].events[0].position_km"),
        (_cfg(classical=[{"channel": 0, "power_dbm": 0}]), "links[0].classical[0].channel"),
        (
            {"links": [{"fibre": {"length_km": 1, "attenuation_db_per_km": {"x": 1}}}]},
            "links[0].fibre.attenuation_db_per_km[x]",
        ),
        ({"seed": -1, **_cfg()}, "seed"),
        ({"otdr": {"resource": TX}, **_cfg()}, "otdr.resource"),
        ({"scenario": [{"at_s": 1, "action": "bend"}], **_cfg()}, "scenario[0].link"),
    ],
)
def test_config_errors_name_the_field(config: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        World.from_config(config, seed=1)
    assert str(info.value).startswith(field), str(info.value)


def test_seed_is_recorded_and_drawn_when_absent() -> None:
    a, b = World.default(), World.default()
    assert isinstance(a.seed, int) and a.seed != b.seed
    assert World.from_config({"seed": 42, **_cfg()}).seed == 42
    assert World.default(seed=42).truth()["cfo_hz"] == World.default(seed=42).truth()["cfo_hz"]
    assert World.default(seed=42).truth()["cfo_hz"] != World.default(seed=43).truth()["cfo_hz"]


def _session(world: World) -> list[bytes]:
    """A short bench session; returns every reply (bytes)."""
    fw = world.instruments()
    tx, rx = fw[TX], fw[RX]
    rng = np.random.default_rng(0)
    iq = (rng.standard_normal(2048) * 4000).astype("<i2").tobytes()
    out = []
    for msg in (
        b"SOUR1:POW:STAT ON;OUTP1 ON;OUTP:ATT 40;TRAC1:DEF 1,1024",
        b"TRAC1:DATA 1,0," + encode_block(iq),
        b"INIT:IMM",
        b"SENS:POW?",
        b"ACQ:POIN 4096;ACQ:STAT RUN",
        b"CURV?",
        b"DATA:SOUR CH2;CURV?",
    ):
        out.append(
            tx.handle(msg)
            if msg.startswith((b"SOUR", b"TRAC", b"INIT", b"SENS"))
            else rx.handle(msg)
        )
    out.append(fw[PM].handle(b"READ1:POW?"))
    return out


def test_reproducible_by_seed_and_worlds_independent() -> None:
    first = _session(World.default(seed=9))
    assert first == _session(World.default(seed=9))
    assert first != _session(World.default(seed=10))
    # interleaving another world's activity does not disturb this one
    a, b = World.default(seed=9), World.default(seed=9)
    _session(b)
    b.add_event("link1", "bend", 3.0, 2.0)
    assert _session(a) == first
    assert a.truth()["events"] != b.truth()["events"]


def test_fault_api_and_truth() -> None:
    world = World.from_config(_cfg(excess_noise=0.001), seed=3)
    base = world.truth()
    world.add_event("link1", "tap", 4.0, loss_db=0.5, excess_noise=0.01)
    t = world.truth()
    assert math.isclose(t["loss_db"], base["loss_db"] + 0.5)
    assert math.isclose(t["xi"], 0.011)
    world.add_event("link1", "bend", 6.0, loss_db=1.0)
    assert world.truth()["loss_db"] > t["loss_db"] + 0.9
    world.remove_event("link1", 6.0, "bend")
    world.degrade_connector("link1", 0.0, 0.3)  # no connector there yet: one is added
    assert [e["kind"] for e in world.truth()["events"]] == ["connector", "tap"]
    world.add_classical_channel("link1", 38, 0.0)
    # Raman: n_R = rho * P[mW] * L * T_fibre, referred to the input: xi_R = 2 n_R / T
    t = world.truth()
    t_fibre = 10 ** (-t["fibre_loss_db"] / 10)
    assert math.isclose(t["raman_photons"], 2e-4 * 1.0 * 10.0 * t_fibre, rel_tol=1e-6)
    assert math.isclose(t["xi_raman"], 2 * t["raman_photons"] / t["T"], rel_tol=1e-9)
    cfo = t["cfo_hz"]
    world.drift_laser("tx", 1e6)
    world.drift_laser("lo:link1", 2e5)
    assert math.isclose(world.truth()["cfo_hz"], cfo + 0.8e6)
    world.add_event("link1", "cut", 8.0)
    assert world.truth()["T"] == 0.0 and world.truth()["cut"]
    for bad in (
        lambda: world.add_event("link1", "kink", 1.0),
        lambda: world.add_event("link9", "bend", 1.0),
        lambda: world.add_event("link1", "bend", 99.0),
        lambda: world.remove_event("link1", 5.0),
        lambda: world.drift_laser("moon", 1.0),
        lambda: world.add_classical_channel("link1", 80, 0.0),
    ):
        with pytest.raises(ValueError):
            bad()


def test_scenario_timeline_fires_as_the_clock_passes(tmp_path) -> None:
    path = tmp_path / "faults.yaml"
    path.write_text(
        "events:\n"
        "  - {at_s: 5, action: bend, link: link1, position_km: 2.0, loss_db: 1.5}\n"
        "  - {at_s: 1, action: classical, link: link1, channel: 38, power_dbm: 3}\n"
        "  - {at_s: 8, action: remove, link: link1, position_km: 2.0, kind: bend}\n"
        "  - {at_s: 9, action: drift, which: tx, delta_hz: 1.0e+6}\n"
        "  - {at_s: 12, action: tap, link: link1, position_km: 3, loss_db: 0.2,"
        " excess_noise: 0.02}\n"
        "  - {at_s: 20, action: cut, link: link1, position_km: 7.5}\n"
    )
    world = World.from_config({**_cfg(), "scenario": str(path)}, seed=4)
    loss0, cfo0 = world.truth()["loss_db"], world.truth()["cfo_hz"]
    world.advance(0.5)
    assert world.truth()["classical"] == {}
    world.advance(1.0)
    assert world.truth()["classical"] == {38: 3.0}
    world.advance(4.0)  # t = 5.5
    assert world.truth()["loss_db"] == pytest.approx(loss0 + 1.5, abs=0.01)  # bend at 1550.12 nm
    world.advance(4.0)  # t = 9.5: bend removed, tx drifted
    assert world.truth()["loss_db"] == pytest.approx(loss0, abs=1e-6)
    assert math.isclose(world.truth()["cfo_hz"], cfo0 + 1e6)
    world.advance(3.0)
    assert world.truth()["xi_link"] == pytest.approx(0.02)
    # a power-meter logging run fires the cut in the middle of the run
    pm = world.instruments()[PM]
    world.instruments()[TX].handle(b"SOUR2:POW:STAT ON")
    pm.handle(b"SENS1:FUNC:PAR:LOGG 100,0.1;SENS1:FUNC:STAT LOGG,STAR")
    watts = np.frombuffer(decode_block(pm.handle(b"SENS1:FUNC:RES?"))[0], "<f4")
    assert world.now == pytest.approx(22.5)
    cut_at = int(np.argmax(watts < 1e-9))
    assert 70 <= cut_at <= 76  # t = 20 s is reading 75 of the run started at 12.5 s
    assert world.truth()["T"] == 0.0


@pytest.mark.parametrize(
    ("scenario", "field"),
    [
        ([{"action": "bend"}], "scenario[0].at_s"),
        ([{"at_s": -1, "action": "bend"}], "scenario[0].at_s"),
        ([{"at_s": 1, "action": "melt"}], "scenario[0].action"),
        (
            [{"at_s": 1, "action": "bend", "link": "nope", "position_km": 1, "loss_db": 1}],
            "scenario[0].link",
        ),
        (
            [{"at_s": 1, "action": "bend", "link": "link1", "position_km": 1, "loss_db": -1}],
            "scenario[0].loss_db",
        ),
        ([{"at_s": 1, "action": "drift", "which": "lo:nope", "delta_hz": 1}], "scenario[0].which"),
        ({"events": [], "extra": 1}, "scenario"),
    ],
)
def test_scenario_errors_name_the_field(scenario, field: str) -> None:
    world = World.from_config(_cfg(), seed=1)
    with pytest.raises(ConfigError) as info:
        world.load_scenario(scenario)
    assert str(info.value).startswith(field), str(info.value)


def test_acquisition_starts_at_a_random_instant_of_the_loop() -> None:
    """Two captures of the same looping waveform are shifted by different, seeded amounts."""
    world = World.from_config(
        {"links": [{"fibre": {"length_km": 1.0}, "receiver": {"v_el": 0.0}}]}, seed=12
    )
    fw = world.instruments()
    tx, rx = fw[TX], fw[RX]
    n = 4096
    rng = np.random.default_rng(1)
    x = np.fft.ifft(np.where(np.abs(np.fft.fftfreq(n)) < 0.1, 1.0, 0.0) * rng.standard_normal(n))
    x = x / np.abs(x).max() * 20000
    iq = np.stack([x.real, x.imag], axis=1).astype("<i2")
    tx.handle(b"SOUR1:POW:STAT ON;OUTP1 ON;OUTP:ATT 0;TRAC1:DEF 1,%d" % n)
    tx.handle(b"TRAC1:DATA 1,0," + encode_block(iq.tobytes()) + b";INIT:IMM")
    lags = []
    for _ in range(2):
        rx.handle(b"ACQ:POIN %d;ACQ:STAT RUN" % n)
        i = np.frombuffer(decode_block(rx.handle(b"DATA:SOUR CH1;CURV?"))[0], "<i2")
        q = np.frombuffer(decode_block(rx.handle(b"DATA:SOUR CH2;CURV?"))[0], "<i2")
        y = np.abs(i.astype(float) + 1j * q)  # |.| removes carrier offset and phase
        xc = np.fft.ifft(
            np.fft.fft(y - y.mean()) * np.conj(np.fft.fft(np.abs(x) - np.abs(x).mean()))
        )
        lags.append(int(np.argmax(np.abs(xc))))
    assert lags[0] != lags[1]
    assert world.now == pytest.approx(2 * (n / 1e9 + 0.2), rel=1e-3)


def test_firmware_is_a_scpi_device_bound_to_its_world() -> None:
    a, b = World.default(seed=1), World.default(seed=1)
    assert isinstance(a.instruments()[TX], ScpiDevice)
    a.instruments()["TCPIP0::qkdsim-switch::inst0::INSTR"].handle(b"ROUT1:CHAN1 A,2")
    assert a.switch.route == 2 and b.switch.route == 1
    assert not a.truth()["routed"] and a.truth()["T"] == 0.0
    assert default_config()["links"][0]["fibre"]["length_km"] == 25.0
