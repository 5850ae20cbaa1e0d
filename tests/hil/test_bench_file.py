"""Bench-file schema: valid files load; each kind of mistake gets one clear message, exit 2."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from hil import bench_file
from hil.bench_file import BenchError
from hil.cli import main

GOOD = textwrap.dedent(
    """
    name: lab-a
    backend: visa
    visa_library: "@py"
    instruments:
      tx: {role: transmitter, resource: "TCPIP0::10.0.0.5::inst0::INSTR"}
      sw: {role: switch, resource: "ASRL/dev/ttyUSB0::INSTR"}
      otdr: {role: otdr, resource: "TCPIP0::10.0.0.7::5025::SOCKET"}
      rx1: {role: receiver, resource: "TCPIP0::10.0.1.5::inst0::INSTR"}
      pm1: {role: powermeter, resource: "GPIB0::12::INSTR"}
      rx2: {role: receiver, resource: "TCPIP0::10.0.2.5::inst0::INSTR"}
    links:
      - {name: north, switch_port: 1, receiver: rx1, powermeter: pm1, channel: 34, length_km: 12}
      - {name: south, switch_port: 2, receiver: rx2, channel: 37}
    run: {frames: 4, symbols_per_frame: 100000, v_a: 4.0}
    monitoring: {otdr: {pulse_width_ns: 50}}
    """
)


def _load(text: str) -> bench_file.Bench:
    return bench_file.loads(text, source="lab.yaml", check_emulator=False)


def _mutate(path: list, value: object, delete: bool = False) -> str:
    data = yaml.safe_load(GOOD)
    node = data
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return yaml.safe_dump(data)


def test_good_bench_loads_with_defaults() -> None:
    b = _load(GOOD)
    assert b.backend == "visa" and b.visa_library == "@py"
    assert [link.name for link in b.links] == ["north", "south"]
    assert b.link("north").powermeter == "pm1" and b.link("south").powermeter is None
    assert b.link("north").sae_master == "sae-north-a"
    assert b.run.frames == 4 and b.run.v_a == 4.0 and b.run.block_frames == 3
    assert b.run.beta is None  # auto: the codes' own efficiency at each SNR
    assert _load(_mutate(["run", "beta"], 0.92)).run.beta == 0.92
    assert _load(_mutate(["run", "beta"], "auto")).run.beta is None
    assert b.monitoring.otdr.pulse_width_ns == 50 and b.monitoring.otdr.wavelength_nm == 1650
    assert b.one("otdr").resource.endswith("SOCKET")


@pytest.mark.parametrize(
    ("path", "value", "delete", "field", "words"),
    [
        (["instruments", "rx1", "role"], "reciever", False, "instruments.rx1.role", "unknown role"),
        (
            ["instruments", "pm1", "resource"],
            "GPIB::banana",
            False,
            "instruments.pm1.resource",
            "VISA",
        ),
        (["links", 0, "channel"], None, True, "links[0].channel", "missing required field"),
        (["links", 0, "length_km"], -3, False, "links[0].length_km", "must be >= 0"),
        (["links", 1, "receiver"], "rx9", False, "links[1].receiver", "no instrument named"),
        (["links", 1, "switch_port"], 1, False, "links[1].switch_port", "already used"),
        (["run", "frames"], 0, False, "run.frames", "must be >= 1"),
        (["run", "colour"], "red", False, "run.colour", "unknown field"),
        (["run", "beta"], "fast", False, "run.beta", 'a number or "auto"'),
        (["run", "beta"], 1.2, False, "run.beta", "must be <= 1"),
        (["run", "v_a"], "max", False, "run.v_a", 'a number or "auto"'),
        (["name"], None, True, "name", "missing required field"),
    ],
)
def test_each_mistake_names_file_field_and_expectation(path, value, delete, field, words) -> None:
    with pytest.raises(BenchError) as info:
        _load(_mutate(path, value, delete))
    msg = str(info.value)
    assert msg.startswith("bench file lab.yaml: ") and f": {field}: " in msg and words in msg
    assert "\n" not in msg and info.value.exit_code == 2


def test_not_yaml_and_missing_file() -> None:
    with pytest.raises(BenchError, match=r"line 2, column .*not valid YAML"):
        bench_file.loads("name: x\n  bad: [\n", source="x.yaml")
    with pytest.raises(BenchError, match="not a bundled bench"):
        bench_file.resolve("no-such-bench")


def test_bundled_benches_resolve() -> None:
    assert {"single-link", "malta-p2mp", "template-real"} <= set(bench_file.bundled_benches())
    malta = bench_file.load("malta-p2mp")
    assert [lk.length_km for lk in malta.links] == [12, 10, 15, 14]
    assert len(malta.by_role("powermeter")) == 4 and malta.one("otdr") is not None
    real = bench_file.load("template-real")
    assert real.backend == "visa"


@pytest.mark.parametrize(
    ("path", "value", "delete", "words"),
    [
        (["instruments", "rx1", "role"], "laser", False, "unknown role"),
        (["instruments", "tx", "resource"], "not a resource", False, "not a VISA resource"),
        (["links", 0, "receiver"], None, True, "missing required field"),
        (["links", 0, "length_km"], -1.5, False, "must be >= 0"),
    ],
)
def test_cli_exit_code_2_with_one_line(tmp_path: Path, capsys, path, value, delete, words) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(_mutate(path, value, delete))
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and words in err
