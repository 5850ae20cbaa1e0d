"""Optical switch firmware: SCPI 1xN (Keysight N7731A-style) and DiCon-style serial 1xN.

Both drive the world's single switch: port ``p`` connects the transmitter (and the OTDR,
WDM-coupled before the switch) to link ``p``.

SCPI: ``ROUT1:CHAN1 A,<port>``, ``ROUT1:CHAN1?`` -> ``A,<port>``, ``ROUT1:CONF?`` ->
``1x<N>``.

Serial (115200 8N1, CR LF): ``I1 <n>`` -> ``OK``, ``I1?`` -> ``<n>``, ``CF?`` -> ``1x<N>``,
``ID?`` -> identification; anything else (or a port out of range) -> ``ERR``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from emulator.scpi import Call, DeviceSpec, ScpiDevice, ScpiError, SerialDevice, command, query

if TYPE_CHECKING:
    from emulator.world import World

SWITCH_TIME_S = 0.01
"""Virtual time one switching operation takes (MEMS)."""


class OpticalSwitch(ScpiDevice):
    """SCPI 1xN switch firmware."""

    def __init__(self, spec: DeviceSpec, world: World, name: str = "") -> None:
        self.world = world
        super().__init__(spec, name)

    @property
    def _hw(self):  # type: ignore[no-untyped-def]
        assert self.world.switch is not None
        return self.world.switch

    def reset(self) -> None:
        super().reset()
        self._hw.route = 1

    def state(self) -> dict:
        s = super().state()
        s["route"] = self._hw.route
        return s

    def _check(self, call: Call) -> None:
        if call.suffixes != (1, 1):
            raise ScpiError(-114, "Header suffix out of range;ROUTe1:CHANnel1 only")

    @command("ROUTe#:CHANnel#")
    def _route(self, call: Call) -> None:
        self._check(call)
        call.nargs(2)
        call.choice(0, ["A"])
        port = call.int(1, 1, self._hw.ports)
        self._hw.route = port
        self.world.advance(SWITCH_TIME_S)

    @query("ROUTe#:CHANnel#?")
    def _route_q(self, call: Call) -> str:
        self._check(call)
        call.nargs(0)
        return f"A,{self._hw.route}"

    @query("ROUTe#:CONFiguration?")
    def _conf(self, call: Call) -> str:
        if call.suffixes != (1,):
            raise ScpiError(-114, "Header suffix out of range;ROUTe1 only")
        call.nargs(0)
        return f"1x{self._hw.ports}"


_SET = re.compile(r"I1\s+(\d{1,3})\Z", re.IGNORECASE)


class SerialSwitch(SerialDevice):
    """DiCon-style serial 1xN MEMS switch firmware."""

    idn = "cvqkd-hil,DiCon-style MEMS switch 1xN (emulated),SN0001,0.1.0"

    def __init__(self, world: World, name: str = "ASRL1::INSTR") -> None:
        super().__init__(name, "\r\n")
        self.world = world

    @property
    def _hw(self):  # type: ignore[no-untyped-def]
        assert self.world.switch is not None
        return self.world.switch

    def reset(self) -> None:
        self._hw.route = 1

    def state(self) -> dict:
        return {"route": self._hw.route}

    def handle_line(self, line: str) -> str | None:
        key = line.strip().upper()
        if key == "I1?":
            return str(self._hw.route)
        if key == "CF?":
            return f"1x{self._hw.ports}"
        if key == "ID?":
            return self.idn
        m = _SET.match(line.strip())
        if m:
            port = int(m.group(1))
            if not 1 <= port <= self._hw.ports:
                raise ValueError(f"port {port} out of range 1..{self._hw.ports}")
            self._hw.route = port
            self.world.advance(SWITCH_TIME_S)
            return "OK"
        raise ValueError(f"unknown command {line!r}")
