"""The @qkdsim backend and the TCP/pty server on a small firmware of our own (no world needed)."""

from __future__ import annotations

import os
import socket
import time

import numpy as np
import pytest
import pyvisa
from hypothesis import given, settings
from hypothesis import strategies as st
from pyvisa import constants

from drivers.ieee488 import decode_block, encode_block
from emulator.backend import InputFramer, resource_manager, termination_points, world_of
from emulator.scpi import Call, DeviceSpec, ScpiDevice, SerialDevice, command, query
from emulator.server import serve

TX = "TCPIP0::toy-tx::inst0::INSTR"
SW = "ASRL1::INSTR"


class Toy(ScpiDevice):
    def __init__(self) -> None:
        self.data = b""
        self.level = 0.0
        super().__init__(DeviceSpec(name="toy", idn="cvqkd-hil,CV-QKD transmitter (emulated),1,0"))

    @command("TRACe#:DATA")
    def _trace(self, call: Call) -> None:
        call.nargs(1)
        self.data = call.block(0)

    @query("TRACe#:DATA?")
    def _trace_q(self, call: Call) -> bytes:
        return encode_block(self.data)

    @command("LEVel")
    def _level(self, call: Call) -> None:
        call.nargs(1)
        self.level = call.float(0, "V", -1, 1)

    @query("LEVel?")
    def _level_q(self, call: Call) -> float:
        return self.level


class Dicon(SerialDevice):
    def __init__(self) -> None:
        super().__init__("dicon")
        self.port = 1

    def handle_line(self, line: str) -> str | None:
        if line.startswith("I1 "):
            self.port = int(line[3:])
            return None
        if line == "I1?":
            return str(self.port)
        raise ValueError(line)


class ToyWorld:
    def __init__(self) -> None:
        self._inst = {TX: Toy(), SW: Dicon()}

    def instruments(self) -> dict:
        return self._inst


@pytest.fixture
def world() -> ToyWorld:
    return ToyWorld()


def test_framer_block_aware() -> None:
    payload = b"a\nb;#3\n" * 5
    msg = b"TRAC:DATA " + encode_block(payload) + b"\n*IDN?\n"
    for step in (1, 3, 7, len(msg)):
        f = InputFramer()
        out: list[bytes] = []
        for i in range(0, len(msg), step):
            out += f.feed(msg[i : i + step])
        assert out == [b"TRAC:DATA " + encode_block(payload) + b"\n", b"*IDN?\n"]
        assert f.pending == 0


def test_termination_points_skip_blocks() -> None:
    resp = encode_block(b"\n\n#1\n") + b";1\n"
    assert termination_points(resp) == [len(resp) - 1]


def test_resource_manager_routes_to_firmware(world: ToyWorld) -> None:
    rm = resource_manager(world)
    assert world_of(rm) is world
    assert set(rm.list_resources()) == {TX, SW}
    r = rm.open_resource(TX, read_termination="\n", write_termination="\n")
    assert "transmitter" in r.query("*IDN?")
    r.write("LEV 0.5")
    assert float(r.query("LEV?")) == 0.5
    r.write("LEV 5")  # out of range
    assert r.query("SYST:ERR?").startswith("-222")
    assert float(r.query("LEV?")) == 0.5
    rm.close()


def test_two_worlds_do_not_share_state() -> None:
    a, b = ToyWorld(), ToyWorld()
    ra = resource_manager(a).open_resource(TX, write_termination="\n", read_termination="\n")
    rb = resource_manager(b).open_resource(TX, write_termination="\n", read_termination="\n")
    ra.write("LEV 0.25")
    assert float(rb.query("LEV?")) == 0.0


def test_unknown_resource(world: ToyWorld) -> None:
    rm = resource_manager(world)
    with pytest.raises(pyvisa.errors.VisaIOError):
        rm.open_resource("TCPIP0::nope::inst0::INSTR")


def test_big_block_roundtrip_whole_chunks(world: ToyWorld) -> None:
    rm = resource_manager(world)
    r = rm.open_resource(TX, read_termination="\n", write_termination="\n")
    payload = np.random.default_rng(1).integers(-32768, 32767, 2_000_000, dtype=np.int16).tobytes()
    r.write_raw(b"TRAC:DATA " + encode_block(payload) + b"\n")
    assert world.instruments()[TX].data == payload
    r.chunk_size = 1 << 22
    r.write("TRAC:DATA?")
    r.set_visa_attribute(constants.ResourceAttribute.termchar_enabled, True)
    t0 = time.perf_counter()
    raw = r.read_raw()  # termchar inside the block must not end the read
    elapsed = time.perf_counter() - t0
    got, end = decode_block(raw)
    assert got == payload and raw[end:] == b"\n"
    assert elapsed < 2.0  # byte-per-call reads would take minutes; this is a loose sanity bound
    values = r.query_binary_values("TRAC:DATA?", datatype="h", container=np.array)
    assert values.nbytes == len(payload)


def test_query_interrupted_and_unterminated(world: ToyWorld) -> None:
    rm = resource_manager(world)
    r = rm.open_resource(TX, read_termination="\n", write_termination="\n", timeout=100)
    r.write("*IDN?")
    r.write("LEV 0.1")  # unread response: -410
    assert r.query("SYST:ERR?").startswith("-410")
    with pytest.raises(pyvisa.errors.VisaIOError):
        r.read()
    assert r.query("SYST:ERR?").startswith("-420")


def test_serial_resource_over_qkdsim(world: ToyWorld) -> None:
    rm = resource_manager(world)
    s = rm.open_resource(SW, read_termination="\r\n", write_termination="\r\n")
    s.write("I1 3")
    assert s.query("I1?") == "3"


def test_qkdsim_plain_pyvisa_sim_file(tmp_path) -> None:
    path = tmp_path / "plain.yaml"
    path.write_text(
        """spec: "1.1"
devices:
  d:
    eom:
      TCPIP INSTR: {q: "\\n", r: "\\n"}
    dialogues:
      - q: "*IDN?"
        r: "plain"
resources:
  TCPIP0::plain::inst0::INSTR:
    device: d
""",
        encoding="utf-8",
    )
    rm = pyvisa.ResourceManager(f"{path}@qkdsim")
    r = rm.open_resource(
        "TCPIP0::plain::inst0::INSTR", read_termination="\n", write_termination="\n"
    )
    assert r.query("*IDN?") == "plain"
    rm.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_tcp_pyvisa_py_and_serial_socket(world: ToyWorld) -> None:
    serial = pytest.importorskip("serial")
    with serve(world) as handle:
        assert handle.resources["transmitter"] == handle.resources[TX]
        rm = pyvisa.ResourceManager("@py")
        r = rm.open_resource(handle.resources[TX], read_termination="\n", write_termination="\n")
        r.timeout = 5000
        assert "transmitter" in r.query("*IDN?")
        payload = os.urandom(300_000) + b"\n;\n"
        r.write_raw(b"TRAC:DATA " + encode_block(payload) + b"\n")
        assert r.query("*OPC?") == "1"
        assert world.instruments()[TX].data == payload
        r.close()
        # a second client after the first one left
        r2 = rm.open_resource(handle.resources[TX], read_termination="\n", write_termination="\n")
        assert float(r2.query("LEV?")) == 0.0
        r2.close()
        rm.close()
        port = serial.serial_for_url(handle.resources[SW], timeout=5)
        port.write(b"I1 4\r\nI1?\r\n")
        assert port.readline() == b"4\r\n"
        port.close()


def test_server_pty(world: ToyWorld) -> None:
    serial = pytest.importorskip("serial")
    with serve(world, serial="pty") as handle:
        path = handle.resources["switch"]
        assert path.startswith("/dev/")
        port = serial.Serial(path, 115200, timeout=5)
        port.write(b"I1 2\r\nI1?\r\n")
        assert port.readline() == b"2\r\n"
        port.close()


def test_server_refuses_non_loopback(world: ToyWorld) -> None:
    with pytest.raises(ValueError, match="loopback"):
        serve(world, host="0.0.0.0")


def test_server_fixed_port(world: ToyWorld) -> None:
    port = _free_port()
    try:
        handle = serve(world, port=port)
    except OSError:
        pytest.skip("port taken between probe and bind")
    with handle:
        assert handle.resources[TX] == f"TCPIP0::127.0.0.1::{port}::SOCKET"


def test_qkdsim_from_bench_file_and_seed(tmp_path) -> None:
    world_mod = pytest.importorskip("emulator.world")
    import yaml

    config = world_mod.default_config()
    config["seed"] = 21
    bench = tmp_path / "bench.yaml"
    bench.write_text(yaml.safe_dump({"name": "lab", "emulator": config}), encoding="utf-8")
    rm = pyvisa.ResourceManager(f"{bench}@qkdsim")
    try:
        assert world_of(rm).seed == 21
        assert len(rm.list_resources()) == 5
    finally:
        rm.close()
    bare = tmp_path / "world.yaml"
    bare.write_text(yaml.safe_dump(config), encoding="utf-8")
    rm = pyvisa.ResourceManager(f"{bare}@qkdsim")
    try:
        assert world_of(rm).seed == 21
    finally:
        rm.close()
    rm = pyvisa.ResourceManager("seed=9@qkdsim")
    try:
        assert world_of(rm).seed == 9
    finally:
        rm.close()


def test_qkdsim_bad_bench_file_is_a_clear_error(tmp_path) -> None:
    pytest.importorskip("emulator.world")
    bad = tmp_path / "bad.yaml"
    bad.write_text("emulator: [1, 2]\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.yaml.*'emulator' must be a mapping"):
        pyvisa.ResourceManager(f"{bad}@qkdsim")
    with pytest.raises(ValueError, match="cannot read"):
        pyvisa.ResourceManager(f"{tmp_path / 'missing.yaml'}@qkdsim")


def test_default_qkdsim_world_is_fresh_after_close() -> None:
    pytest.importorskip("emulator.world")
    rm = pyvisa.ResourceManager("@qkdsim")
    first = world_of(rm)
    assert rm is pyvisa.ResourceManager("@qkdsim")  # same bench while open
    rm.close()
    rm2 = pyvisa.ResourceManager("@qkdsim")
    try:
        assert world_of(rm2) is not first
    finally:
        rm2.close()


def test_world_is_released_with_its_manager() -> None:
    import gc
    import weakref

    world = ToyWorld()
    ref = weakref.ref(world)
    rm = resource_manager(world)
    r = rm.open_resource(TX, read_termination="\n", write_termination="\n")
    assert "transmitter" in r.query("*IDN?")
    del r, rm, world
    gc.collect()
    assert ref() is None


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=40).map(lambda b: b.replace(b"\n", b" ").replace(b"#", b"")),
            st.binary(max_size=300).map(encode_block),
        ),
        min_size=1,
        max_size=6,
    ),
    st.lists(st.integers(1, 64), min_size=1, max_size=8),
)
def test_framer_reassembles_any_chunking(parts: list[bytes], cuts: list[int]) -> None:
    """Messages with blocks holding any byte come out whole however the stream is cut."""
    messages = [b"CMD " + p + b"\n" for p in parts]
    stream = b"".join(messages)
    f = InputFramer()
    out: list[bytes] = []
    i = k = 0
    while i < len(stream):
        step = cuts[k % len(cuts)]
        out += f.feed(stream[i : i + step])
        i += step
        k += 1
    assert out == messages
    assert f.pending == 0
