"""Two lab sites on loopback: KME-A (Alice's side) and KME-B (Bob's side), each a real process.

``LabSites.start(workdir)`` generates a CA with KME and SAE certificates and CurveZMQ
key pairs, writes a config per KME, starts both KME processes (bridge + HTTPS on
ephemeral loopback ports) and returns once both are listening. Then::

    sites = LabSites.start(workdir)
    alice, bob = sites.node("alice"), sites.node("bob")
    alice.push(block_id, keys, metadata); bob.push(block_id, keys, metadata)
    alice.flush(10); bob.flush(10)
    master, slave = sites.sae_client("master"), sites.sae_client("slave")
    keys = master.enc_keys(sites.slave_id, number=4)
    same = slave.dec_keys(sites.master_id, [k for k, _ in keys])
    sites.stop()
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import yaml

from kms_bridge import bridge, pki
from kms_bridge.client import SaeClient

SIDES = {"alice": "A", "bob": "B"}
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class KmeProcess:
    """One KME child process and what is needed to (re)start it."""

    site: str
    config: str
    ready_file: str
    log_file: str
    proc: subprocess.Popen[bytes] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def start(self, timeout: float = 60.0) -> None:
        """Launch the process and wait until it has bound its listeners."""
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.ready_file)
        env = dict(os.environ)
        env["PYTHONPATH"] = _ROOT + os.pathsep + env.get("PYTHONPATH", "")
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "kms_bridge.kme",
                    "--config",
                    self.config,
                    "--parent-pid",
                    str(os.getpid()),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=_ROOT,
            )

    def wait_ready(self, timeout: float = 60.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"KME-{self.site} exited with {self.proc.returncode}; see {self.log_file}"
                )
            try:
                with open(self.ready_file, encoding="utf-8") as fh:
                    info = json.load(fh)
                if info.get("pid") == self.proc.pid:
                    self.info = info
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        self.kill()
        raise TimeoutError(f"KME-{self.site} not ready after {timeout} s; see {self.log_file}")

    def pin_ports(self) -> None:
        """Write the ephemeral ports it got into its config, so a restart reuses them
        (the nodes keep connecting to the same endpoint)."""
        with open(self.config, encoding="utf-8") as fh:
            cfg = yaml.safe_load(fh)
        cfg["bridge"]["bind"] = self.info["bridge"]
        cfg["http"]["port"] = self.info["http_port"]
        with open(self.config, "w", encoding="utf-8") as fh:
            yaml.safe_dump(cfg, fh, sort_keys=False)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (SIGKILL by default: a crash) and reap the process."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class LabSites:
    """KME-A and KME-B with their bridges, HTTPS services, PKI and Curve keys."""

    master_id = "SAE-A"
    slave_id = "SAE-B"

    def __init__(self, workdir: str, link_id: str, key_size: int, max_key_count: int):
        self.workdir = os.path.abspath(workdir)
        self.link_id = link_id
        self.key_size = key_size
        self.max_key_count = max_key_count
        self.kmes: dict[str, KmeProcess] = {}
        self._nodes: dict[str, bridge.BridgeNode] = {}
        self._clients: list[SaeClient] = []
        self.pki_dir = os.path.join(self.workdir, "pki")
        self.curve_dir = os.path.join(self.workdir, "curve")
        self.pki: dict[str, pki.CertPaths] = {}
        self.curve: dict[str, tuple[str, str]] = {}

    @classmethod
    def start(
        cls,
        workdir: str,
        link_id: str = "link-1",
        key_size: int = 256,
        max_key_count: int = 1_000_000,
        timeout: float = 60.0,
    ) -> LabSites:
        """Generate credentials and configs under ``workdir`` and start both KMEs."""
        self = cls(workdir, link_id, key_size, max_key_count)
        os.makedirs(self.workdir, exist_ok=True)
        self.pki = pki.make_lab_pki(
            self.pki_dir, ["KME-A", "KME-B"], [self.master_id, self.slave_id]
        )
        for name in ("kme-a", "kme-b", "alice", "bob"):
            self.curve[name] = pki.curve_keypair(self.curve_dir, name)
        for site, node in (("A", "alice"), ("B", "bob")):
            self.kmes[site] = self._write_config(site, node)
        try:
            for kp in self.kmes.values():
                kp.launch()
            for kp in self.kmes.values():
                kp.wait_ready(timeout)
                kp.pin_ports()
        except Exception:
            self.stop()
            raise
        return self

    def _write_config(self, site: str, node: str) -> KmeProcess:
        peer_site = "B" if site == "A" else "A"
        sae, peer, role = (
            (self.master_id, self.slave_id, "master")
            if site == "A"
            else (self.slave_id, self.master_id, "slave")
        )
        base = os.path.join(self.workdir, f"kme-{site.lower()}")
        os.makedirs(base, exist_ok=True)
        cfg = {
            "kme_id": f"KME-{site}",
            "data_dir": base,
            "ready_file": os.path.join(base, "ready.json"),
            "bridge": {
                "bind": "tcp://127.0.0.1:0",
                "secret_key_file": self.curve[f"kme-{site.lower()}"][1],
                "allowed_clients": {node: self.curve[node][0]},
            },
            "http": {
                "host": "127.0.0.1",
                "port": 0,
                "certfile": self.pki[f"KME-{site}"].cert,
                "keyfile": self.pki[f"KME-{site}"].key,
                "ca": self.pki["ca"].cert,
            },
            "store": {"max_key_count": self.max_key_count, "max_key_per_request": 1024},
            "links": {
                self.link_id: {
                    "peer_kme": f"KME-{peer_site}",
                    "key_size": self.key_size,
                    "node": node,
                }
            },
            "policy": [{"sae": sae, "peer": peer, "role": role, "link": self.link_id}],
        }
        path = os.path.join(base, "kme.yaml")
        with open(path, "w", encoding="utf-8") as fh:
            yaml.safe_dump(cfg, fh, sort_keys=False)
        return KmeProcess(site, path, cfg["ready_file"], os.path.join(base, "kme.log"))

    # -------------------------------------------------------------- accessors
    def kme(self, site: str) -> KmeProcess:
        return self.kmes[site.upper()[-1]]

    def url(self, site: str) -> str:
        return f"https://127.0.0.1:{self.kme(site).info['http_port']}"

    def db_path(self, site: str) -> str:
        return os.path.join(self.workdir, f"kme-{site.lower()[-1]}", "kme.sqlite")

    def node(self, side: str, link_id: str | None = None, **kwargs: Any) -> bridge.BridgeNode:
        """The bridge node of ``"alice"`` (feeds KME-A) or ``"bob"`` (feeds KME-B).

        Its outbox lives in ``workdir/<side>-outbox.sqlite``; asking again returns the same
        node. ``kwargs`` go to :class:`~kms_bridge.bridge.BridgeNode` (first call only).
        """
        if side not in SIDES:
            raise ValueError(f"side must be 'alice' or 'bob', got {side!r}")
        link = link_id or self.link_id
        if link != self.link_id:
            raise ValueError(f"these lab sites serve link {self.link_id!r}, not {link!r}")
        if side not in self._nodes:
            site = SIDES[side]
            server_pub = bridge.load_curve_keys(self.curve[f"kme-{site.lower()}"][0])[0]
            pub, sec = bridge.load_curve_keys(self.curve[side][1])
            assert sec is not None
            self._nodes[side] = bridge.BridgeNode(
                os.path.join(self.workdir, f"{side}-outbox.sqlite"),
                self.kme(site).info["bridge"],
                server_pub,
                pub,
                sec,
                link,
                **kwargs,
            )
        return self._nodes[side]

    def sae_client(self, role: str) -> SaeClient:
        """The master SAE's client (talks to KME-A) or the slave SAE's (talks to KME-B)."""
        if role not in ("master", "slave"):
            raise ValueError(f"role must be 'master' or 'slave', got {role!r}")
        sae, site = (self.master_id, "A") if role == "master" else (self.slave_id, "B")
        c = SaeClient(
            self.url(site), self.pki["ca"].cert, self.pki[sae].cert, self.pki[sae].key, sae_id=sae
        )
        self._clients.append(c)
        return c

    def kill_kme(self, site: str, sig: int = signal.SIGKILL) -> None:
        self.kme(site).kill(sig)

    def restart_kme(self, site: str, timeout: float = 60.0) -> None:
        """Start a (killed or stopped) KME again on the same ports and database."""
        kp = self.kme(site)
        kp.kill(signal.SIGTERM)
        kp.start(timeout)

    def stop(self) -> None:
        """Close clients and nodes (outboxes keep what is unacknowledged), stop both KMEs."""
        for c in self._clients:
            c.close()
        self._clients.clear()
        for n in self._nodes.values():
            n.close()
        self._nodes.clear()
        for kp in self.kmes.values():
            kp.kill(signal.SIGTERM)

    def __enter__(self) -> LabSites:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
