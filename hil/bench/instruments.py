"""``make bench`` area "instruments": SCPI round trips, frame transfer, peak memory.

Figures, each beside a reference measured in the same run:

* ``*IDN?`` round trip via ``@qkdsim`` against plain pyvisa-sim serving an equivalent stock
  YAML (same reply, same terminations): target ratio <= 1.5.
* the same round trip over TCP through pyvisa-py against the same pyvisa-sim reference.
* one 1e6-symbol frame through the drivers (upload 4e6 I/Q DAC samples, ``ACQ:STAT RUN``
  of 4.2e6 points, two ``CURV?``) in seconds and MB/s, physics included: target < 2 s on
  one core; the reference is the bare transport of the same bytes through ``@qkdsim``
  (a firmware answering a precomputed block, i.e. a raw pyvisa query of that size).
* peak RSS of a fresh process that opens the bench and runs one frame.
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import pyvisa

from hil.bench import Row, best_time, in_fresh_process

AREA = "instruments"
DAC_SAMPLES = 4_000_000
ADC_POINTS = 4_200_000

_STOCK_YAML = """spec: "1.1"
devices:
  tx:
    eom:
      TCPIP INSTR: {{q: "\\n", r: "\\n"}}
    dialogues:
      - q: "*IDN?"
        r: "{idn}"
resources:
  TCPIP0::stock-tx::inst0::INSTR:
    device: tx
"""


def _round_trip(res: pyvisa.resources.MessageBasedResource, n: int) -> float:
    def loop() -> None:
        for _ in range(n):
            res.query("*IDN?")

    return best_time(loop, repeat=5) / n


def _idn_rows(quick: bool) -> list[Row]:
    from emulator.backend import resource_manager
    from emulator.server import serve
    from emulator.world import World

    n = 200 if quick else 1000
    world = World.default(seed=1)
    rm = resource_manager(world)
    tx_name = world.tx.resource
    tx = rm.open_resource(tx_name, read_termination="\n", write_termination="\n")
    idn = tx.query("*IDN?").strip()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "stock.yaml")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(_STOCK_YAML.format(idn=idn.replace('"', "'")))
        stock_rm = pyvisa.ResourceManager(f"{path}@sim")
        stock = stock_rm.open_resource(
            "TCPIP0::stock-tx::inst0::INSTR", read_termination="\n", write_termination="\n"
        )
        assert stock.query("*IDN?").strip() == idn.replace('"', "'")
        t_stock = _round_trip(stock, n)
        t_qkd = _round_trip(tx, n)
        stock.close()
        stock_rm.close()
    rows = [
        Row(
            AREA,
            "*IDN? round trip @qkdsim",
            t_qkd * 1e6,
            "us",
            "pyvisa-sim stock YAML",
            t_stock * 1e6,
            target="ratio <= 1.5",
        ),
    ]
    with serve(world) as handle:
        py_rm = pyvisa.ResourceManager("@py")
        res = py_rm.open_resource(
            handle.resources["transmitter"], read_termination="\n", write_termination="\n"
        )
        t_tcp = _round_trip(res, n // 2)
        res.close()
        py_rm.close()
    rows.append(
        Row(
            AREA,
            "*IDN? round trip TCP/pyvisa-py",
            t_tcp * 1e6,
            "us",
            "pyvisa-sim stock YAML",
            t_stock * 1e6,
            target="informative (loopback TCP)",
        )
    )
    rm.close()
    return rows


def run_frame(seed: int = 3, repeat: int = 2, tcp: bool = False) -> dict[str, float]:
    """Time one 1e6-symbol frame through the drivers on a fresh default world.

    Over ``@qkdsim`` by default, or over the TCP server through pyvisa-py (``tcp=True``).
    Module-level so :func:`hil.bench.in_fresh_process` can run it for the memory figure.
    """
    from drivers import Receiver, Transmitter
    from emulator.backend import resource_manager
    from emulator.server import serve
    from emulator.world import World

    world = World.default(seed=seed)
    names = {v: k for k, v in _roles(world).items()}
    handle = None
    if tcp:
        handle = serve(world)
        rm = pyvisa.ResourceManager("@py")
        names = {role: handle.resources[role] for role in names}
    else:
        rm = resource_manager(world)
    tx = Transmitter(names["transmitter"], rm)
    rx = Receiver(names["receiver"], rm)
    rng = np.random.default_rng(seed)
    iq = (rng.standard_normal(DAC_SAMPLES) + 1j * rng.standard_normal(DAC_SAMPLES)) * 0.1
    iq = np.clip(iq.real, -1, 1) + 1j * np.clip(iq.imag, -1, 1)
    tx.output = True
    rx.record_length = ADC_POINTS
    best = {"total": float("inf")}
    for _ in range(repeat):
        t0 = time.perf_counter()
        tx.upload_iq(iq)
        tx.play()
        t1 = time.perf_counter()
        rx.run()
        t2 = time.perf_counter()
        cap = rx.fetch()
        t3 = time.perf_counter()
        if t3 - t0 < best["total"]:
            best = {"total": t3 - t0, "upload": t1 - t0, "acquire": t2 - t1, "transfer": t3 - t2}
    best["bytes"] = float(DAC_SAMPLES * 4 + 2 * len(cap) * 2)
    tx.close()
    rx.close()
    rm.close()
    if handle is not None:
        handle.close()
    return best


def _roles(world: object) -> dict[str, str]:
    """Role -> resource of a world's instruments (from each ``*IDN?`` model field)."""
    from emulator.server import role_of

    out: dict[str, str] = {}
    for res, fw in world.instruments().items():  # type: ignore[attr-defined]
        out.setdefault(res, role_of(fw, res))
    return out


def _transport_reference(nbytes_up: int, nbytes_down: int) -> float:
    """Bare ``@qkdsim`` transport of the same bytes: a precomputed block up and down."""
    from drivers.ieee488 import encode_block
    from emulator.backend import resource_manager
    from emulator.scpi import Call, DeviceSpec, ScpiDevice, command, query

    block = encode_block(bytes(nbytes_down))  # one channel; the frame reads two

    class Echo(ScpiDevice):
        @command("DATA")
        def _data(self, call: Call) -> None:
            call.block(0)

        @query("DATA?")
        def _data_q(self, call: Call) -> bytes:
            return block

    class One:
        def __init__(self) -> None:
            self.fw = {"TCPIP0::ref::inst0::INSTR": Echo(DeviceSpec(name="ref"))}

        def instruments(self) -> dict:
            return self.fw

    rm = resource_manager(One())
    from drivers.base import Instrument

    inst = Instrument("TCPIP0::ref::inst0::INSTR", rm)
    up = bytes(nbytes_up)

    def frame() -> None:
        inst.write_block("DATA", up, check=False)
        inst.query_block("DATA?")
        inst.query_block("DATA?")

    t = best_time(frame, repeat=3)
    inst.close()
    rm.close()
    return t


def run(quick: bool = False) -> list[Row]:
    rows = _idn_rows(quick)
    frame = run_frame(repeat=1 if quick else 2)
    ref = _transport_reference(DAC_SAMPLES * 4, ADC_POINTS * 2)
    mb = frame["bytes"] / 1e6
    rows += [
        Row(
            AREA,
            "frame (upload 4e6 + acquire 4.2e6 + 2x CURV?) @qkdsim",
            frame["total"],
            "s",
            "bare @qkdsim transport of the same bytes",
            ref,
            target="< 2 s",
        ),
        Row(
            AREA,
            "frame throughput @qkdsim",
            mb / frame["total"],
            "MB/s",
            "bare @qkdsim transport",
            mb / ref,
        ),
        Row(AREA, "frame: upload_iq + play", frame["upload"], "s"),
        Row(AREA, "frame: ACQ:STAT RUN + *OPC? (physics)", frame["acquire"], "s"),
        Row(AREA, "frame: 2x CURV? + WFMO scaling", frame["transfer"], "s"),
    ]
    tcp = run_frame(repeat=1, tcp=True)
    rows.append(
        Row(
            AREA,
            "frame over TCP/pyvisa-py",
            tcp["total"],
            "s",
            "same frame @qkdsim",
            frame["total"],
            target="informative",
        )
    )
    if not quick:
        _, peak = in_fresh_process(run_frame, 5, 1)
        rows.append(Row(AREA, "peak RSS, fresh process, one frame", peak / 2**20, "MiB"))
    return rows
