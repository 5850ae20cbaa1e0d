"""Optical switches: Keysight N7731A-style SCPI 1xN and DiCon-style MEMS 1xN on a serial line.

Both drivers offer the same interface: ``port`` (read/write), ``route(port)``, ``ports``,
``idn``, ``snapshot()``, context manager.

SCPI: ``ROUT1:CHAN1 A,<port>``, ``ROUT1:CHAN1?`` (``A,<port>``), ``ROUT1:CONF?``.
Serial (115200 8N1, CR LF): ``I1 <n>`` (select output n; replies ``OK``, or ``ERR`` for a
bad command), ``I1?``, ``CF?`` (configuration, e.g. ``1x2``), ``ID?``. The serial driver
uses pyserial (a device path or any pyserial URL such as ``socket://127.0.0.1:5025``) or,
for the ``@qkdsim`` backend, an ``ASRL`` pyvisa resource.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO, TypeVar

import pyvisa

from drivers.base import Instrument, InstrumentError

__all__ = ["DiconSwitch", "OpticalSwitch", "SerialSwitch", "parse_ports"]

T = TypeVar("T")


def parse_ports(reply: str) -> list[int]:
    """Output ports from a configuration reply: ``1x4``, ``4``, ``1,2,3,4`` or ``A,1,2``."""
    text = reply.strip().strip('"')
    m = re.search(r"(\d+)\s*[xX]\s*(\d+)", text)
    if m:
        return list(range(1, int(m.group(2)) + 1))
    numbers = [int(n) for n in re.findall(r"\d+", text)]
    if len(numbers) == 1:
        return list(range(1, numbers[0] + 1))
    if numbers:
        return sorted(set(numbers))
    raise ValueError(f"cannot read the port count from {reply!r}")


def _last_int(reply: str) -> int:
    numbers = re.findall(r"-?\d+", reply)
    if not numbers:
        raise ValueError(f"no port number in {reply!r}")
    return int(numbers[-1])


def _parsed(resource: str, command: str, reply: str, parse: Callable[[str], T]) -> T:
    """``parse(reply)``; a reply that does not parse raises ``InstrumentError`` naming it."""
    try:
        return parse(reply)
    except ValueError as exc:
        raise InstrumentError(resource, command, None, f"{exc} (reply {reply!r})") from None


class OpticalSwitch(Instrument):
    """SCPI 1xN switch: input A routed to one of the outputs 1..N."""

    role = "switch"

    @property
    def ports(self) -> list[int]:
        """The output ports this switch has (from ``ROUT1:CONF?``)."""
        return _parsed(self.resource_name, "ROUT1:CONF?", self.query("ROUT1:CONF?"), parse_ports)

    @property
    def port(self) -> int:
        """The output port input A is routed to."""
        return _parsed(self.resource_name, "ROUT1:CHAN1?", self.query("ROUT1:CHAN1?"), _last_int)

    @port.setter
    def port(self, value: int) -> None:
        self.route(value)

    def route(self, port: int) -> None:
        """Route input A to output ``port`` (validated against ``ports`` before sending)."""
        valid = self.ports
        if isinstance(port, bool) or not isinstance(port, int) or port not in valid:
            raise ValueError(f"OpticalSwitch.port: {port!r} not one of {valid}")
        self.write(f"ROUT1:CHAN1 A,{port}")

    def snapshot(self) -> dict[str, Any]:
        return {"idn": self.idn, "ports": self.ports, "port": self.port}


class DiconSwitch:
    """DiCon-style MEMS 1xN switch on a serial line (pyserial), same interface as SCPI."""

    role = "switch"
    termination = "\r\n"

    def __init__(
        self,
        port: str | Any,
        rm: pyvisa.ResourceManager | None = None,
        *,
        baudrate: int = 115200,
        timeout_ms: int = 2000,
        log: str | Path | None = None,
    ) -> None:
        timeout_s = timeout_ms / 1000.0
        self._log: TextIO | None = open(log, "a", encoding="utf-8") if log else None  # noqa: SIM115
        self._visa = None
        self._serial = None
        self._owns = isinstance(port, str)
        if isinstance(port, str) and port.upper().startswith("ASRL"):
            manager = rm if rm is not None else pyvisa.ResourceManager()
            port = manager.open_resource(port)
        if isinstance(port, str):
            import serial

            self.resource_name = port
            try:
                self._serial = serial.serial_for_url(
                    port, baudrate=baudrate, bytesize=8, parity="N", stopbits=1, timeout=timeout_s
                )
            except (serial.SerialException, ValueError) as exc:
                raise InstrumentError(port, "open", None, str(exc)) from exc
        elif hasattr(port, "query") and hasattr(port, "write"):  # an open pyvisa resource
            self._visa = port
            self.resource_name = str(getattr(port, "resource_name", port))
            port.read_termination = self.termination
            port.write_termination = self.termination
            port.timeout = int(timeout_s * 1000)
            with contextlib.suppress(AttributeError, pyvisa.errors.VisaIOError):
                port.baud_rate = baudrate
        else:  # an open pyserial port
            self._serial = port
            self.resource_name = str(getattr(port, "port", port))

    # ----- transport

    def _trace(self, direction: str, text: str) -> None:
        if self._log is not None:
            self._log.write(f"{time.time():.6f} {self.resource_name} {direction} {text}\n")
            self._log.flush()

    def _send(self, line: str) -> None:
        self._trace(">", line)
        if self._visa is not None:
            self._visa.write(line)
        else:
            assert self._serial is not None
            self._serial.write((line + self.termination).encode("ascii"))
            self._serial.flush()

    def _ask(self, line: str) -> str:
        try:
            if self._visa is not None:
                self._trace(">", line)
                reply = str(self._visa.query(line)).strip()
                self._trace("<", reply)
                return reply
            assert self._serial is not None
            self._send(line)
            raw = self._serial.read_until(b"\n")
        except (pyvisa.errors.VisaIOError, OSError) as exc:
            raise InstrumentError(self.resource_name, line, None, str(exc)) from exc
        if not raw.endswith(b"\n"):
            raise InstrumentError(self.resource_name, line, None, "no reply (timeout)")
        reply = raw.decode("ascii", "replace").strip()
        self._trace("<", reply)
        return reply

    def close(self) -> None:
        if self._owns:
            with contextlib.suppress(Exception):
                if self._visa is not None:
                    self._visa.close()
                elif self._serial is not None:
                    self._serial.close()
            self._owns = False
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> DiconSwitch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DiconSwitch({self.resource_name!r})"

    # ----- interface

    @property
    def idn(self) -> str:
        return self._ask("ID?")

    @property
    def ports(self) -> list[int]:
        return _parsed(self.resource_name, "CF?", self._ask("CF?"), parse_ports)

    @property
    def port(self) -> int:
        return _parsed(self.resource_name, "I1?", self._ask("I1?"), _last_int)

    @port.setter
    def port(self, value: int) -> None:
        self.route(value)

    def route(self, port: int) -> None:
        """Select output ``port``; validated before sending, verified by reading it back."""
        valid = self.ports
        if isinstance(port, bool) or not isinstance(port, int) or port not in valid:
            raise ValueError(f"DiconSwitch.port: {port!r} not one of {valid}")
        reply = self._ask(f"I1 {port}")
        if reply.upper() != "OK":
            raise InstrumentError(
                self.resource_name, f"I1 {port}", None, f"switch replied {reply!r}"
            )
        now = self.port
        if now != port:
            raise InstrumentError(self.resource_name, f"I1 {port}", None, f"switch reports {now}")

    def snapshot(self) -> dict[str, Any]:
        return {"idn": self.idn, "ports": self.ports, "port": self.port}


SerialSwitch = DiconSwitch
"""Alias: the serial (DiCon-style) switch driver under its role-neutral name."""
