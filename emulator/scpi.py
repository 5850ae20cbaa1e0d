"""The SCPI core shared by every emulated instrument (the firmware's parser and status model).

A firmware class subclasses :class:`ScpiDevice`, declares handlers with :func:`command` and
:func:`query` in SCPI notation (``SOURce#:WAVelength``, ``SENSe#:POWer[:DC]?``) and gets for
free: short/long forms in any case, numeric suffixes, ``;``-separated message units with the
SCPI compound-header rule, IEEE 488.2 definite-length blocks inside messages, unit suffixes
with SI prefixes, ``MIN``/``MAX``/``DEF``, the IEEE 488.2 common commands, the status model
(``*ESR?``/``*STB?``), a bounded error queue (``-350`` on overflow) and the simple properties
declared in the instrument's pyvisa-sim 1.1 YAML. :meth:`ScpiDevice.handle` never raises:
whatever bytes arrive, the firmware answers or queues an error.

Dispatch goes through a trie built once per instance (mnemonic -> node) and a bounded cache
of raw headers, so a repeated command costs one dict lookup.
"""

from __future__ import annotations

import math
import os
import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import yaml

from drivers.ieee488 import BlockError, block_header_length

__all__ = [
    "ERROR_MESSAGES",
    "Call",
    "DeviceSpec",
    "PropertySpec",
    "ScpiDevice",
    "ScpiError",
    "SerialDevice",
    "command",
    "load_spec",
    "query",
]

ERROR_MESSAGES: dict[int, str] = {
    0: "No error",
    -100: "Command error",
    -101: "Invalid character",
    -102: "Syntax error",
    -103: "Invalid separator",
    -104: "Data type error",
    -108: "Parameter not allowed",
    -109: "Missing parameter",
    -113: "Undefined header",
    -114: "Header suffix out of range",
    -131: "Invalid suffix",
    -161: "Invalid block data",
    -200: "Execution error",
    -221: "Settings conflict",
    -222: "Data out of range",
    -224: "Illegal parameter value",
    -230: "Data corrupt or stale",
    -350: "Queue overflow",
    -400: "Query error",
    -410: "Query INTERRUPTED",
    -420: "Query UNTERMINATED",
}

# IEEE 488.2 Standard Event Status Register bits.
ESR_OPC = 1 << 0
ESR_QYE = 1 << 2
ESR_DDE = 1 << 3
ESR_EXE = 1 << 4
ESR_CME = 1 << 5
# Status Byte bits.
STB_EAV = 1 << 2
STB_MAV = 1 << 4
STB_ESB = 1 << 5
STB_MSS = 1 << 6


class ScpiError(Exception):
    """Raise inside a handler to queue a standard SCPI error; the core never lets it escape."""

    def __init__(self, code: int, message: str | None = None) -> None:
        self.code = int(code)
        self.text = message if message else ERROR_MESSAGES.get(self.code, "Device-specific error")
        super().__init__(f"{self.code},{self.text}")


def _esr_bit(code: int) -> int:
    """The ESR bit an error code sets (IEEE 488.2 / SCPI 21.8 error classes)."""
    if -199 <= code <= -100:
        return ESR_CME
    if -299 <= code <= -200:
        return ESR_EXE
    if -499 <= code <= -400:
        return ESR_QYE
    return ESR_DDE  # -300..-399 and device-specific positive codes


# --------------------------------------------------------------------------- numbers and units

_NUM_RE = re.compile(r"\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE]\s*[+-]?\d+)?)\s*([A-Za-z%/]*)\s*\Z")
_NONDEC_RE = re.compile(r"\s*#([HhQqBb])([0-9A-Fa-f]+)\s*\Z")
_NONDEC_BASE = {"H": 16, "Q": 8, "B": 2}
_PREFIXES: dict[str, float] = {
    "EX": 1e18,
    "PE": 1e15,
    "T": 1e12,
    "G": 1e9,
    "MA": 1e6,
    "K": 1e3,
    "M": 1e-3,
    "U": 1e-6,
    "N": 1e-9,
    "P": 1e-12,
    "F": 1e-15,
    "A": 1e-18,
}


def _unit_multiplier(suffix: str, unit: str | None) -> float:
    """Multiplier of a unit suffix (IEEE 488.2 7.7.3): ``NM`` for unit ``M`` is 1e-9."""
    if not suffix:
        return 1.0
    if unit is None:
        raise ScpiError(-131, f"Invalid suffix;{suffix} (no unit expected)")
    s = suffix.upper()
    u = unit.upper()
    if s == u:
        return 1.0
    if s.endswith(u):
        prefix = s[: -len(u)]
        if prefix == "M" and u in ("HZ", "OHM"):  # IEEE 488.2: MHZ and MOHM are mega
            return 1e6
        if prefix in _PREFIXES:
            return _PREFIXES[prefix]
    raise ScpiError(-131, f"Invalid suffix;{suffix} (unit {unit})")


def _parse_number(text: str, unit: str | None) -> float:
    m = _NUM_RE.match(text)
    if m:
        value = float(m.group(1).replace(" ", ""))
        return value * _unit_multiplier(m.group(2), unit)
    m = _NONDEC_RE.match(text)
    if m:
        try:
            return float(int(m.group(2), _NONDEC_BASE[m.group(1).upper()]))
        except ValueError:
            raise ScpiError(-104, f"Data type error;{text!r}") from None
    raise ScpiError(-104, f"Data type error;{text[:40]!r} is not numeric")


def _mnemonic_forms(word: str) -> tuple[str, str]:
    """(short, long) upper-case forms of an SCPI mnemonic such as ``SRIbinary`` or ``CH1``."""
    body = word.rstrip("0123456789")
    digits = word[len(body) :]
    short = ""
    for ch in body:
        if ch.isupper() or not ch.isalpha():
            short += ch
        else:
            break
    if not short:
        short = body.upper()
    return short.upper() + digits, body.upper() + digits


class Call:
    """What a handler receives for one parsed command."""

    __slots__ = ("args", "header", "suffixes")

    def __init__(self, header: str, suffixes: tuple[int, ...], args: list[str | bytes]) -> None:
        self.header = header
        self.suffixes = suffixes
        self.args = args

    def __repr__(self) -> str:
        shown = [a if isinstance(a, str) else f"<block {len(a)} B>" for a in self.args]
        return f"Call({self.header!r}, {self.suffixes!r}, {shown!r})"

    def nargs(self, n: int, m: int | None = None) -> None:
        """Require between ``n`` and ``m`` (default ``n``) arguments: -109 / -108 otherwise."""
        hi = n if m is None else m
        if len(self.args) < n:
            raise ScpiError(-109, f"Missing parameter;{self.header} needs {n}")
        if len(self.args) > hi:
            raise ScpiError(-108, f"Parameter not allowed;{self.header} takes at most {hi}")

    def _text(self, i: int) -> str:
        if i >= len(self.args):
            raise ScpiError(-109, f"Missing parameter;{self.header} argument {i + 1}")
        arg = self.args[i]
        if isinstance(arg, bytes):
            raise ScpiError(-104, f"Data type error;{self.header} argument {i + 1} is a block")
        return arg

    def float(
        self,
        i: int,
        unit: str | None = None,
        lo: float | None = None,
        hi: float | None = None,
        default: float | None = None,
    ) -> float:
        """Argument ``i`` as a float in base units; MIN/MAX/DEF when lo/hi/default are given."""
        text = self._text(i)
        key = text.strip().upper()
        if key in ("MIN", "MINIMUM") and lo is not None:
            return float(lo)
        if key in ("MAX", "MAXIMUM") and hi is not None:
            return float(hi)
        if key in ("DEF", "DEFAULT") and default is not None:
            return float(default)
        value = _parse_number(text, unit)
        if not math.isfinite(value):
            raise ScpiError(-222, f"Data out of range;{self.header} {text.strip()}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ScpiError(
                -222,
                f"Data out of range;{self.header} {text.strip()} not in [{lo:g}, {hi:g}]"
                if lo is not None and hi is not None
                else f"Data out of range;{self.header} {text.strip()}",
            )
        return value

    def int(self, i: int, lo: int | None = None, hi: int | None = None) -> int:
        """Argument ``i`` as an integer (decimal values are rounded, IEEE 488.2 7.7.2.5)."""
        text = self._text(i)
        key = text.strip().upper()
        if key in ("MIN", "MINIMUM") and lo is not None:
            return int(lo)
        if key in ("MAX", "MAXIMUM") and hi is not None:
            return int(hi)
        value = _parse_number(text, None)
        if not math.isfinite(value) or abs(value) > 2**53:
            raise ScpiError(-222, f"Data out of range;{self.header} {text.strip()}")
        result = math.floor(value + 0.5)
        if (lo is not None and result < lo) or (hi is not None and result > hi):
            raise ScpiError(-222, f"Data out of range;{self.header} {result} not in [{lo}, {hi}]")
        return result

    def bool(self, i: int) -> bool:
        """``ON``/``OFF``/``1``/``0``; anything else is -224."""
        key = self._text(i).strip().upper()
        if key in ("ON", "1"):
            return True
        if key in ("OFF", "0"):
            return False
        raise ScpiError(-224, f"Illegal parameter value;{self.header} expects ON|OFF|1|0")

    def choice(self, i: int, choices: Sequence[str]) -> str:
        """The entry of ``choices`` (SCPI mnemonics) matching argument ``i`` (short or long)."""
        key = self._text(i).strip().strip("\"'").upper()
        for c in choices:
            short, long = _mnemonic_forms(c)
            if key in (short, long):
                return c
        raise ScpiError(
            -224, f"Illegal parameter value;{self.header} expects one of {'|'.join(choices)}"
        )

    def string(self, i: int) -> str:
        """Argument ``i`` with surrounding quotes removed (doubled quotes unescaped)."""
        text = self._text(i).strip()
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
            q = text[0]
            return text[1:-1].replace(q + q, q)
        return text

    def block(self, i: int) -> bytes:
        """Argument ``i`` as the payload of an IEEE 488.2 block (-104 if it is not a block)."""
        if i >= len(self.args):
            raise ScpiError(-109, f"Missing parameter;{self.header} argument {i + 1}")
        arg = self.args[i]
        if not isinstance(arg, bytes):
            raise ScpiError(-104, f"Data type error;{self.header} argument {i + 1} must be a block")
        return arg


# --------------------------------------------------------------------------- patterns

Handler = Callable[..., Any]


def _mark(pattern: str, kind: str) -> Callable[[Handler], Handler]:
    if kind == "query" and not pattern.endswith("?"):
        raise ValueError(f"query pattern must end with '?': {pattern!r}")
    if kind == "command" and pattern.endswith("?"):
        raise ValueError(f"command pattern must not end with '?': {pattern!r}")

    def deco(func: Handler) -> Handler:
        marks = list(getattr(func, "_scpi_marks", ()))
        marks.append((pattern, kind))
        func._scpi_marks = marks  # type: ignore[attr-defined]
        return func

    return deco


def command(pattern: str) -> Callable[[Handler], Handler]:
    """Declare a set command handler ``handler(self, call: Call) -> None``."""
    return _mark(pattern, "command")


def query(pattern: str) -> Callable[[Handler], Handler]:
    """Declare a query handler ``handler(self, call: Call) -> str | bytes | float | int | bool``."""
    return _mark(pattern, "query")


@dataclass(frozen=True)
class _Node:
    short: str
    long: str
    suffix: str | int | None  # None: no suffix; "#": any (captured); int: fixed value


_NODE_RE = re.compile(r"(\*?[A-Za-z_][A-Za-z_]*)(#|\d+)?\Z")


def _parse_pattern(pattern: str) -> list[list[_Node]]:
    """All node sequences a pattern stands for (optional nodes expanded)."""
    text = pattern.strip()
    if text.endswith("?"):
        text = text[:-1]
    # tokens: (node text, optional) ; optional parts are [:NODE] or [NODE:] or [NODE]
    parts: list[tuple[str, bool]] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "[":
            j = text.index("]", i)
            inner = text[i + 1 : j].strip(":")
            if inner.isdigit() and parts and text[i - 1 : i] not in (":", ""):
                # ``SENSe[1]``: an optional numeric suffix written as in instrument manuals
                word, optional = parts[-1]
                parts[-1] = (word.rstrip("0123456789#") + inner, optional)
            else:
                for sub in inner.split(":"):
                    parts.append((sub, True))
            i = j + 1
        elif ch == ":":
            i += 1
        else:
            j = i
            while j < len(text) and text[j] not in ":[":
                j += 1
            parts.append((text[i:j], False))
            i = j
    nodes: list[tuple[_Node, bool]] = []
    for word, optional in parts:
        m = _NODE_RE.match(word)
        if not m:
            raise ValueError(f"bad SCPI pattern node {word!r} in {pattern!r}")
        name, suf = m.group(1), m.group(2)
        short, long = _mnemonic_forms(name)
        suffix: str | int | None = None if suf is None else ("#" if suf == "#" else int(suf))
        nodes.append((_Node(short, long, suffix), optional))
    variants: list[list[_Node]] = [[]]
    for node, optional in nodes:
        if optional:
            variants = [[*v, node] for v in variants] + variants
        else:
            variants = [[*v, node] for v in variants]
    return [v for v in variants if v]


class _Trie:
    __slots__ = ("children", "leaves")

    def __init__(self) -> None:
        self.children: dict[str, _Trie] = {}
        self.leaves: list[tuple[tuple[_Node, ...], Handler]] = []


def _insert(root: _Trie, nodes: Sequence[_Node], handler: Handler) -> None:
    t = root
    for node in nodes:
        child = t.children.get(node.short) or t.children.get(node.long)
        if child is None:
            child = _Trie()
        t.children[node.short] = child
        t.children[node.long] = child
        t = child
    t.leaves.insert(0, (tuple(nodes), handler))


_TOKEN_RE = re.compile(r"(\*?[A-Z_]+)(\d*)\Z")
_HEADER_OK = re.compile(r"[:*]?[A-Za-z_*][A-Za-z0-9_:*]*\??\Z")


def _lookup(root: _Trie, tokens: Sequence[str]) -> tuple[Handler, tuple[int, ...], str] | None:
    t = root
    parsed: list[tuple[str, int | None]] = []
    for tok in tokens:
        m = _TOKEN_RE.match(tok)
        if not m:
            return None
        child = t.children.get(m.group(1))
        if child is None:
            return None
        digits = m.group(2)
        parsed.append((m.group(1), int(digits) if digits else None))
        t = child
    for nodes, handler in t.leaves:
        suffixes: list[int] = []
        names: list[str] = []
        ok = True
        for node, (_, given) in zip(nodes, parsed, strict=True):
            if node.suffix is None:
                if given is not None:
                    ok = False
                    break
                names.append(node.long)
            elif node.suffix == "#":
                value = 1 if given is None else given
                suffixes.append(value)
                names.append(f"{node.long}{value}")
            else:
                value = 1 if given is None else given
                if value != node.suffix:
                    ok = False
                    break
                names.append(f"{node.long}{value}")
        if ok:
            return handler, tuple(suffixes), ":".join(names)
    return None


# --------------------------------------------------------------------------- message splitting

_SPECIAL = re.compile(rb"[;\n\"',#]")
_WS = b" \t\r"
_WS_RE = re.compile(rb"[ \t\r]")
MAX_HEADER = 256
"""Longest header looked up (IEEE 488.2 mnemonics are at most 12 characters each)."""


class _ParseError(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


def _split_message(msg: bytes) -> list[tuple[bool, list[bytes | tuple[bytes]] | _ParseError]]:
    """Split a program message into units.

    Returns ``(new_line, pieces)`` per unit, where pieces are the comma-separated raw fields
    (the header is in the first field); a block is given as a 1-tuple ``(payload,)``.
    ``new_line`` is True for the first unit after a newline (compound path resets).
    A unit that cannot be split is given as a :class:`_ParseError`.
    """
    units: list[tuple[bool, list[bytes | tuple[bytes]] | _ParseError]] = []
    fields: list[bytes | tuple[bytes]] = []
    start = 0
    pos = 0
    n = len(msg)
    new_line = True
    after_block = False

    def close_field(end: int) -> None:
        nonlocal after_block
        if after_block:
            if msg[start:end].strip(_WS):
                raise _ParseError(-102, "Syntax error;data after block")
        else:
            fields.append(msg[start:end])
        after_block = False

    while True:
        try:
            m = _SPECIAL.search(msg, pos)
            if m is None:
                close_field(n)
                units.append((new_line, fields))
                break
            c = m.group()
            k = m.start()
            if c in (b";", b"\n"):
                close_field(k)
                units.append((new_line, fields))
                fields = []
                new_line = c == b"\n"
                start = pos = k + 1
            elif c == b",":
                close_field(k)
                start = pos = k + 1
            elif c in (b'"', b"'"):
                j = k + 1
                while True:
                    j = msg.find(c, j)
                    if j < 0:
                        raise _ParseError(-102, "Syntax error;unterminated string")
                    if j + 1 < n and msg[j + 1 : j + 2] == c:
                        j += 2
                        continue
                    break
                pos = j + 1
            else:  # '#'
                nxt = msg[k + 1 : k + 2]
                if nxt.isdigit():
                    prefix = msg[start:k]
                    head = prefix.strip(_WS)
                    if after_block:
                        raise _ParseError(-102, "Syntax error;block must start a parameter")
                    if head:
                        # only "HEADER<ws>#..." may precede a block inside the first field
                        if fields or prefix[-1] not in _WS or len(head.split()) != 1:
                            raise _ParseError(-102, "Syntax error;block must start a parameter")
                        fields.append(prefix)
                    if nxt == b"0":
                        raise _ParseError(-161, "Invalid block data;indefinite length")
                    try:
                        hlen, size = block_header_length(msg, k)
                    except BlockError as exc:
                        raise _ParseError(-161, f"Invalid block data;{exc}") from None
                    begin = k + hlen
                    end = begin + size
                    if end > n:
                        raise _ParseError(-161, "Invalid block data;block shorter than declared")
                    fields.append((msg[begin:end],))
                    after_block = True
                    start = pos = end
                else:
                    pos = k + 1
        except _ParseError as exc:
            # Skip to the next newline: the rest of this line cannot be trusted.
            j = msg.find(b"\n", pos)
            units.append((new_line, exc))
            if j < 0:
                break
            fields = []
            after_block = False
            new_line = True
            start = pos = j + 1
    return units


# --------------------------------------------------------------------------- spec (YAML)


@dataclass
class PropertySpec:
    """One simple property declared in a pyvisa-sim 1.1 YAML."""

    name: str
    default: Any
    getter: str | None = None
    getter_format: str | None = None
    setter: str | None = None
    type: str = "float"
    min: float | None = None
    max: float | None = None
    valid: list[Any] | None = None
    unit: str | None = None


@dataclass
class DeviceSpec:
    """The static surface of one instrument, from its YAML (see :func:`load_spec`)."""

    name: str
    idn: str = "cvqkd-hil,emulated instrument,SN0000,0.1.0"
    eom: dict[str, tuple[str, str]] = field(default_factory=dict)
    error_queue_size: int = 16
    dialogues: list[tuple[str, str | None]] = field(default_factory=list)
    properties: dict[str, PropertySpec] = field(default_factory=dict)
    path: str = ""

    def termination(self, interface: str = "TCPIP INSTR") -> tuple[str, str]:
        """(query/write termination, response termination) for an interface type."""
        if interface in self.eom:
            return self.eom[interface]
        if self.eom:
            return next(iter(self.eom.values()))
        return ("\n", "\n")


def _spec_from_dict(name: str, d: dict[str, Any], path: str = "") -> DeviceSpec:
    spec = DeviceSpec(name=name, path=path)
    for itype, pair in (d.get("eom") or {}).items():
        spec.eom[str(itype)] = (str(pair.get("q", "\n")), str(pair.get("r", "\n")))
    err = d.get("error")
    size = d.get("error_queue_size")
    if isinstance(err, dict):
        size = err.get("queue_size", err.get("size", size))
    if size is not None:
        spec.error_queue_size = int(size)
    for dlg in d.get("dialogues") or []:
        q = str(dlg.get("q", "")).strip()
        r = dlg.get("r")
        if q.upper() in ("*IDN?", "*IDN ?") and r is not None:
            spec.idn = str(r)
        elif q:
            spec.dialogues.append((q, None if r is None else str(r)))
    for pname, p in (d.get("properties") or {}).items():
        specs = p.get("specs") or {}
        getter = p.get("getter") or {}
        setter = p.get("setter") or {}
        ptype = str(specs.get("type", "float"))
        default = p.get("default")
        spec.properties[pname] = PropertySpec(
            name=pname,
            default=default,
            getter=str(getter["q"]).strip() if "q" in getter else None,
            getter_format=str(getter["r"]) if "r" in getter else None,
            setter=str(setter["q"]).strip() if "q" in setter else None,
            type=ptype,
            min=specs.get("min"),
            max=specs.get("max"),
            valid=list(specs["valid"]) if "valid" in specs else None,
            unit=p.get("unit"),
        )
    return spec


def load_spec(path: str | os.PathLike, device: str) -> DeviceSpec:
    """Read device ``device`` from the pyvisa-sim 1.1 YAML file at ``path``."""
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    devices = (data or {}).get("devices") or {}
    if device not in devices:
        raise KeyError(f"{os.fspath(path)}: no device {device!r} (has {sorted(devices)})")
    return _spec_from_dict(device, devices[device], os.fspath(path))


# --------------------------------------------------------------------------- the device


def _format(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, bool):
        return b"1" if value else b"0"
    if isinstance(value, int):
        return str(value).encode("ascii")
    if isinstance(value, float):
        if math.isnan(value):
            return b"9.91E+37"
        if math.isinf(value):
            return b"9.9E+37" if value > 0 else b"-9.9E+37"
        return format(value, ".12G").encode("ascii")
    if value is None:
        return b""
    if hasattr(value, "item"):  # numpy scalar
        return _format(value.item())
    return str(value).encode("latin-1", "replace")


class _Table:
    """Precompiled dispatch: command and query tries plus a bounded header cache."""

    __slots__ = ("cache", "commands", "queries")

    def __init__(self) -> None:
        self.commands = _Trie()
        self.queries = _Trie()
        self.cache: dict[tuple[str, bool], tuple[Handler, tuple[int, ...], str] | None] = {}

    def add(self, pattern: str, kind: str, handler: Handler) -> None:
        root = self.queries if kind == "query" else self.commands
        for nodes in _parse_pattern(pattern):
            _insert(root, nodes, handler)

    def find(self, header: str, is_query: bool) -> tuple[Handler, tuple[int, ...], str] | None:
        key = (header, is_query)
        hit = self.cache.get(key, False)
        if hit is not False:
            return hit  # type: ignore[return-value]
        tokens = header.split(":")
        found = _lookup(self.queries if is_query else self.commands, tokens)
        if len(self.cache) > 4096:
            self.cache.clear()
        if found is not None or len(header) <= 64:
            self.cache[key] = found
        return found


class ScpiDevice:
    """Base class of every emulated SCPI instrument (firmware)."""

    _class_marks: ClassVar[list[tuple[str, str, str]]] = []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        marks: list[tuple[str, str, str]] = []
        seen: set[str] = set()
        for klass in cls.__mro__:
            if klass is ScpiDevice:
                break
            for attr, value in vars(klass).items():
                if attr in seen:
                    continue
                seen.add(attr)
                for pattern, kind in getattr(value, "_scpi_marks", ()):
                    marks.append((pattern, kind, attr))
        cls._class_marks = marks

    def __init__(self, spec: DeviceSpec, name: str = "") -> None:
        self.spec = spec
        self.name = name or spec.name
        self.idn = spec.idn
        self.response_termination: bytes = spec.termination()[1].encode("latin-1")
        self.props: dict[str, Any] = {}
        self._errors: deque[tuple[int, str]] = deque()
        self._queue_size = max(1, int(spec.error_queue_size))
        self.esr = 0
        self.ese = 0
        self.sre = 0
        self._pending_output = False
        self._table = self._build_table()
        self._reset_props()

    # ----- table

    def _build_table(self) -> _Table:
        table = _Table()
        # lowest precedence first: later insertions win (leaves are prepended)
        for q, r in self.spec.dialogues:
            if q.startswith("*") and q.rstrip("?").upper() in _COMMON_NAMES:
                continue
            try:
                if q.endswith("?"):
                    table.add(q, "query", _static_reply(r or ""))
                else:
                    table.add(q.split()[0], "command", _static_reply(None))
            except ValueError:
                continue
        for prop in self.spec.properties.values():
            if prop.getter:
                table.add(prop.getter.split()[0], "query", self._prop_getter(prop))
            if prop.setter:
                table.add(prop.setter.split()[0], "command", self._prop_setter(prop))
        for pattern, kind, attr in _BUILTIN_MARKS + type(self)._class_marks:
            table.add(pattern, kind, getattr(self, attr))
        return table

    def _prop_getter(self, prop: PropertySpec) -> Handler:
        def getter(call: Call) -> Any:
            call.nargs(0)
            value = self.props[prop.name]
            if prop.getter_format:
                try:
                    return prop.getter_format.format(value)
                except (ValueError, TypeError):
                    return prop.getter_format.format(int(value))
            return value

        return getter

    def _prop_setter(self, prop: PropertySpec) -> Handler:
        valid_upper = {str(v).upper(): v for v in prop.valid} if prop.valid is not None else None

        def setter(call: Call) -> None:
            call.nargs(1)
            value: Any
            if prop.type == "bool" or (
                prop.type == "int" and prop.valid is not None and set(prop.valid) == {0, 1}
            ):
                value = call.bool(0)
                if prop.type == "int":
                    value = int(value)
            elif prop.type == "int":
                value = call.int(0, _opt_int(prop.min), _opt_int(prop.max))
                if prop.valid is not None and value not in prop.valid:
                    raise ScpiError(-224, f"Illegal parameter value;{call.header} {value}")
            elif prop.type == "str":
                if prop.valid is not None:
                    value = call.choice(0, [str(v) for v in prop.valid])
                else:
                    value = call.string(0)
            else:
                default = prop.default if isinstance(prop.default, int | float) else None
                value = call.float(0, prop.unit, prop.min, prop.max, default)
                if valid_upper is not None and value not in prop.valid:  # type: ignore[operator]
                    raise ScpiError(-224, f"Illegal parameter value;{call.header} {value:g}")
            hook = getattr(self, f"on_{prop.name}", None)
            if hook is not None:
                hook(value)
            self.props[prop.name] = value

        return setter

    def _reset_props(self) -> None:
        for prop in self.spec.properties.values():
            self.props[prop.name] = prop.default

    # ----- public API

    def reset(self) -> None:
        """``*RST``: properties back to their defaults (subclasses extend)."""
        self._reset_props()

    def state(self) -> dict:
        """Settings snapshot (subclasses extend); a failed command must leave it unchanged."""
        return dict(self.props)

    def push_error(self, code: int, message: str | None = None) -> None:
        """Queue an error and set its ESR bit; the last slot becomes -350 on overflow."""
        text = message if message else ERROR_MESSAGES.get(code, "Device-specific error")
        text = text.replace('"', "'")
        self.esr |= _esr_bit(code)
        if len(self._errors) >= self._queue_size:
            self._errors[-1] = (-350, ERROR_MESSAGES[-350])
            self.esr |= ESR_DDE
        else:
            self._errors.append((int(code), text))

    def pop_error(self) -> tuple[int, str]:
        """Oldest queued error, or ``(0, "No error")``."""
        if self._errors:
            return self._errors.popleft()
        return 0, ERROR_MESSAGES[0]

    @property
    def error_count(self) -> int:
        return len(self._errors)

    def status_byte(self) -> int:
        stb = 0
        if self._errors:
            stb |= STB_EAV
        if self._pending_output:
            stb |= STB_MAV
        if self.esr & self.ese:
            stb |= STB_ESB
        if stb & self.sre & ~STB_MSS:
            stb |= STB_MSS
        return stb

    def handle(self, message: bytes) -> bytes | None:
        """Execute one program message; return the response (with termination) or None."""
        try:
            return self._handle(message)
        except Exception as exc:  # the core never lets anything escape
            try:
                self.push_error(-200, f"Execution error;internal {type(exc).__name__}")
            except Exception:
                self._errors.clear()
            return None

    def _handle(self, message: bytes) -> bytes | None:
        if isinstance(message, str):
            message = message.encode("latin-1", "replace")
        elif not isinstance(message, bytes):
            message = bytes(message)
        responses: list[bytes] = []
        path: list[str] = []
        self._pending_output = False
        for new_line, unit in _split_message(message):
            if new_line:
                path = []
            if isinstance(unit, _ParseError):
                self.push_error(unit.code, unit.text)
                path = []
                continue
            first = unit[0] if unit else b""
            if isinstance(first, tuple):
                self.push_error(-102, "Syntax error;missing header")
                continue
            first = first.lstrip(_WS)
            if not first and len(unit) == 1:
                continue  # empty message unit
            m = _WS_RE.search(first)
            cut = m.start() if m else len(first)
            header_b = first[:cut]
            rest = first[cut:].strip(_WS)
            pieces = unit[1:]
            args: list[str | bytes] = []
            if rest or (pieces and not isinstance(pieces[0], tuple)):
                args.append(rest.decode("latin-1"))
            for piece in pieces:
                args.append(
                    piece[0] if isinstance(piece, tuple) else piece.strip(_WS).decode("latin-1")
                )
            if "" in args:
                self.push_error(-102, "Syntax error;empty parameter")
                continue
            if len(header_b) > MAX_HEADER:
                self.push_error(-113, f"Undefined header;{header_b[:40].decode('latin-1')}...")
                continue
            try:
                header = header_b.decode("ascii")
            except UnicodeDecodeError:
                self.push_error(-102, "Syntax error;invalid character in header")
                continue
            if not _HEADER_OK.match(header):
                self.push_error(-102, f"Syntax error;{header[:40]}")
                continue
            if pieces and cut == len(first):
                self.push_error(-102, f"Syntax error;{header[:40]} needs a space before data")
                continue
            is_query = header.endswith("?")
            bare = header[:-1] if is_query else header
            if "?" in bare:
                self.push_error(-102, f"Syntax error;{header[:40]}")
                continue
            upper = bare.upper()
            found = None
            if upper.startswith("*"):
                found = self._table.find(upper, is_query)
            elif upper.startswith(":"):
                found = self._table.find(upper[1:], is_query)
                stem = upper[1:]
            else:
                stem = upper
                if path:
                    found = self._table.find(":".join([*path, upper]), is_query)
                    if found is not None:
                        stem = ":".join([*path, upper])
                if found is None:
                    found = self._table.find(upper, is_query)
            if found is None:
                self.push_error(-113, f"Undefined header;{header[:60]}")
                continue
            handler, suffixes, canonical = found
            if not upper.startswith("*"):
                path = stem.split(":")[:-1]
            call = Call(canonical, suffixes, args)
            try:
                result = handler(call)
            except ScpiError as exc:
                self.push_error(exc.code, exc.text)
                continue
            except Exception as exc:
                self.push_error(-200, f"Execution error;{type(exc).__name__}: {exc}"[:200])
                continue
            if is_query:
                responses.append(_format(result))
                self._pending_output = True
        self._pending_output = False
        if not responses:
            return None
        return b";".join(responses) + self.response_termination

    # ----- IEEE 488.2 common commands and SYSTem:ERRor

    @query("*IDN?")
    def _q_idn(self, call: Call) -> str:
        call.nargs(0)
        return self.idn

    @command("*RST")
    def _c_rst(self, call: Call) -> None:
        call.nargs(0)
        self.reset()

    @command("*CLS")
    def _c_cls(self, call: Call) -> None:
        call.nargs(0)
        self._errors.clear()
        self.esr = 0

    @command("*OPC")
    def _c_opc(self, call: Call) -> None:
        call.nargs(0)
        self.esr |= ESR_OPC

    @query("*OPC?")
    def _q_opc(self, call: Call) -> int:
        call.nargs(0)
        return 1

    @command("*WAI")
    def _c_wai(self, call: Call) -> None:
        call.nargs(0)

    @query("*ESR?")
    def _q_esr(self, call: Call) -> int:
        call.nargs(0)
        value = self.esr
        self.esr = 0
        return value

    @command("*ESE")
    def _c_ese(self, call: Call) -> None:
        call.nargs(1)
        self.ese = call.int(0, 0, 255)

    @query("*ESE?")
    def _q_ese(self, call: Call) -> int:
        call.nargs(0)
        return self.ese

    @command("*SRE")
    def _c_sre(self, call: Call) -> None:
        call.nargs(1)
        self.sre = call.int(0, 0, 255) & ~STB_MSS

    @query("*SRE?")
    def _q_sre(self, call: Call) -> int:
        call.nargs(0)
        return self.sre

    @query("*STB?")
    def _q_stb(self, call: Call) -> int:
        call.nargs(0)
        return self.status_byte()

    @query("*TST?")
    def _q_tst(self, call: Call) -> int:
        call.nargs(0)
        return 0

    @query("SYSTem:ERRor[:NEXT]?")
    def _q_err(self, call: Call) -> str:
        call.nargs(0)
        code, text = self.pop_error()
        return f'{code},"{text}"'

    @query("SYSTem:ERRor:COUNt?")
    def _q_err_count(self, call: Call) -> int:
        call.nargs(0)
        return len(self._errors)

    @query("SYSTem:ERRor:ALL?")
    def _q_err_all(self, call: Call) -> str:
        call.nargs(0)
        if not self._errors:
            return '0,"No error"'
        items = [f'{c},"{t}"' for c, t in self._errors]
        self._errors.clear()
        return ",".join(items)

    @query("SYSTem:VERSion?")
    def _q_version(self, call: Call) -> str:
        call.nargs(0)
        return "1999.0"


_COMMON_NAMES = {"*IDN", "*RST", "*CLS", "*OPC", "*WAI", "*ESR", "*ESE", "*SRE", "*STB", "*TST"}
_BUILTIN_MARKS: list[tuple[str, str, str]] = [
    (pattern, kind, attr)
    for attr, value in vars(ScpiDevice).items()
    for pattern, kind in getattr(value, "_scpi_marks", ())
]
# ScpiDevice itself is not a subclass: its marks are the builtins, not class marks.
ScpiDevice._class_marks = []


def _static_reply(reply: str | None) -> Handler:
    def handler(call: Call) -> str | None:
        return reply

    return handler


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)


# --------------------------------------------------------------------------- serial devices


class SerialDevice:
    """Base for non-SCPI line protocols (the DiCon-style serial switch).

    A subclass implements :meth:`handle_line` (one command line without termination ->
    reply text or None) and may raise any exception for a bad line; the reply is then
    :attr:`error_reply`. :meth:`handle` never raises.
    """

    error_reply: str = "ERR"

    def __init__(self, name: str = "", termination: str = "\r\n") -> None:
        self.name = name
        self.termination = termination
        self.response_termination: bytes = termination.encode("latin-1")

    def handle_line(self, line: str) -> str | None:
        """Execute one command line; override in subclasses."""
        raise ValueError(f"unknown command {line!r}")

    def reset(self) -> None:
        """Return to power-on settings (subclasses extend)."""

    def state(self) -> dict:
        """Settings snapshot (subclasses extend)."""
        return {}

    def handle(self, message: bytes) -> bytes | None:
        """Execute every line of ``message``; return the replies (terminated) or None."""
        try:
            text = bytes(message).decode("latin-1")
            replies: list[str] = []
            for raw in re.split(r"[\r\n]+", text):
                line = raw.strip()
                if not line:
                    continue
                try:
                    reply = self.handle_line(line)
                except Exception:
                    reply = self.error_reply
                if reply is not None:
                    replies.append(reply)
            if not replies:
                return None
            return "".join(r + self.termination for r in replies).encode("latin-1", "replace")
        except Exception:
            return (self.error_reply + self.termination).encode("latin-1", "replace")
