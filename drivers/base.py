"""Driver base: one open VISA resource, checked writes, block transfers, declarative properties.

A driver declares its settings PyMeasure-style, one line each::

    power_dbm = control("SOUR1:POW?", "SOUR1:POW %g", "Laser power",
                        validator=in_range(-10, 13), unit="dBm")

Validation runs before anything is sent, so an out-of-range set point never reaches the
instrument (``ValueError`` naming the property and its range). Every set command is followed
by ``SYST:ERR?`` until ``0,``: an instrument error raises :class:`InstrumentError` naming the
resource, the command and the instrument's text. The same code runs over ``@qkdsim``, over
TCP through pyvisa-py (``@py``) and over a vendor VISA.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, TextIO

import pyvisa
from pyvisa import constants

from drivers.ieee488 import BlockError, encode_block

__all__ = [
    "Instrument",
    "InstrumentError",
    "boolean",
    "control",
    "in_range",
    "in_set",
    "integer_in_range",
    "measurement",
    "parse_bool",
    "strict_bool",
]


class InstrumentError(RuntimeError):
    """An instrument refused a command (or did not answer it): names all that failed."""

    def __init__(self, resource: str, command: str, code: int | None, text: str) -> None:
        self.resource = resource
        self.command = command
        self.code = code
        self.text = text
        what = f"error {code}: {text}" if code is not None else text
        super().__init__(f"{resource}: {command!r} -> {what}")


# --------------------------------------------------------------------------- validators

Validator = Callable[[Any, str], Any]


def in_range(lo: float, hi: float) -> Validator:
    """A finite number within ``[lo, hi]`` (returned as float)."""

    def check(value: Any, name: str) -> float:
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: expected a number, got {value!r}") from None
        if not math.isfinite(v) or not lo <= v <= hi:
            raise ValueError(f"{name}: {value!r} out of range [{lo:g}, {hi:g}]")
        return v

    check.range = (lo, hi)  # type: ignore[attr-defined]
    return check


def integer_in_range(lo: int, hi: int) -> Validator:
    """An integer within ``[lo, hi]`` (a float with an integral value is accepted)."""

    def check(value: Any, name: str) -> int:
        if isinstance(value, bool):
            raise ValueError(f"{name}: expected an integer, got {value!r}")
        try:
            v = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: expected an integer, got {value!r}") from None
        if v != value or not lo <= v <= hi:
            raise ValueError(f"{name}: {value!r} out of range [{lo}, {hi}] (integers)")
        return v

    check.range = (lo, hi)  # type: ignore[attr-defined]
    return check


def in_set(values: Sequence[Any]) -> Validator:
    """One of ``values`` (strings compared case-insensitively, canonical entry returned)."""

    def check(value: Any, name: str) -> Any:
        for v in values:
            if v == value or (
                isinstance(v, str) and isinstance(value, str) and v.upper() == value.upper()
            ):
                return v
        raise ValueError(f"{name}: {value!r} not one of {list(values)}")

    return check


def strict_bool(value: Any, name: str) -> bool:
    """``True``/``False`` (or 1/0) only."""
    if isinstance(value, bool):
        return value
    if value in (0, 1):
        return bool(value)
    raise ValueError(f"{name}: expected True or False, got {value!r}")


def parse_bool(reply: str) -> bool:
    """An SCPI boolean reply (``1``/``0``/``ON``/``OFF``, also ``+1``)."""
    text = reply.strip().upper()
    if text in ("ON", "TRUE"):
        return True
    if text in ("OFF", "FALSE"):
        return False
    return float(text) != 0.0


def _on_off(value: bool) -> str:
    return "ON" if value else "OFF"


# --------------------------------------------------------------------------- descriptors


class control:  # noqa: N801 - named like a function, as in PyMeasure
    """A readable and (optionally) writable instrument setting.

    ``get_cmd`` is a query; its reply goes through ``cast`` (float by default).
    ``set_cmd`` is a ``%``-format of the validated value (after ``encode``).
    """

    def __init__(
        self,
        get_cmd: str | None,
        set_cmd: str | None,
        doc: str = "",
        *,
        validator: Validator | None = None,
        unit: str = "",
        cast: Callable[[str], Any] = float,
        encode: Callable[[Any], Any] | None = None,
    ) -> None:
        self.get_cmd = get_cmd
        self.set_cmd = set_cmd
        self.doc = doc
        self.validator = validator
        self.unit = unit
        self.cast = cast
        self.encode = encode
        self.name = ""
        self.__doc__ = f"{doc} [{unit}]" if unit else doc

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Instrument | None, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        if self.get_cmd is None:
            raise AttributeError(f"{type(obj).__name__}.{self.name} is write-only")
        reply = obj.query(self.get_cmd)
        try:
            return self.cast(reply)
        except (TypeError, ValueError) as exc:
            raise InstrumentError(
                obj.resource_name, self.get_cmd, None, f"unexpected reply {reply!r} ({exc})"
            ) from None

    def __set__(self, obj: Instrument, value: Any) -> None:
        if self.set_cmd is None:
            raise AttributeError(f"{type(obj).__name__}.{self.name} is read-only")
        label = f"{type(obj).__name__}.{self.name}"
        if self.validator is not None:
            value = self.validator(value, label)
        if self.encode is not None:
            value = self.encode(value)
        obj.write(self.set_cmd % value)


def measurement(get_cmd: str, doc: str = "", *, unit: str = "", cast: Callable = float) -> control:
    """A read-only value (a reading, not a setting)."""
    return control(get_cmd, None, doc, unit=unit, cast=cast)


def boolean(get_cmd: str, set_cmd: str, doc: str = "") -> control:
    """An ON/OFF setting exposed as ``bool`` (``set_cmd`` has one ``%s``)."""
    return control(get_cmd, set_cmd, doc, validator=strict_bool, cast=parse_bool, encode=_on_off)


# --------------------------------------------------------------------------- the instrument


def _parse_error(reply: str) -> tuple[int, str]:
    head, _, text = reply.strip().partition(",")
    try:
        code = int(float(head))
    except ValueError:
        return -1, reply.strip()
    return code, text.strip().strip('"')


class Instrument:
    """One instrument on a VISA resource (a resource string or an open pyvisa resource).

    Parameters
    ----------
    resource:
        A VISA resource string (opened with ``rm``, or the default ResourceManager, which
        honours ``$PYVISA_LIBRARY``) or an already open message-based pyvisa resource.
    rm:
        The ResourceManager to open a string resource with (e.g. ``ResourceManager("@qkdsim")``).
    timeout_ms:
        I/O timeout; long operations (acquisitions, scans) wait with ``*OPC?``.
    log:
        Path of a text file to which every SCPI exchange is appended (blocks summarised).
    check_errors:
        Query ``SYST:ERR?`` after every set command (on by default).
    """

    role: ClassVar[str] = ""
    read_termination: ClassVar[str] = "\n"
    write_termination: ClassVar[str] = "\n"
    #: Append ``;*OPC?`` to queries so a refused query fails fast (see :meth:`query`).
    opc_guard: ClassVar[bool] = True

    def __init__(
        self,
        resource: str | Any,
        rm: pyvisa.ResourceManager | None = None,
        *,
        timeout_ms: int = 30_000,
        log: str | Path | None = None,
        check_errors: bool = True,
    ) -> None:
        self._owns = isinstance(resource, str)
        if isinstance(resource, str):
            manager = rm if rm is not None else pyvisa.ResourceManager()
            try:
                res = manager.open_resource(resource)
            except pyvisa.errors.VisaIOError as exc:
                raise InstrumentError(resource, "open", None, str(exc)) from exc
        else:
            res = resource
        self.resource = res
        self.resource_name: str = str(getattr(res, "resource_name", resource))
        res.read_termination = self.read_termination
        res.write_termination = self.write_termination
        res.timeout = timeout_ms
        res.chunk_size = max(int(getattr(res, "chunk_size", 0) or 0), 1 << 20)
        self.check_after_set = check_errors
        self._log: TextIO | None = open(log, "a", encoding="utf-8") if log else None  # noqa: SIM115

    # ----- lifetime

    def close(self) -> None:
        """Close the resource if this driver opened it, and the traffic log."""
        if self._owns:
            with contextlib.suppress(Exception):
                self.resource.close()
            self._owns = False
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Instrument:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.resource_name!r})"

    # ----- traffic

    def _trace(self, direction: str, text: str) -> None:
        if self._log is not None:
            self._log.write(f"{time.time():.6f} {self.resource_name} {direction} {text}\n")
            self._log.flush()

    def write(self, command: str, check: bool | None = None) -> None:
        """Send a command; then check the error queue (unless ``check`` is False)."""
        self._trace(">", command)
        try:
            self.resource.write(command)
        except pyvisa.errors.VisaIOError as exc:
            raise InstrumentError(self.resource_name, command, None, str(exc)) from exc
        if self.check_after_set if check is None else check:
            self.check_errors(command)

    def query(self, command: str) -> str:
        """Send a query and return its reply, stripped; a refused query raises.

        With :attr:`opc_guard` the query goes out as ``<command>;*OPC?``: the instrument
        always answers (``<value>;1``, or only ``1`` if it refused the query), so a refused
        query raises at once with the instrument's error instead of waiting for a timeout.
        """
        self._trace(">", command)
        wire = f"{command};*OPC?" if self.opc_guard else command
        try:
            reply = self.resource.query(wire)
        except pyvisa.errors.VisaIOError as exc:
            self._raise_pending(command, str(exc))
            raise  # not reached
        reply = reply.strip()
        if self.opc_guard:
            value, sep, _ = reply.rpartition(";")
            if not sep:
                self._raise_pending(command, f"no reply (instrument answered {reply!r})")
            reply = value.strip()
        self._trace("<", reply)
        return reply

    def _raise_pending(self, command: str, fallback: str) -> None:
        """After a failed exchange: raise the instrument's own error if it has one."""
        errors: list[tuple[int, str]] = []
        with contextlib.suppress(Exception):
            errors = self.read_errors()
        errors = [e for e in errors if e[0] not in (-410, -420)] or errors
        if errors:
            code, text = errors[0]
            raise InstrumentError(self.resource_name, command, code, text)
        raise InstrumentError(self.resource_name, command, None, fallback)

    def read_errors(self, limit: int = 64) -> list[tuple[int, str]]:
        """Drain the error queue: ``[(code, text), ...]`` (empty if no error)."""
        found: list[tuple[int, str]] = []
        for _ in range(limit):
            reply = self.resource.query("SYST:ERR?")
            self._trace("<", f"SYST:ERR? -> {reply.strip()}")
            code, text = _parse_error(reply)
            if code == 0:
                break
            found.append((code, text))
        return found

    def check_errors(self, command: str = "") -> None:
        """Read ``SYST:ERR?`` until ``0,``; raise :class:`InstrumentError` for the first error."""
        try:
            errors = self.read_errors()
        except pyvisa.errors.VisaIOError as exc:
            raise InstrumentError(self.resource_name, "SYST:ERR?", None, str(exc)) from exc
        if errors:
            code, text = errors[0]
            more = f" (+{len(errors) - 1} more: {errors[1:]})" if len(errors) > 1 else ""
            raise InstrumentError(self.resource_name, command, code, text + more)

    def query_block(self, command: str) -> bytes:
        """Send a query whose reply is one IEEE 488.2 definite-length block; return the payload.

        The termination character is disabled while the block is read (its payload may hold
        any byte), and the block is read by exact counts: portable to every VISA.
        """
        self._trace(">", command)
        res = self.resource
        term = self.read_termination.encode()
        refused = False
        not_block = b""
        payload = b""
        try:
            res.write(f"{command};*OPC?" if self.opc_guard else command)
            with self._no_termchar():
                head = bytes(res.read_bytes(2))
                if self.opc_guard and head == b"1" + term[:1]:
                    if len(term) > 1:
                        res.read_bytes(len(term) - 1)
                    refused = True
                elif head[:1] != b"#" or not head[1:2].isdigit() or head[1:2] == b"0":
                    not_block = head
                else:
                    n = int(head[1:2])
                    size = int(bytes(res.read_bytes(n)))
                    payload = bytes(res.read_bytes(size)) if size else b""
                    expected = (b";1" if self.opc_guard else b"") + term
                    if expected:
                        tail = bytes(res.read_bytes(len(expected)))
                        if tail != expected:
                            raise BlockError(f"block followed by {tail!r}, expected {expected!r}")
            if not_block:  # read the rest of the text reply, with the termination back on
                rest = b""
                with contextlib.suppress(Exception):
                    rest = bytes(res.read_raw())
                shown = (not_block + rest)[:40]
                raise BlockError(f"reply is not a definite-length block: {shown!r}")
        except pyvisa.errors.VisaIOError as exc:
            self._raise_pending(command, str(exc))
            raise  # not reached
        except (BlockError, ValueError) as exc:
            with contextlib.suppress(Exception):
                res.clear()
            raise InstrumentError(self.resource_name, command, None, f"bad block: {exc}") from exc
        if refused:  # (the termination character is back on for SYST:ERR?)
            self._raise_pending(command, "no reply (instrument answered only *OPC?)")
        self._trace("<", f"<block {len(payload)} bytes>")
        return payload

    def write_block(self, command: str, payload: bytes, check: bool | None = None) -> None:
        """Send ``command`` followed by ``payload`` as a definite-length block."""
        prefix = command.rstrip()
        sep = b"" if prefix.endswith(",") else b" "
        self._trace(">", f"{prefix}{sep.decode()}<block {len(payload)} bytes>")
        message = b"".join(
            (prefix.encode("ascii"), sep, encode_block(payload), self.write_termination.encode())
        )
        try:
            self.resource.write_raw(message)
        except pyvisa.errors.VisaIOError as exc:
            raise InstrumentError(self.resource_name, prefix, None, str(exc)) from exc
        if self.check_after_set if check is None else check:
            self.check_errors(prefix)

    @contextlib.contextmanager
    def _no_termchar(self) -> Iterator[None]:
        res = self.resource
        res.set_visa_attribute(constants.ResourceAttribute.termchar_enabled, False)
        try:
            yield
        finally:
            res.set_visa_attribute(constants.ResourceAttribute.termchar_enabled, True)

    # ----- common

    @property
    def idn(self) -> str:
        """The ``*IDN?`` reply (manufacturer, model, serial, firmware)."""
        return self.query("*IDN?")

    def reset(self) -> None:
        """``*RST`` then ``*CLS``: power-on settings and an empty error queue."""
        self.write("*RST", check=False)
        self.write("*CLS", check=False)
        self.wait()

    def clear_status(self) -> None:
        self.write("*CLS", check=False)

    def wait(self) -> None:
        """Block until every pending operation has completed (``*OPC?``)."""
        self.query("*OPC?")

    @classmethod
    def controls(cls) -> dict[str, control]:
        """Every declared property of this driver class, by name."""
        found: dict[str, control] = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                if isinstance(value, control):
                    found[name] = value
        return found

    def snapshot(self) -> dict[str, Any]:
        """Every declared readable property, read from the instrument now.

        Settings must read back (an error raises); a reading the instrument cannot give
        at this moment (e.g. an OTDR result before any scan) is recorded as ``None``.
        """
        out: dict[str, Any] = {"idn": self.idn}
        for name, ctl in self.controls().items():
            if ctl.get_cmd is None:
                continue
            if ctl.set_cmd is not None:
                out[name] = getattr(self, name)
                continue
            try:
                out[name] = getattr(self, name)
            except InstrumentError:
                out[name] = None
        return out
