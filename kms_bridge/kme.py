"""One KME process: the bridge (ROUTER) feeding the store, and the ETSI 014 HTTPS service.

``python -m kms_bridge.kme --config FILE`` (or ``qkd-hil kme serve --config FILE``) runs
it in the foreground until SIGTERM/SIGINT. Once both listeners are bound, a JSON "ready
file" (``ready_file`` in the config) gives the bridge endpoint, the HTTPS port and the pid.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import socket
import ssl
import sys
import threading
from typing import Any

from kms_bridge import bridge
from kms_bridge.config import ConfigError, KmeConfig, load_config
from kms_bridge.store import KeySink, SqliteKeyStore

log = logging.getLogger(__name__)


def _client_keys(cfg: KmeConfig) -> dict[str, bytes]:
    out = {}
    for name, spec in cfg.bridge_clients.items():
        if os.path.exists(spec):
            out[name] = bridge.load_curve_keys(spec)[0]
        elif len(spec) == 40:
            out[name] = spec.encode()
        else:
            raise ConfigError(f"{cfg.source}: bridge client {name}: no key file or z85 key {spec}")
    return out


def make_sink(cfg: KmeConfig) -> KeySink:
    """The configured sink: the default SQLite store, or ``module:factory`` (called with cfg)."""
    if cfg.sink == "sqlite":
        return SqliteKeyStore(cfg.db_path, max_key_count=cfg.max_key_count)
    mod, _, attr = cfg.sink.partition(":")
    try:
        factory = getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"{cfg.source}: store.sink {cfg.sink!r} cannot be loaded: {exc}"
        ) from None
    return factory(cfg)


def _bind_http(cfg: KmeConfig) -> socket.socket:
    family = socket.AF_INET6 if ":" in cfg.http_host else socket.AF_INET
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on connections accepted from such a
    # socket; without it each response's second TLS record waited ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((cfg.http_host, cfg.http_port))
    except OSError as exc:
        sock.close()
        raise OSError(
            f"KME {cfg.kme_id}: cannot bind HTTPS {cfg.http_host}:{cfg.http_port}: {exc}"
        ) from None
    sock.listen(512)
    sock.set_inheritable(True)
    return sock


def _write_ready(path: str, info: dict[str, Any]) -> None:
    if not path:
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(info, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _graceful_server_class() -> type:
    import uvicorn

    class GracefulServer(uvicorn.Server):
        """uvicorn re-raises SIGTERM/SIGINT after its shutdown, which would kill the process
        before the bridge and store are closed; forget the signal once it is handled."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()

    return GracefulServer


def serve(cfg: KmeConfig, stop: threading.Event | None = None) -> int:
    """Run the KME until ``stop`` is set or a termination signal arrives."""
    import uvicorn

    from kms_bridge.etsi import TLSHttpProtocol, create_app

    _GracefulServer = _graceful_server_class()
    os.makedirs(cfg.data_dir, exist_ok=True)
    server_public, server_secret = bridge.load_curve_keys(cfg.bridge_secret_file)
    if not server_secret:
        raise ConfigError(f"{cfg.bridge_secret_file} holds no secret key (use the .key_secret)")
    sink = make_sink(cfg)
    srv = bridge.BridgeServer(
        sink,
        cfg.bridge_bind,
        server_public,
        server_secret,
        _client_keys(cfg),
        max_frame_bytes=cfg.max_frame_bytes,
        link_nodes={lid: lc.node for lid, lc in cfg.links.items() if lc.node},
    )
    endpoint = srv.start()
    info: dict[str, Any] = {"pid": os.getpid(), "kme_id": cfg.kme_id, "bridge": endpoint}
    server = None
    try:
        if isinstance(sink, SqliteKeyStore) and cfg.http_certfile:
            sock = _bind_http(cfg)
            info["http_port"] = sock.getsockname()[1]
            app = create_app(cfg, sink)
            ucfg = uvicorn.Config(
                app,
                http=TLSHttpProtocol,
                ssl_certfile=cfg.http_certfile,
                ssl_keyfile=cfg.http_keyfile,
                ssl_ca_certs=cfg.http_ca,
                ssl_cert_reqs=ssl.CERT_REQUIRED
                if cfg.client_cert == "required"
                else ssl.CERT_OPTIONAL,
                log_level="warning",
                access_log=False,
                lifespan="off",
                timeout_keep_alive=30,
            )
            server = _GracefulServer(ucfg)
            _write_ready(cfg.ready_file, info)
            if stop is not None:
                threading.Thread(
                    target=lambda: (stop.wait(), setattr(server, "should_exit", True)),
                    daemon=True,
                ).start()
            server.run(sockets=[sock])
        else:
            _write_ready(cfg.ready_file, info)
            ev = stop or threading.Event()
            if stop is None:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, lambda *_: ev.set())
            ev.wait()
    finally:
        srv.stop()
        sink.close()
    return 0


def _watch_parent(pid: int, stop: threading.Event) -> None:
    """A lab KME must not outlive the test or runner that started it (even if killed)."""
    while not stop.wait(0.5):
        if os.getppid() != pid:
            log.warning("parent process %d is gone: shutting down", pid)
            stop.set()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="kms_bridge.kme", description="run one KME")
    ap.add_argument("--config", required=True)
    ap.add_argument("--parent-pid", type=int, default=0, help="shut down when this process is gone")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    stop = None
    if args.parent_pid:
        stop = threading.Event()
        threading.Thread(target=_watch_parent, args=(args.parent_pid, stop), daemon=True).start()
    try:
        return serve(load_config(args.config), stop)
    except (ConfigError, OSError) as exc:
        print(f"kme: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
