"""The ``@qkdsim`` VISA backend: pyvisa-sim's library with every message routed to firmware.

``pyvisa.ResourceManager("@qkdsim")`` opens the default emulated bench
(:meth:`emulator.world.World.default`); ``ResourceManager("bench.yaml@qkdsim")`` builds the
world from a bench file's ``emulator:`` section (or a bare world config); tests use
:func:`resource_manager` with a world of their own and :func:`world_of` to reach it back.

Sessions are pyvisa-sim's own session classes (so VISA attributes, timeouts and
terminations behave as in pyvisa-sim) with ``read``/``write`` replaced: a write is framed
into program messages block-aware (a ``\\n`` inside an IEEE 488.2 block never ends a
message) and handed whole to the firmware; a read returns whole chunks of the response,
stopping at the termination character only outside blocks, so multi-megabyte transfers
move at memory speed instead of pyvisa-sim's byte-per-call path.

Library-path forms: ``""`` (default world; seed from ``$QKDSIM_SEED`` if set),
``"seed=N"`` (default world with seed N), ``"<file>.yaml"`` (bench or world file; a plain
pyvisa-sim spec file also works, served by the stock pyvisa-sim devices).
"""

from __future__ import annotations

import itertools
import os
import re
import threading
from collections import deque
from collections.abc import Mapping
from typing import Any, Protocol

import pyvisa
import yaml
from pyvisa import constants, errors, rname
from pyvisa.highlevel import VisaLibraryBase
from pyvisa.util import LibraryPath
from pyvisa_sim import parser as sim_parser
from pyvisa_sim.highlevel import SimVisaLibrary
from pyvisa_sim.sessions.session import Session as SimSession

from drivers.ieee488 import BlockError, block_header_length

__all__ = [
    "Firmware",
    "InputFramer",
    "OutputQueue",
    "QkdSimVisaLibrary",
    "load_world",
    "resource_manager",
    "world_of",
]


class Firmware(Protocol):
    """What the backend needs from an emulated instrument (ScpiDevice or SerialDevice)."""

    def handle(self, message: bytes) -> bytes | None: ...


class WorldLike(Protocol):
    def instruments(self) -> Mapping[str, Firmware]: ...


# --------------------------------------------------------------------------- framing

_FRAME_RE = re.compile(rb"[#\n]")


class InputFramer:
    """Split a byte stream into program messages ending in ``\\n``, block-aware.

    A definite-length block (``#<n><len><bytes>``) is skipped whole, so its payload may
    hold any byte. Bytes already scanned are not scanned again (a 16 MB block costs one
    header parse however it is chunked).
    """

    __slots__ = ("_block_end", "_buf", "_scan")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._scan = 0
        self._block_end = 0

    @property
    def pending(self) -> int:
        """Bytes held for an incomplete message."""
        return len(self._buf)

    @property
    def in_block(self) -> bool:
        """True while waiting for the rest of a block payload."""
        return self._block_end > 0

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add bytes; return every message completed by them (each with its ``\\n``)."""
        out: list[bytes] = []
        if self._buf:
            self._buf += data
            src: bytes | bytearray = self._buf
        else:
            src = data if isinstance(data, bytes) else bytes(data)
        n = len(src)
        start = 0  # first byte of the message being framed
        scan = self._scan
        block_end = self._block_end
        while True:
            if block_end:
                if n < block_end:
                    break
                scan = block_end
                block_end = 0
            m = _FRAME_RE.search(src, scan)
            if m is None:
                scan = n
                break
            k = m.start()
            if src[k] == 0x0A:
                if start == 0 and k + 1 == n and isinstance(src, bytes):
                    out.append(src)
                else:
                    out.append(bytes(src[start : k + 1]))
                start = scan = k + 1
                continue
            if k + 1 >= n:
                scan = k
                break
            d = src[k + 1]
            if not 0x31 <= d <= 0x39:
                scan = k + 1
                continue
            if k + 2 + (d - 0x30) > n:
                scan = k
                break
            try:
                hlen, size = block_header_length(src, k)
            except BlockError:
                scan = k + 1
                continue
            block_end = k + hlen + size
        # keep the unfinished tail, with scan positions relative to it
        if src is self._buf:
            del self._buf[:start]
        else:
            self._buf = bytearray(src[start:]) if start < n else bytearray()
        self._scan = max(0, scan - start)
        self._block_end = max(0, block_end - start) if block_end else 0
        return out

    def flush(self) -> bytes | None:
        """The pending bytes as one message (END received), unless a block is incomplete."""
        if not self._buf or self._block_end:
            return None
        msg = bytes(self._buf)
        self._buf.clear()
        self._scan = 0
        return msg

    def clear(self) -> None:
        self._buf.clear()
        self._scan = 0
        self._block_end = 0


def termination_points(response: bytes, termchar: int = 0x0A) -> list[int]:
    """Indices of ``termchar`` in ``response`` that lie outside definite-length blocks."""
    points: list[int] = []
    pattern = re.compile(b"[#" + re.escape(bytes([termchar])) + b"]")
    pos = 0
    n = len(response)
    while True:
        m = pattern.search(response, pos)
        if m is None:
            return points
        k = m.start()
        if response[k] == termchar:
            points.append(k)
            pos = k + 1
            continue
        try:
            hlen, size = block_header_length(response, k)
        except BlockError:
            pos = k + 1
            continue
        pos = min(n, k + hlen + size)


class OutputQueue:
    """Responses waiting to be read, each read in whole chunks (END at each response's end)."""

    __slots__ = ("_items", "_pos", "_stops")

    def __init__(self) -> None:
        self._items: deque[memoryview] = deque()
        self._stops: deque[list[int]] = deque()
        self._pos = 0

    def __bool__(self) -> bool:
        return bool(self._items)

    def push(self, response: bytes) -> None:
        if response:
            self._items.append(memoryview(response))
            self._stops.append([])  # computed lazily for the termchar actually in use

    def clear(self) -> None:
        self._items.clear()
        self._stops.clear()
        self._pos = 0

    def read(self, count: int, termchar: int | None) -> tuple[bytes, bool, bool]:
        """Up to ``count`` bytes: ``(data, end, termchar_hit)``."""
        item = self._items[0]
        start = self._pos
        stop = min(len(item), start + max(1, count))
        hit = False
        if termchar is not None:
            stops = self._stops[0]
            if not stops:
                stops.extend(termination_points(item.obj, termchar))  # type: ignore[arg-type]
                stops.append(-1)  # sentinel: computed
            for p in stops:
                if start <= p < stop:
                    stop = p + 1
                    hit = True
                    break
        data = bytes(item[start:stop])
        if stop >= len(item):
            self._items.popleft()
            self._stops.popleft()
            self._pos = 0
            return data, True, hit
        self._pos = stop
        return data, False, hit


class _Port:
    """One instrument as the library sees it: its firmware and the world's lock."""

    def __init__(self, firmware: Firmware, lock: threading.RLock) -> None:
        self.firmware = firmware
        self.lock = lock


# --------------------------------------------------------------------------- sessions


class _FirmwareSessionMixin:
    """Replaces pyvisa-sim's byte-per-call read/write by whole-message transfers."""

    port: _Port
    framer: InputFramer
    output: OutputQueue
    get_attribute: Any

    def _init_port(self, port: _Port) -> None:
        self.port = port
        self.framer = InputFramer()
        self.output = OutputQueue()

    def _deliver(self, message: bytes) -> None:
        fw = self.port.firmware
        with self.port.lock:
            if self.output:
                # IEEE 488.2 6.3.2.3: a new message while a response is unread interrupts it.
                self.output.clear()
                push = getattr(fw, "push_error", None)
                if push is not None:
                    push(-410)
            response = fw.handle(message)
        if response:
            self.output.push(response)

    def write(self, data: bytes) -> tuple[int, constants.StatusCode]:
        for message in self.framer.feed(data):
            self._deliver(message)
        send_end, _ = self.get_attribute(constants.ResourceAttribute.send_end_enabled)
        itype, _ = self.get_attribute(constants.ResourceAttribute.interface_type)
        if send_end and itype != constants.InterfaceType.asrl:
            # END on the last byte completes a message even without a newline
            rest = self.framer.flush()
            if rest is not None and rest.strip():
                self._deliver(rest)
        return len(data), constants.StatusCode.success

    def read(self, count: int) -> tuple[bytes, constants.StatusCode]:
        if not self.output:
            # Nothing to read: a real instrument would time out (IEEE 488.2: -420).
            push = getattr(self.port.firmware, "push_error", None)
            if push is not None:
                with self.port.lock:
                    push(-420)
            return b"", constants.StatusCode.error_timeout
        enabled, _ = self.get_attribute(constants.ResourceAttribute.termchar_enabled)
        termchar: int | None = None
        if enabled:
            termchar, _ = self.get_attribute(constants.ResourceAttribute.termchar)
        data, end, hit = self.output.read(count, termchar)
        if end:
            suppress, _ = self.get_attribute(constants.ResourceAttribute.suppress_end_enabled)
            if not suppress:
                return data, constants.StatusCode.success
        if hit:
            return data, constants.StatusCode.success_termination_character_read
        return data, constants.StatusCode.success_max_count_read

    def clear(self) -> constants.StatusCode:
        self.output.clear()
        self.framer.clear()
        return constants.StatusCode.success

    def flush(self, mask: Any) -> constants.StatusCode:
        return constants.StatusCode.success


_SESSION_CLASSES: dict[type, type] = {}


def _session_class(base: type) -> type:
    cls = _SESSION_CLASSES.get(base)
    if cls is None:
        cls = type(f"QkdSim{base.__name__}", (_FirmwareSessionMixin, base), {})
        cls.session_type = base.session_type  # type: ignore[attr-defined]
        _SESSION_CLASSES[base] = cls
    return cls


# --------------------------------------------------------------------------- worlds

_WORLDS: dict[str, Any] = {}
_COUNTER = itertools.count(1)
_WORLD_PREFIX = "qkdsim-world:"


_WORLD_KEYS = {"seed", "transmitter", "switch", "otdr", "links", "scenario"}
"""Top-level keys of a bare world config (docs/emulator.md)."""


def _config_from_file(path: str) -> tuple[dict[str, Any] | None, bool]:
    """``(world config, is_plain_pyvisa_sim_spec)`` of a YAML file."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise ValueError(f"@qkdsim: cannot read bench/world file {path!r}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ValueError(f"@qkdsim: {path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"@qkdsim: {path}: expected a mapping at the top level")
    if "emulator" in data:
        section = data["emulator"]
        if not isinstance(section, dict):
            raise ValueError(f"@qkdsim: {path}: 'emulator' must be a mapping")
        return section, False
    if "devices" in data and "spec" in data:
        return None, True
    if not set(data) <= _WORLD_KEYS:
        raise ValueError(
            f"@qkdsim: {path} has no 'emulator:' section and is not a world config "
            "(a bench file of real instruments cannot be emulated)"
        )
    return data, False


def load_world(spec: str) -> Any:
    """Build the world a library path stands for (see the module docstring).

    Returns None for a plain pyvisa-sim spec file (served by stock pyvisa-sim devices).
    """
    text = str(spec).strip()
    if text not in ("", "unset", "default") and not text.startswith("seed="):
        config, plain = _config_from_file(text)
        if plain:
            return None
    from emulator.world import World

    if text in ("", "unset", "default"):
        seed_env = os.environ.get("QKDSIM_SEED")
        return World.default(seed=int(seed_env) if seed_env else None)
    if text.startswith("seed="):
        try:
            seed = int(text[5:])
        except ValueError:
            raise ValueError(f"@qkdsim: bad seed in {text!r} (expected seed=<int>)") from None
        return World.default(seed=seed)
    seed = config.get("seed") if isinstance(config, dict) else None
    return World.from_config(config, seed=seed)


class QkdSimVisaLibrary(SimVisaLibrary):
    """pyvisa-sim's library whose resources are the firmware objects of one world."""

    world: Any

    @staticmethod
    def get_library_paths() -> tuple[LibraryPath, ...]:
        return (LibraryPath("default"),)

    @staticmethod
    def get_debug_info() -> dict[str, str]:
        info = dict(SimVisaLibrary.get_debug_info())
        info["Backend"] = "cvqkd-hil @qkdsim (firmware emulators behind pyvisa-sim sessions)"
        return info

    def _init(self) -> None:
        self.sessions = {}
        path = str(self.library_path)
        self.devices = None
        if path.startswith(_WORLD_PREFIX):
            self.world = _WORLDS[path]
        else:
            self.world = load_world(path)
            if self.world is None:  # a plain pyvisa-sim spec file: stock devices only
                self.devices = sim_parser.get_devices(path, False)
        # one lock per world: firmware calls from several sessions/threads are serialised
        self.lock = getattr(self.world, "lock", None) or threading.RLock()
        self._ports: dict[str, _Port] = {}
        if self.world is not None:
            for name, fw in self.world.instruments().items():
                key = str(rname.parse_resource_name(name))
                self._ports[key] = _Port(fw, self.lock)

    def resource_names(self) -> list[str]:
        """Normalised resource strings served by this library."""
        names = list(self._ports)
        if self.devices is not None:
            names += list(self.devices.list_resources())
        return names

    def open(
        self,
        session: Any,
        resource_name: str,
        access_mode: constants.AccessModes = constants.AccessModes.no_lock,
        open_timeout: Any = constants.VI_TMO_IMMEDIATE,
    ) -> tuple[Any, constants.StatusCode]:
        try:
            parsed = rname.parse_resource_name(resource_name)
        except rname.InvalidResourceName:
            raise errors.VisaIOError(constants.StatusCode.error_invalid_resource_name) from None
        port = self._ports.get(str(parsed))
        if port is None:
            if self.devices is not None:
                sess, status = super().open(session, resource_name, access_mode, open_timeout)
                if status < 0:
                    raise errors.VisaIOError(status)
                return sess, status
            raise errors.VisaIOError(constants.StatusCode.error_resource_not_found)
        try:
            base = SimSession.get_session_class(parsed.interface_type_const, parsed.resource_class)
        except ValueError:
            raise errors.VisaIOError(constants.StatusCode.error_nonsupported_operation) from None
        sess = _session_class(base)(session, resource_name, parsed)
        sess._init_port(port)
        return self._register(sess), constants.StatusCode.success

    def list_resources(self, session: Any, query: str = "?*::INSTR") -> tuple[str, ...]:
        found = rname.filter(self.resource_names(), query)
        if found:
            return tuple(found)
        raise errors.VisaIOError(errors.StatusCode.error_resource_not_found.value)

    def clear(self, session: Any) -> constants.StatusCode:
        sess = self.sessions.get(session)
        if isinstance(sess, _FirmwareSessionMixin):
            return sess.clear()
        return constants.StatusCode.success

    def flush(self, session: Any, mask: Any) -> constants.StatusCode:
        return constants.StatusCode.success

    def close(self, session: Any) -> constants.StatusCode:
        obj = self.sessions.get(session)
        status = super().close(session)
        if obj is self:
            # The resource manager closed: forget this world, a new RM gets a fresh one.
            VisaLibraryBase._registry.pop((type(self), self.library_path), None)
            _WORLDS.pop(str(self.library_path), None)
        return status


def resource_manager(world: WorldLike) -> pyvisa.ResourceManager:
    """A ResourceManager whose resources are ``world.instruments()`` (for tests and runs)."""
    token = f"{_WORLD_PREFIX}{next(_COUNTER)}:{id(world):x}"
    _WORLDS[token] = world
    try:
        lib = QkdSimVisaLibrary(token)
    finally:
        _WORLDS.pop(token, None)
    # Not kept in pyvisa's library registry: the world lives exactly as long as its manager.
    VisaLibraryBase._registry.pop((QkdSimVisaLibrary, lib.library_path), None)
    return pyvisa.ResourceManager(lib)


def world_of(rm: pyvisa.ResourceManager) -> Any:
    """The world behind a ``@qkdsim`` ResourceManager (tests only: it holds the truth)."""
    lib = rm.visalib
    if not isinstance(lib, QkdSimVisaLibrary):
        raise TypeError(f"{rm!r} is not a @qkdsim resource manager")
    return lib.world


WRAPPER_CLASS = QkdSimVisaLibrary
