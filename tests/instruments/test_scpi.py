"""Unit tests of the SCPI core (emulator/scpi.py) on a small firmware of our own."""

from __future__ import annotations

import pytest

from drivers.ieee488 import encode_block
from emulator.scpi import (
    Call,
    DeviceSpec,
    PropertySpec,
    ScpiDevice,
    ScpiError,
    SerialDevice,
    command,
    load_spec,
    query,
)


class Toy(ScpiDevice):
    """Two lasers, a trace upload and a mode choice: enough surface for the core."""

    def __init__(self, spec: DeviceSpec) -> None:
        self.wav = {1: 1550e-9, 2: 1551e-9}
        self.trace = b""
        self.mode = "SRIbinary"
        super().__init__(spec)

    def reset(self) -> None:
        super().reset()
        self.wav = {1: 1550e-9, 2: 1551e-9}

    def state(self) -> dict:
        return {**super().state(), "wav": dict(self.wav), "trace": self.trace, "mode": self.mode}

    @command("SOURce#:WAVelength")
    def _set_wav(self, call: Call) -> None:
        call.nargs(1)
        if call.suffixes[0] not in self.wav:
            raise ScpiError(-114)
        self.wav[call.suffixes[0]] = call.float(0, "M", 1500e-9, 1600e-9, default=1550e-9)

    @query("SOURce#:WAVelength?")
    def _get_wav(self, call: Call) -> float:
        if call.suffixes[0] not in self.wav:
            raise ScpiError(-114)
        return self.wav[call.suffixes[0]]

    @command("TRACe#[:DATA]")
    def _set_trace(self, call: Call) -> None:
        call.nargs(3)
        call.int(0, 1, 1)
        self.trace = call.block(2)

    @query("TRACe#[:DATA]?")
    def _get_trace(self, call: Call) -> bytes:
        return encode_block(self.trace)

    @command("DATA:ENCdg")
    def _set_enc(self, call: Call) -> None:
        call.nargs(1)
        self.mode = call.choice(0, ["SRIbinary", "RIBinary", "ASCii"])

    @query("DATA:ENCdg?")
    def _get_enc(self, call: Call) -> str:
        return self.mode

    @query("SENSe#:POWer[:DC]?")
    def _get_pow(self, call: Call) -> float:
        return -3.25

    @query("SENSe#:FREQuency?")
    def _get_freq(self, call: Call) -> float:
        return call.float(0, "HZ") if call.args else 0.0

    @query("BOOM?")
    def _boom(self, call: Call) -> float:
        return 1 / 0


def make_spec(queue: int = 16) -> DeviceSpec:
    spec = DeviceSpec(name="toy", idn="cvqkd-hil,toy (emulated),SN1,0.1.0", error_queue_size=queue)
    spec.properties["att"] = PropertySpec(
        name="att",
        default=0.0,
        getter="OUTPut:ATTenuation?",
        getter_format="{:.3f}",
        setter="OUTPut:ATTenuation {:.3f}",
        type="float",
        min=0.0,
        max=60.0,
        unit="DB",
    )
    spec.properties["state"] = PropertySpec(
        name="state",
        default=0,
        getter="OUTPut[:STATe]?",
        getter_format="{:d}",
        setter="OUTPut[:STATe] {:d}",
        type="int",
        valid=[0, 1],
    )
    return spec


@pytest.fixture
def dev() -> Toy:
    return Toy(make_spec())


def ask(dev: ScpiDevice, msg: str | bytes) -> str:
    raw = msg.encode() if isinstance(msg, str) else msg
    out = dev.handle(raw + b"\n")
    return "" if out is None else out.decode("latin-1").rstrip("\n")


def errors(dev: ScpiDevice) -> list[int]:
    codes = []
    while True:
        code = int(ask(dev, "SYST:ERR?").split(",")[0])
        if code == 0:
            return codes
        codes.append(code)


def test_idn_and_common(dev: Toy) -> None:
    assert ask(dev, "*IDN?") == "cvqkd-hil,toy (emulated),SN1,0.1.0"
    assert ask(dev, "*OPC?") == "1"
    assert ask(dev, "*TST?") == "0"
    assert ask(dev, "SYST:ERR?") == '0,"No error"'
    assert ask(dev, "system:error:next?") == '0,"No error"'
    assert ask(dev, "SYST:VERS?") == "1999.0"


@pytest.mark.parametrize(
    "header",
    ["SOUR:WAV?", "sour:wav?", "SOURCE1:WAVELENGTH?", "source1:wavelength?", "SoUr1:WaV?"],
)
def test_short_long_any_case(dev: Toy, header: str) -> None:
    assert float(ask(dev, header)) == pytest.approx(1550e-9)


def test_numeric_suffix(dev: Toy) -> None:
    assert float(ask(dev, "SOUR2:WAV?")) == pytest.approx(1551e-9)
    ask(dev, "SOUR2:WAV 1560NM")
    assert float(ask(dev, "SOURCE2:WAV?")) == pytest.approx(1560e-9)
    assert float(ask(dev, "SOUR1:WAV?")) == pytest.approx(1550e-9)
    ask(dev, "SOUR3:WAV?")
    assert errors(dev) == [-114]


def test_partial_forms_are_undefined(dev: Toy) -> None:
    ask(dev, "SOURC:WAV?")
    ask(dev, "SOUR:WAVE?")
    assert errors(dev) == [-113, -113]


def test_optional_nodes(dev: Toy) -> None:
    assert ask(dev, "SENS:POW?") == "-3.25"
    assert ask(dev, "sense2:power:dc?") == "-3.25"
    ask(dev, "OUTP ON")
    assert ask(dev, "OUTP:STAT?") == "1"
    ask(dev, "OUTPUT:STATE 0")
    assert ask(dev, "OUTP?") == "0"


@pytest.mark.parametrize(
    ("arg", "metres"),
    [
        ("1550.12NM", 1550.12e-9),
        ("1550.12 nm", 1550.12e-9),
        ("1.55012E-6", 1.55012e-6),
        ("1.55012e-6 M", 1.55012e-6),
        ("1.55012UM", 1.55012e-6),
        ("0.00155012MM", 1.55012e-6),
        ("MIN", 1500e-9),
        ("max", 1600e-9),
        ("DEF", 1550e-9),
    ],
)
def test_unit_suffixes(dev: Toy, arg: str, metres: float) -> None:
    ask(dev, f"SOUR:WAV {arg}")
    assert errors(dev) == []
    assert float(ask(dev, "SOUR:WAV?")) == pytest.approx(metres, rel=1e-12)


def test_mhz_is_mega(dev: Toy) -> None:
    assert float(ask(dev, "SENS:FREQ? 2.5MHZ")) == pytest.approx(2.5e6)
    assert float(ask(dev, "SENS:FREQ? 2.5GHZ")) == pytest.approx(2.5e9)
    assert float(ask(dev, "SENS:FREQ? 2.5KHZ")) == pytest.approx(2.5e3)


def test_wrong_unit_is_131(dev: Toy) -> None:
    ask(dev, "SOUR:WAV 1550HZ")
    assert errors(dev) == [-131]
    assert float(ask(dev, "SOUR:WAV?")) == pytest.approx(1550e-9)


def test_semicolon_lists_and_compound_path(dev: Toy) -> None:
    assert ask(dev, "SOUR1:WAV 1551NM;WAV?;:SOUR2:WAV?;*IDN?").split(";") == [
        "1.551E-06",
        "1.551E-06",
        "cvqkd-hil,toy (emulated),SN1,0.1.0",
    ]
    assert errors(dev) == []


def test_block_with_separators_inside(dev: Toy) -> None:
    payload = b"ab;c\nd,e\"f'#9\r\n" + bytes(range(256))
    msg = b"TRAC1:DATA 1,0," + encode_block(payload) + b";TRAC:DATA?"
    out = dev.handle(msg + b"\n")
    assert out is not None
    assert out == encode_block(payload) + b"\n"
    assert dev.trace == payload
    assert errors(dev) == []


def test_block_right_after_header(dev: Toy) -> None:
    class One(Toy):
        @command("BLOCk")
        def _blk(self, call: Call) -> None:
            call.nargs(1)
            self.trace = call.block(0)

    d = One(make_spec())
    d.handle(b"BLOC " + encode_block(b"x;y") + b"\n")
    assert d.trace == b"x;y"
    assert errors(d) == []


def test_choice_short_and_long(dev: Toy) -> None:
    ask(dev, "DATA:ENC RIB")
    assert ask(dev, "DATA:ENC?") == "RIBinary"
    ask(dev, "data:encdg sribinary")
    assert ask(dev, "DATA:ENC?") == "SRIbinary"
    ask(dev, "DATA:ENC SRIB")
    assert errors(dev) == [-224]
    assert ask(dev, "DATA:ENC?") == "SRIbinary"


@pytest.mark.parametrize(
    ("msg", "code"),
    [
        ("SOUR:WAV 1550NM,3", -108),
        ("SOUR:WAV", -109),
        ("SOUR:WAV abc", -104),
        ("SOUR:WAV 2000NM", -222),
        ("OUTP:ATT 61", -222),
        ("OUTP:ATT -1 DB", -222),
        ("OUTP MAYBE", -224),
        ("FOO:BAR 1", -113),
        ("SOUR:WAV,1", -102),
        ('SOUR:WAV "unterminated', -102),
        ("TRAC 1,0,#9000", -161),
        ("TRAC 1,0,#0abc", -161),
        ("TRAC 1,0,5", -104),
        ("BOOM?", -200),
        ("SOUR:W?AV", -102),
    ],
)
def test_error_codes_and_state_unchanged(dev: Toy, msg: str, code: int) -> None:
    before = dev.state()
    ask(dev, msg)
    assert errors(dev) == [code]
    assert dev.state() == before


def test_esr_bits_and_stb(dev: Toy) -> None:
    ask(dev, "*CLS")
    assert ask(dev, "*ESR?") == "0"
    ask(dev, "FOO")  # -113: command error, bit 5
    ask(dev, "SOUR:WAV 2000NM")  # -222: execution error, bit 4
    stb = int(ask(dev, "*STB?"))
    assert stb & 0x04  # error queue not empty
    assert int(ask(dev, "*ESR?")) == 32 | 16
    assert ask(dev, "*ESR?") == "0"  # read clears
    ask(dev, "*ESE 48")
    ask(dev, "FOO")
    assert int(ask(dev, "*STB?")) & 0x20  # ESB: enabled event present
    ask(dev, "*CLS")
    assert int(ask(dev, "*STB?")) == 0
    assert ask(dev, "*ESE?") == "48"
    ask(dev, "*OPC")
    assert int(ask(dev, "*ESR?")) == 1
    assert int(ask(dev, "*IDN?;*STB?").split(";")[1]) & 0x10  # MAV while output pending


def test_query_error_sets_bit2() -> None:
    d = Toy(make_spec())
    d.push_error(-410)
    assert int(ask(d, "*ESR?")) == 4
    d.push_error(-300)
    assert int(ask(d, "*ESR?")) == 8


def test_error_queue_overflow() -> None:
    d = Toy(make_spec(queue=4))
    for _ in range(10):
        ask(d, "FOO")
    assert ask(d, "SYST:ERR:COUN?") == "4"
    assert errors(d) == [-113, -113, -113, -350]


def test_rst_restores_defaults(dev: Toy) -> None:
    ask(dev, "OUTP:ATT 5;:SOUR:WAV 1560NM")
    ask(dev, "*RST")
    assert ask(dev, "OUTP:ATT?") == "0.000"
    assert float(ask(dev, "SOUR:WAV?")) == pytest.approx(1550e-9)


@pytest.mark.parametrize(
    "junk",
    [
        b"",
        b"\n",
        b";;;",
        b"\x00\xff\xfe",
        b"#",
        b"#9",
        b"#15ab",
        b"*IDN",
        b"*IDN?;" * 100,
        b":",
        b"::A",
        b"?",
        b"'",
        b'"',
        b"A B C D",
        b"SOUR:WAV 1e999",
        b"SOUR:WAV #HFFFF",
        b"SOUR1:WAV " + b"9" * 5000,
    ],
)
def test_handle_never_raises(dev: Toy, junk: bytes) -> None:
    before = dev.state()
    dev.handle(junk)
    errors(dev)
    if not junk.startswith(b"*IDN?"):
        assert dev.state() == before


def test_yaml_spec(tmp_path) -> None:
    path = tmp_path / "dev.yaml"
    path.write_text(
        """
spec: "1.1"
devices:
  voa:
    eom:
      TCPIP INSTR: {q: "\\n", r: "\\n"}
    error:
      queue_size: 3
    dialogues:
      - q: "*IDN?"
        r: "cvqkd-hil,VOA (emulated),SN7,0.1.0"
      - q: "SYSTem:LOCK?"
        r: "0"
    properties:
      att:
        default: 1.5
        unit: DB
        getter: {q: "OUTPut:ATTenuation?", r: "{:.2f}"}
        setter: {q: "OUTPut:ATTenuation {:.2f}"}
        specs: {min: 0, max: 30, type: float}
      mode:
        default: AUTO
        getter: {q: "SENSe:MODE?", r: "{}"}
        setter: {q: "SENSe:MODE {}"}
        specs: {valid: [AUTO, MANual], type: str}
      avg:
        default: 4
        getter: {q: "SENSe:AVERage?", r: "{:d}"}
        setter: {q: "SENSe:AVERage {:d}"}
        specs: {min: 1, max: 1024, type: int}
resources:
  TCPIP0::voa::inst0::INSTR:
    device: voa
""",
        encoding="utf-8",
    )
    spec = load_spec(path, "voa")
    assert spec.error_queue_size == 3

    class Voa(ScpiDevice):
        refused = False

        def on_att(self, value: float) -> None:
            if value == 13.0:
                raise ScpiError(-221)

    d = Voa(spec)
    assert ask(d, "*IDN?") == "cvqkd-hil,VOA (emulated),SN7,0.1.0"
    assert ask(d, "SYST:LOCK?") == "0"
    assert ask(d, "OUTP:ATT?") == "1.50"
    ask(d, "outp:att 12db")
    assert ask(d, "OUTP:ATT?") == "12.00"
    ask(d, "OUTP:ATT 13")
    ask(d, "OUTP:ATT 31")
    assert errors(d) == [-221, -222]
    assert ask(d, "OUTP:ATT?") == "12.00"
    ask(d, "SENS:MODE man")
    assert ask(d, "SENS:MODE?") == "MANual"
    ask(d, "SENS:AVER 16;AVER?")
    assert ask(d, "SENS:AVER?") == "16"
    with pytest.raises(KeyError, match="no device"):
        load_spec(path, "nope")


class Echo(SerialDevice):
    def __init__(self) -> None:
        super().__init__("echo")
        self.port = 1

    def handle_line(self, line: str) -> str | None:
        if line.upper().startswith("I1 "):
            port = int(line[3:])
            if not 1 <= port <= 4:
                raise ValueError(port)
            self.port = port
            return None
        if line.upper() == "I1?":
            return str(self.port)
        raise ValueError(line)


def test_serial_device() -> None:
    e = Echo()
    assert e.handle(b"I1 3\r\n") is None
    assert e.handle(b"I1?\r\n") == b"3\r\n"
    assert e.handle(b"I1 9\r\n") == b"ERR\r\n"
    assert e.handle(b"\xff\x00junk") == b"ERR\r\n"
    assert e.port == 3


def test_dispatch_is_cached(dev: Toy) -> None:
    ask(dev, "SOUR1:WAV?")
    n = len(dev._table.cache)
    for _ in range(50):
        ask(dev, "SOUR1:WAV?")
    assert len(dev._table.cache) == n


def test_bracketed_optional_suffix() -> None:
    class Mon(ScpiDevice):
        @query("SENSe[1]:POWer[:DC]?")
        def _p(self, call: Call) -> float:
            return 1.5

    d = Mon(DeviceSpec(name="m"))
    for header in ("SENS:POW?", "SENS1:POW?", "sense1:power:dc?"):
        assert ask(d, header) == "1.5"
    ask(d, "SENS2:POW?")
    assert errors(d) == [-113]
