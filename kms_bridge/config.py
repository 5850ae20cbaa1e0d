"""KME configuration file (YAML): loading and validation with clear errors.

The format is documented in docs/kms.md. Relative paths are resolved against the
directory of the configuration file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import yaml

ROLES = ("master", "slave")


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file and field."""

    exit_code = 2


@dataclass(frozen=True)
class PolicyRule:
    """SAE ``sae`` may get keys shared with ``peer`` over ``link``, in role ``role``."""

    sae: str
    peer: str
    role: str
    link: str


@dataclass(frozen=True)
class LinkConfig:
    link_id: str
    peer_kme: str
    key_size: int = 256
    node: str = ""


@dataclass
class KmeConfig:
    kme_id: str
    data_dir: str
    bridge_bind: str
    bridge_secret_file: str
    bridge_clients: dict[str, str]
    max_frame_bytes: int
    http_host: str
    http_port: int
    http_certfile: str
    http_keyfile: str
    http_ca: str
    client_cert: str
    max_key_count: int
    max_key_per_request: int
    links: dict[str, LinkConfig]
    policy: list[PolicyRule]
    sink: str = "sqlite"
    ready_file: str = ""
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def db_path(self) -> str:
        return os.path.join(self.data_dir, "kme.sqlite")

    def rule(self, sae: str, peer: str, role: str | None = None) -> PolicyRule | None:
        for r in self.policy:
            if r.sae == sae and r.peer == peer and (role is None or r.role == role):
                return r
        return None


def _get(d: dict[str, Any], key: str, where: str, typ: type | tuple[type, ...], default: Any = ...):
    if key not in d:
        if default is ...:
            raise ConfigError(f"{where}: missing field '{key}'")
        return default
    v = d[key]
    if not isinstance(v, typ) or (isinstance(v, bool) and typ is int):
        raise ConfigError(f"{where}: field '{key}' must be {typ}, got {v!r}")
    return v


def load_config(path: str) -> KmeConfig:
    """Read and validate a KME config file."""
    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read KME config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"KME config {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"KME config {path}: top level must be a mapping")
    return parse_config(raw, os.path.dirname(os.path.abspath(path)), source=path)


def parse_config(raw: dict[str, Any], base: str, source: str = "<dict>") -> KmeConfig:
    def p(x: str) -> str:
        return x if not x or os.path.isabs(x) else os.path.join(base, x)

    w = source
    bridge = _get(raw, "bridge", w, dict)
    http = _get(raw, "http", w, dict, {})
    store = _get(raw, "store", w, dict, {})
    clients = _get(bridge, "allowed_clients", f"{w}: bridge", dict)
    for name, key in clients.items():
        if not isinstance(key, str):
            raise ConfigError(f"{w}: bridge.allowed_clients.{name} must be a key file or z85 key")
    links: dict[str, LinkConfig] = {}
    for lid, ld in (_get(raw, "links", w, dict, {}) or {}).items():
        if not isinstance(ld, dict):
            raise ConfigError(f"{w}: links.{lid} must be a mapping")
        size = _get(ld, "key_size", f"{w}: links.{lid}", int, 256)
        if size <= 0 or size % 8:
            raise ConfigError(f"{w}: links.{lid}.key_size must be a positive multiple of 8")
        node = _get(ld, "node", f"{w}: links.{lid}", str, "")
        if node and node not in clients:
            raise ConfigError(f"{w}: links.{lid}.node {node!r} is not in bridge.allowed_clients")
        links[str(lid)] = LinkConfig(
            str(lid), _get(ld, "peer_kme", f"{w}: links.{lid}", str), size, node
        )
    policy = []
    for i, rd in enumerate(_get(raw, "policy", w, list, [])):
        where = f"{w}: policy[{i}]"
        if not isinstance(rd, dict):
            raise ConfigError(f"{where} must be a mapping")
        rule = PolicyRule(
            _get(rd, "sae", where, str),
            _get(rd, "peer", where, str),
            _get(rd, "role", where, str),
            _get(rd, "link", where, str),
        )
        if rule.role not in ROLES:
            raise ConfigError(f"{where}: role must be one of {ROLES}, got {rule.role!r}")
        if rule.link not in links:
            raise ConfigError(f"{where}: link {rule.link!r} is not declared under 'links'")
        policy.append(rule)
    client_cert = _get(http, "client_cert", f"{w}: http", str, "optional")
    if client_cert not in ("optional", "required"):
        raise ConfigError(f"{w}: http.client_cert must be 'optional' or 'required'")
    cfg = KmeConfig(
        kme_id=_get(raw, "kme_id", w, str),
        data_dir=p(_get(raw, "data_dir", w, str)),
        bridge_bind=_get(bridge, "bind", f"{w}: bridge", str),
        bridge_secret_file=p(_get(bridge, "secret_key_file", f"{w}: bridge", str)),
        bridge_clients={
            n: (p(k) if k.endswith((".key", ".key_secret")) else k) for n, k in clients.items()
        },
        max_frame_bytes=_get(bridge, "max_frame_bytes", f"{w}: bridge", int, 4 * 1024 * 1024),
        http_host=_get(http, "host", f"{w}: http", str, "127.0.0.1"),
        http_port=_get(http, "port", f"{w}: http", int, 0),
        http_certfile=p(_get(http, "certfile", f"{w}: http", str, "")),
        http_keyfile=p(_get(http, "keyfile", f"{w}: http", str, "")),
        http_ca=p(_get(http, "ca", f"{w}: http", str, "")),
        client_cert=client_cert,
        max_key_count=_get(store, "max_key_count", f"{w}: store", int, 1_000_000),
        max_key_per_request=_get(store, "max_key_per_request", f"{w}: store", int, 1024),
        links=links,
        policy=policy,
        sink=_get(store, "sink", f"{w}: store", str, "sqlite"),
        ready_file=p(_get(raw, "ready_file", w, str, "")),
        source=source,
        extra=_get(raw, "extra", w, dict, {}),
    )
    if cfg.http_host not in ("127.0.0.1", "::1", "localhost") and not raw.get("allow_remote"):
        raise ConfigError(f"{w}: http.host {cfg.http_host!r} is not loopback (set allow_remote)")
    bind_host = cfg.bridge_bind.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    if bind_host not in ("127.0.0.1", "::1", "localhost") and not raw.get("allow_remote"):
        raise ConfigError(
            f"{w}: bridge.bind {cfg.bridge_bind!r} is not loopback (set allow_remote)"
        )
    if http and not (cfg.http_certfile and cfg.http_keyfile and cfg.http_ca):
        raise ConfigError(f"{w}: http needs certfile, keyfile and ca (mutual TLS only)")
    return cfg
