"""Bench files: the YAML a technician writes to describe a bench, and its validation.

A bench file names every instrument by role with its VISA resource string (and optional
driver class), the links the transmitter serves (switch port, receiver, power meter, ITU
channel, the SAE pair whose KMEs get the keys), the run and monitoring settings, and an
``emulator:`` section (fibres, events, noise) that is used only when ``backend`` is
``emulator``. Every mistake is reported as one :class:`BenchError` naming the file, the
field path and what was expected; the CLI maps it to exit code 2.

Schema (``?`` = optional, defaults in brackets)::

    name: str
    description?: str
    backend?: emulator | visa                 [emulator]
    visa_library?: str                        ["" = the system VISA; "@py" = pyvisa-py]
    seed?: int                                [drawn at random; emulator only]
    instruments:                              mapping of instrument name -> entry
      <name>:
        role: transmitter | receiver | otdr | switch | powermeter
        resource: VISA resource string (or a pyserial URL for a serial switch)
        driver?: "package.module:Class"       [the package's driver for the role]
        timeout_ms?: int > 0                  [10000]
        options?: mapping                     [{}] passed to the driver
    links:                                    list, in switch-port order
      - name: str
        switch_port?: int >= 1                (required when there is a switch)
        receiver: instrument name (role receiver)
        powermeter?: instrument name (role powermeter)
        channel: ITU channel of the quantum signal (1..72)
        sync_channel?: ITU channel of the classical sync laser (read by the power meter) [40]
        length_km?: float >= 0                nominal length (OTDR range, summary)
        sae?: {master: str, slave: str}       [sae-<link>-a / sae-<link>-b]
    run?:      see RunSettings
    monitoring?: see MonitorSettings
    kms?:      {mode: lab | none, key_size_bits: int}   [lab, 256]
    emulator?: mapping (schema in docs/emulator.md; validated by the emulator)
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from drivers import grid

ROLES: tuple[str, ...] = ("transmitter", "receiver", "otdr", "switch", "powermeter")
BACKENDS: tuple[str, ...] = ("emulator", "visa")
BUNDLED_DIR = Path(__file__).resolve().parent / "benches"
_SERIAL_URL = re.compile(r"^(socket|rfc2217|loop|spy|alt|hwgrep)://|^/dev/\S+$|^COM\d+$")
DEFAULT_SYNC_CHANNEL = 40
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class BenchError(ValueError):
    """A bench file is wrong: the message names the file, the field and what was expected."""

    exit_code = 2

    def __init__(self, source: str, path: str, message: str) -> None:
        self.source = source
        self.path = path
        self.detail = message
        where = f"{source}: {path}: " if path else f"{source}: "
        super().__init__(f"bench file {where}{message}")


@dataclass(frozen=True)
class Instrument:
    """One instrument of the bench."""

    name: str
    role: str
    resource: str
    driver: str | None = None
    timeout_ms: int = 10_000
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Link:
    """One quantum link: a switch port towards one receiver site."""

    name: str
    receiver: str
    channel: int
    switch_port: int | None = None
    powermeter: str | None = None
    sync_channel: int = 40
    length_km: float | None = None
    sae_master: str = ""
    sae_slave: str = ""


@dataclass(frozen=True)
class RunSettings:
    """How a key-generation run is paced.

    ``frames`` is per link; a link distils once it holds ``block_frames`` clean frames (its
    finite-size block, ``block_frames * symbols_per_frame`` symbols). ``v_a`` is the
    modulation variance in SNU or ``None`` for the best key rate from the measured channel.
    ``beta`` is the reconciliation efficiency, or ``None`` (``auto``) for what the LDPC
    code family reaches at each SNR (:func:`dsp.reconciliation.family_beta`): ``V_A`` is
    then chosen on that curve and every frame runs at its code's operating point.
    """

    frames: int = 3
    symbols_per_frame: int = 1_000_000
    block_frames: int = 3
    calibrate_every_frames: int = 0
    v_a: float | None = None
    v_a_min: float = 1.5
    v_a_max: float = 12.0
    beta: float | None = None
    epsilon: float = 1e-10
    pe_fraction: float = 0.0
    distill: bool = True
    tx_power_dbm: float = 10.0
    sync_power_dbm: float = 0.0
    lo_power_dbm: float = 10.0
    reveal_symbols: int = 2000
    snr_max: float = 0.40
    distill_budget_s: float = 90.0
    distill_workers: int = 2
    ldpc_block_bits: int = 1_000_000


@dataclass(frozen=True)
class OtdrSettings:
    """OTDR acquisition used for the baseline and every scheduled scan."""

    wavelength_nm: float = 1650.0
    pulse_width_ns: float = 100.0
    range_km: float | None = None
    averaging_s: float = 5.0
    ior: float = 1.4682


@dataclass(frozen=True)
class MonitorSettings:
    """Fibre monitoring: thresholds and schedule.

    ``otdr_every_frames``: a link's OTDR scan follows every N-th of its frames (the
    monitoring period); keys of a frame are released only after a clean scan that
    follows it. ``loss_step_db``: a power-meter loss change that raises an alarm.
    ``event_db``: the smallest new OTDR event (loss) that raises an alarm;
    ``reflective_db``: a reflectance above this is a reflective event.
    """

    enabled: bool = True
    otdr_every_frames: int = 1
    loss_step_db: float = 0.15
    event_db: float = 0.1
    reflective_db: float = -55.0
    cut_loss_db: float = 30.0
    powermeter_wavelength_nm: float = 1550.0
    powermeter_averaging_s: float = 0.1
    otdr: OtdrSettings = field(default_factory=OtdrSettings)


@dataclass(frozen=True)
class KmsSettings:
    """Key delivery: ``lab`` starts KME-A and KME-B on loopback; ``none`` delivers nothing."""

    mode: str = "lab"
    key_size_bits: int = 256


@dataclass(frozen=True)
class Bench:
    """A validated bench file."""

    name: str
    source: str
    backend: str
    instruments: dict[str, Instrument]
    links: list[Link]
    run: RunSettings
    monitoring: MonitorSettings
    kms: KmsSettings
    description: str = ""
    visa_library: str = ""
    seed: int | None = None
    emulator: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def by_role(self, role: str) -> list[Instrument]:
        """Instruments of ``role`` in file order."""
        return [i for i in self.instruments.values() if i.role == role]

    def one(self, role: str) -> Instrument | None:
        """The single instrument of ``role`` (``None`` if the bench has none)."""
        found = self.by_role(role)
        return found[0] if found else None

    def link(self, name: str) -> Link:
        for link in self.links:
            if link.name == name:
                return link
        names = ", ".join(lk.name for lk in self.links)
        raise BenchError(self.source, "links", f"no link named {name!r} (links: {names})")


# --------------------------------------------------------------------------- loading


def bundled_benches() -> list[str]:
    """Names of the bench files shipped with the package."""
    return sorted(p.stem for p in BUNDLED_DIR.glob("*.yaml"))


def resolve(name_or_path: str | os.PathLike[str]) -> Path:
    """Path of a bench given as a file path or as the name of a bundled bench."""
    text = os.fspath(name_or_path)
    path = Path(text)
    if path.is_file():
        return path
    bundled = BUNDLED_DIR / f"{text}.yaml"
    if not path.suffix and bundled.is_file():
        return bundled
    names = ", ".join(bundled_benches())
    raise BenchError(text, "", f"no such file, and not a bundled bench (bundled: {names})")


def load(name_or_path: str | os.PathLike[str], *, check_emulator: bool = True) -> Bench:
    """Read, parse and validate a bench file (path or bundled name)."""
    path = resolve(name_or_path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchError(source, "", f"cannot read: {exc}") from None
    return loads(text, source=source, check_emulator=check_emulator)


def loads(text: str, source: str = "<bench>", *, check_emulator: bool = True) -> Bench:
    """Parse and validate bench-file YAML text; ``source`` names it in errors."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise BenchError(source, "", f"{where}not valid YAML ({problem})") from None
    return validate(data, source=source, check_emulator=check_emulator)


# --------------------------------------------------------------------------- validation


class _V:
    """Field readers that know the file name and raise :class:`BenchError`."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, message: str) -> BenchError:
        return BenchError(self.source, path, message)

    def mapping(self, value: Any, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping, got {_kind(value)}")
        return value

    def known(self, value: dict[str, Any], path: str, allowed: tuple[str, ...]) -> None:
        for key in value:
            if key not in allowed:
                where = f"{path}.{key}" if path else str(key)
                raise self.fail(where, f"unknown field (expected one of: {', '.join(allowed)})")

    def required(self, value: dict[str, Any], key: str, path: str) -> Any:
        if key not in value or value[key] is None:
            where = f"{path}.{key}" if path else key
            raise self.fail(where, "missing required field")
        return value[key]

    def string(self, value: Any, path: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(path, f"expected a non-empty string, got {_kind(value)}")
        return value.strip()

    def name(self, value: Any, path: str) -> str:
        text = self.string(value, path)
        if not _NAME.match(text):
            raise self.fail(
                path, f"{text!r} is not a valid name (letters, digits, '-', '_', '.'; <= 64)"
            )
        return text

    def boolean(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, f"expected true or false, got {_kind(value)}")
        return value

    def integer(self, value: Any, path: str, lo: int | None = None, hi: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise self.fail(path, f"expected an integer, got {_kind(value)}")
        _range(self, path, value, lo, hi)
        return int(value)

    def number(
        self,
        value: Any,
        path: str,
        lo: float | None = None,
        hi: float | None = None,
        lo_open: bool = False,
    ) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(path, f"expected a number, got {_kind(value)}")
        x = float(value)
        if not math.isfinite(x):
            raise self.fail(path, f"expected a finite number, got {value}")
        if lo_open and lo is not None and x <= lo:
            raise self.fail(path, f"must be > {lo:g}, got {value}")
        _range(self, path, x, None if lo_open else lo, hi)
        return x


def _auto_number(v: _V, value: Any, path: str, **limits: Any) -> float | None:
    """A number within ``limits``, or ``None`` for ``auto`` (or an empty field)."""
    if value is None or value == "auto":
        return None
    if isinstance(value, str):
        raise v.fail(path, f'expected a number or "auto", got "{value}"')
    return v.number(value, path, **limits)


def _range(v: _V, path: str, x: float, lo: float | None, hi: float | None) -> None:
    if lo is not None and x < lo:
        raise v.fail(path, f"must be >= {lo:g}, got {x:g}")
    if hi is not None and x > hi:
        raise v.fail(path, f"must be <= {hi:g}, got {x:g}")


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"boolean {value}"
    if isinstance(value, int | float):
        return f"number {value}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


_TOP = (
    "name",
    "description",
    "backend",
    "visa_library",
    "seed",
    "instruments",
    "links",
    "run",
    "monitoring",
    "kms",
    "emulator",
)


def validate(data: Any, source: str = "<bench>", *, check_emulator: bool = True) -> Bench:
    """Validate a parsed bench file and return a :class:`Bench`.

    ``check_emulator`` also builds the emulator's world from the ``emulator:`` section
    (when the backend is the emulator) so its own errors surface here, prefixed with the
    file and ``emulator.``, and checks that every resource exists in that world.
    """
    v = _V(source)
    if data is None:
        raise v.fail("", "the file is empty (expected a mapping with name, instruments, links)")
    top = v.mapping(data, "(top level)")
    v.known(top, "", _TOP)
    name = v.name(v.required(top, "name", ""), "name")
    description = str(top.get("description") or "")
    backend = top.get("backend", "emulator")
    if backend not in BACKENDS:
        raise v.fail("backend", f"expected one of {', '.join(BACKENDS)}, got {_kind(backend)}")
    visa_library = top.get("visa_library", "")
    if not isinstance(visa_library, str):
        raise v.fail("visa_library", f"expected a string, got {_kind(visa_library)}")
    seed = top.get("seed")
    if seed is not None:
        seed = v.integer(seed, "seed", lo=0)

    instruments = _instruments(v, v.required(top, "instruments", ""), backend)
    links = _links(v, v.required(top, "links", ""), instruments)
    run = _run(v, top.get("run") or {})
    monitoring = _monitoring(v, top.get("monitoring") or {})
    kms = _kms(v, top.get("kms") or {})

    for role in ("transmitter",):
        if not any(i.role == role for i in instruments.values()):
            raise v.fail("instruments", f"the bench needs a {role}")
    for role in ("transmitter", "switch", "otdr"):
        found = [i.name for i in instruments.values() if i.role == role]
        if len(found) > 1:
            raise v.fail("instruments", f"only one {role} is supported, got {', '.join(found)}")
    has_switch = any(i.role == "switch" for i in instruments.values())
    if len(links) > 1 and not has_switch:
        raise v.fail("links", f"{len(links)} links need an instrument with role switch")
    if has_switch:
        for k, link in enumerate(links):
            if link.switch_port is None:
                raise v.fail(
                    f"links[{k}].switch_port", "missing required field (bench has a switch)"
                )

    emulator = top.get("emulator")
    if emulator is not None:
        emulator = v.mapping(emulator, "emulator")
    if backend == "emulator" and emulator is None:
        raise v.fail("emulator", "missing required field (backend is emulator)")

    bench = Bench(
        name=name,
        source=source,
        backend=backend,
        instruments=instruments,
        links=links,
        run=run,
        monitoring=monitoring,
        kms=kms,
        description=description,
        visa_library=visa_library,
        seed=seed,
        emulator=emulator,
        raw=top,
    )
    if backend == "emulator" and check_emulator:
        check_world(bench)
    return bench


def _instruments(v: _V, value: Any, backend: str) -> dict[str, Instrument]:
    entries = v.mapping(value, "instruments")
    if not entries:
        raise v.fail("instruments", "expected at least one instrument")
    out: dict[str, Instrument] = {}
    seen: dict[str, str] = {}
    for key, entry in entries.items():
        path = f"instruments.{key}"
        name = v.name(key, path)
        item = v.mapping(entry, path)
        v.known(item, path, ("role", "resource", "driver", "timeout_ms", "options"))
        role = v.string(v.required(item, "role", path), f"{path}.role")
        if role not in ROLES:
            raise v.fail(
                f"{path}.role", f"unknown role {role!r} (expected one of {', '.join(ROLES)})"
            )
        resource = v.string(v.required(item, "resource", path), f"{path}.resource")
        _check_resource(v, f"{path}.resource", resource, role)
        if resource in seen:
            raise v.fail(f"{path}.resource", f"{resource} is already used by {seen[resource]}")
        seen[resource] = name
        driver = item.get("driver")
        if driver is not None:
            driver = v.string(driver, f"{path}.driver")
            if not re.match(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", driver):
                raise v.fail(f"{path}.driver", f"expected 'package.module:Class', got {driver!r}")
        timeout = v.integer(item.get("timeout_ms", 10_000), f"{path}.timeout_ms", lo=1)
        options = v.mapping(item.get("options") or {}, f"{path}.options")
        out[name] = Instrument(name, role, resource, driver, timeout, dict(options))
    return out


def _check_resource(v: _V, path: str, resource: str, role: str) -> None:
    """A VISA resource name (or, for a switch, a pyserial port/URL)."""
    if role == "switch" and _SERIAL_URL.match(resource):
        return
    from pyvisa import rname

    hint = "e.g. TCPIP0::192.168.1.20::inst0::INSTR, GPIB0::12::INSTR, ASRL1::INSTR"
    try:
        parsed = rname.parse_resource_name(resource)
    except Exception as exc:  # pyvisa raises InvalidResourceName (a ValueError) and others
        raise v.fail(path, f"not a VISA resource string ({exc}); {hint}") from None
    fields = {name: getattr(parsed, name, None) for name in getattr(parsed, "_fields", ())}
    problem = ""
    for name in ("primary_address", "secondary_address", "port"):
        value = fields.get(name)
        if value is not None and not str(value).isdigit():
            problem = f"{name.replace('_', ' ')} {value!r} is not a number"
        elif name == "primary_address" and value is not None and int(value) > 30:
            problem = f"GPIB primary address {value} is not in 0..30"
        elif name == "port" and value is not None and not 0 < int(value) < 65536:
            problem = f"port {value} is not in 1..65535"
    host = fields.get("host_address")
    if host is not None and not re.match(r"^[A-Za-z0-9_.:\[\]-]+$", str(host)):
        problem = f"host address {host!r} is not a host name or IP address"
    if problem:
        raise v.fail(path, f"not a valid VISA resource string {resource!r}: {problem}; {hint}")


def _links(v: _V, value: Any, instruments: dict[str, Instrument]) -> list[Link]:
    if not isinstance(value, list) or not value:
        raise v.fail("links", f"expected a non-empty list of links, got {_kind(value)}")
    links: list[Link] = []
    names: set[str] = set()
    ports: dict[int, str] = {}
    receivers: dict[str, str] = {}
    allowed = (
        "name",
        "switch_port",
        "receiver",
        "powermeter",
        "channel",
        "sync_channel",
        "length_km",
        "sae",
    )
    for k, entry in enumerate(value):
        path = f"links[{k}]"
        item = v.mapping(entry, path)
        v.known(item, path, allowed)
        name = v.name(v.required(item, "name", path), f"{path}.name")
        if name in names:
            raise v.fail(f"{path}.name", f"duplicate link name {name!r}")
        names.add(name)
        receiver = _ref(v, item, "receiver", path, instruments, "receiver", required=True)
        assert receiver is not None
        if receiver in receivers:
            raise v.fail(
                f"{path}.receiver", f"{receiver} already serves link {receivers[receiver]}"
            )
        receivers[receiver] = name
        powermeter = _ref(v, item, "powermeter", path, instruments, "powermeter", required=False)
        channel = v.integer(
            v.required(item, "channel", path),
            f"{path}.channel",
            lo=grid.CHANNEL_MIN,
            hi=grid.CHANNEL_MAX,
        )
        sync = v.integer(
            item.get("sync_channel", DEFAULT_SYNC_CHANNEL),
            f"{path}.sync_channel",
            lo=grid.CHANNEL_MIN,
            hi=grid.CHANNEL_MAX,
        )
        if sync == channel:
            raise v.fail(f"{path}.sync_channel", "must differ from the quantum channel")
        port = item.get("switch_port")
        if port is not None:
            port = v.integer(port, f"{path}.switch_port", lo=1, hi=64)
            if port in ports:
                raise v.fail(f"{path}.switch_port", f"port {port} is already used by {ports[port]}")
            ports[port] = name
        length = item.get("length_km")
        if length is not None:
            length = v.number(length, f"{path}.length_km", lo=0.0, hi=500.0)
        sae = v.mapping(item.get("sae") or {}, f"{path}.sae")
        v.known(sae, f"{path}.sae", ("master", "slave"))
        master = v.name(sae.get("master", f"sae-{name}-a"), f"{path}.sae.master")
        slave = v.name(sae.get("slave", f"sae-{name}-b"), f"{path}.sae.slave")
        if master == slave:
            raise v.fail(f"{path}.sae", "master and slave SAE must differ")
        links.append(Link(name, receiver, channel, port, powermeter, sync, length, master, slave))
    return links


def _ref(
    v: _V,
    item: dict[str, Any],
    key: str,
    path: str,
    instruments: dict[str, Instrument],
    role: str,
    required: bool,
) -> str | None:
    if required:
        value = v.required(item, key, path)
    else:
        value = item.get(key)
        if value is None:
            return None
    name = v.string(value, f"{path}.{key}")
    if name not in instruments:
        known = ", ".join(i.name for i in instruments.values() if i.role == role) or "none"
        raise v.fail(
            f"{path}.{key}", f"no instrument named {name!r} (instruments with role {role}: {known})"
        )
    if instruments[name].role != role:
        raise v.fail(f"{path}.{key}", f"{name} has role {instruments[name].role}, expected {role}")
    return name


def _run(v: _V, value: Any) -> RunSettings:
    item = v.mapping(value, "run")
    fields = tuple(RunSettings.__dataclass_fields__)
    v.known(item, "run", fields)
    d = RunSettings()
    out = RunSettings(
        frames=v.integer(item.get("frames", d.frames), "run.frames", lo=1),
        symbols_per_frame=v.integer(
            item.get("symbols_per_frame", d.symbols_per_frame),
            "run.symbols_per_frame",
            lo=10_000,
            hi=50_000_000,
        ),
        block_frames=v.integer(item.get("block_frames", d.block_frames), "run.block_frames", lo=1),
        calibrate_every_frames=v.integer(
            item.get("calibrate_every_frames", d.calibrate_every_frames),
            "run.calibrate_every_frames",
            lo=0,
        ),
        v_a=_auto_number(v, item.get("v_a", "auto"), "run.v_a", lo=0.0, hi=100.0, lo_open=True),
        v_a_min=v.number(item.get("v_a_min", d.v_a_min), "run.v_a_min", lo=0.0, lo_open=True),
        v_a_max=v.number(item.get("v_a_max", d.v_a_max), "run.v_a_max", lo=0.0, hi=100.0),
        beta=_auto_number(v, item.get("beta", "auto"), "run.beta", lo=0.5, hi=1.0),
        epsilon=v.number(
            item.get("epsilon", d.epsilon), "run.epsilon", lo=0.0, hi=0.1, lo_open=True
        ),
        pe_fraction=v.number(
            item.get("pe_fraction", d.pe_fraction), "run.pe_fraction", lo=0.0, hi=0.9
        ),
        distill=v.boolean(item.get("distill", d.distill), "run.distill"),
        tx_power_dbm=v.number(
            item.get("tx_power_dbm", d.tx_power_dbm), "run.tx_power_dbm", lo=-10.0, hi=13.0
        ),
        sync_power_dbm=v.number(
            item.get("sync_power_dbm", d.sync_power_dbm), "run.sync_power_dbm", lo=-10.0, hi=13.0
        ),
        lo_power_dbm=v.number(
            item.get("lo_power_dbm", d.lo_power_dbm), "run.lo_power_dbm", lo=-10.0, hi=20.0
        ),
        reveal_symbols=v.integer(
            item.get("reveal_symbols", d.reveal_symbols), "run.reveal_symbols", lo=0, hi=1_000_000
        ),
        snr_max=v.number(item.get("snr_max", d.snr_max), "run.snr_max", lo=0.01, hi=100.0),
        ldpc_block_bits=v.integer(
            item.get("ldpc_block_bits", d.ldpc_block_bits),
            "run.ldpc_block_bits",
            lo=10_000,
            hi=2_000_000,
        ),
        distill_workers=v.integer(
            item.get("distill_workers", d.distill_workers), "run.distill_workers", lo=0, hi=8
        ),
        distill_budget_s=v.number(
            item.get("distill_budget_s", d.distill_budget_s),
            "run.distill_budget_s",
            lo=0.0,
            hi=86_400.0,
            lo_open=True,
        ),
    )
    if out.v_a_min >= out.v_a_max:
        raise v.fail("run.v_a_max", f"must be > run.v_a_min ({out.v_a_min:g})")
    return out


def _monitoring(v: _V, value: Any) -> MonitorSettings:
    item = v.mapping(value, "monitoring")
    v.known(item, "monitoring", tuple(MonitorSettings.__dataclass_fields__))
    d = MonitorSettings()
    otdr_item = v.mapping(item.get("otdr") or {}, "monitoring.otdr")
    v.known(otdr_item, "monitoring.otdr", tuple(OtdrSettings.__dataclass_fields__))
    od = OtdrSettings()
    rng = otdr_item.get("range_km")
    otdr = OtdrSettings(
        wavelength_nm=v.number(
            otdr_item.get("wavelength_nm", od.wavelength_nm),
            "monitoring.otdr.wavelength_nm",
            1250,
            1700,
        ),
        pulse_width_ns=v.number(
            otdr_item.get("pulse_width_ns", od.pulse_width_ns),
            "monitoring.otdr.pulse_width_ns",
            lo=1.0,
            hi=20_000.0,
        ),
        range_km=None
        if rng is None
        else v.number(rng, "monitoring.otdr.range_km", lo=0.0, hi=500.0, lo_open=True),
        averaging_s=v.number(
            otdr_item.get("averaging_s", od.averaging_s),
            "monitoring.otdr.averaging_s",
            lo=0.0,
            hi=3600.0,
            lo_open=True,
        ),
        ior=v.number(otdr_item.get("ior", od.ior), "monitoring.otdr.ior", lo=1.0, hi=2.0),
    )
    return MonitorSettings(
        enabled=v.boolean(item.get("enabled", d.enabled), "monitoring.enabled"),
        otdr_every_frames=v.integer(
            item.get("otdr_every_frames", d.otdr_every_frames), "monitoring.otdr_every_frames", lo=1
        ),
        loss_step_db=v.number(
            item.get("loss_step_db", d.loss_step_db),
            "monitoring.loss_step_db",
            lo=0.0,
            lo_open=True,
        ),
        event_db=v.number(
            item.get("event_db", d.event_db), "monitoring.event_db", lo=0.0, lo_open=True
        ),
        reflective_db=v.number(
            item.get("reflective_db", d.reflective_db),
            "monitoring.reflective_db",
            lo=-100.0,
            hi=0.0,
        ),
        cut_loss_db=v.number(
            item.get("cut_loss_db", d.cut_loss_db), "monitoring.cut_loss_db", lo=1.0, hi=100.0
        ),
        powermeter_wavelength_nm=v.number(
            item.get("powermeter_wavelength_nm", d.powermeter_wavelength_nm),
            "monitoring.powermeter_wavelength_nm",
            lo=800.0,
            hi=1700.0,
        ),
        powermeter_averaging_s=v.number(
            item.get("powermeter_averaging_s", d.powermeter_averaging_s),
            "monitoring.powermeter_averaging_s",
            lo=0.0,
            hi=60.0,
            lo_open=True,
        ),
        otdr=otdr,
    )


def _kms(v: _V, value: Any) -> KmsSettings:
    item = v.mapping(value, "kms")
    v.known(item, "kms", ("mode", "key_size_bits"))
    mode = item.get("mode", "lab")
    if mode not in ("lab", "none"):
        raise v.fail("kms.mode", f"expected lab or none, got {_kind(mode)}")
    size = v.integer(item.get("key_size_bits", 256), "kms.key_size_bits", lo=64, hi=8192)
    if size % 8:
        raise v.fail("kms.key_size_bits", f"must be a multiple of 8, got {size}")
    return KmsSettings(mode=mode, key_size_bits=size)


# --------------------------------------------------------------------------- emulator


def check_world(bench: Bench) -> None:
    """Build the emulator's world from ``bench.emulator`` to surface its errors as ours.

    Also checks that every instrument's resource exists in that world. Does nothing if the
    emulator package is not installed (a bench for real hardware needs no emulator).
    """
    import importlib.util

    if importlib.util.find_spec("emulator.world") is None:
        return
    world = build_world(bench, seed=0)
    resources = set(world.instruments())
    for inst in bench.instruments.values():
        if inst.resource not in resources:
            raise BenchError(
                bench.source,
                f"instruments.{inst.name}.resource",
                f"{inst.resource} is not an instrument of the emulated world "
                f"(it has: {', '.join(sorted(resources))})",
            )
    world_links = list(getattr(world, "links", []) or [])
    for k, link in enumerate(bench.links):
        if world_links and link.name not in world_links:
            raise BenchError(
                bench.source,
                f"links[{k}].name",
                f"{link.name!r} is not a link of the emulated world "
                f"(emulator links: {', '.join(world_links)})",
            )


def build_world(bench: Bench, seed: int | None = None) -> Any:
    """The emulator's :class:`emulator.world.World` described by the bench's ``emulator:``."""
    from emulator import world as world_module

    World = world_module.World
    ConfigError = getattr(world_module, "ConfigError", ValueError)
    if bench.emulator is None:
        raise BenchError(bench.source, "emulator", "missing (the backend is the emulator)")
    try:
        return World.from_config(bench.emulator, seed=bench.seed if seed is None else seed)
    except ConfigError as exc:
        text = str(exc)
        path, _, message = text.partition(": ")
        if not message:
            path, message = "", text
        full = f"emulator.{path}" if path else "emulator"
        raise BenchError(bench.source, full, message) from None
