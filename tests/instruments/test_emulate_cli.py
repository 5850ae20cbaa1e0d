"""``qkd-hil emulate --serve`` in a subprocess: prints one line per instrument, serves pyvisa-py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import pyvisa

pytest.importorskip("emulator.world")


def test_emulate_serve_subprocess() -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hil.cli", "emulate", "--serve", "--port", "0", "--seed", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("# serving"):
                break
            if not line.startswith("#"):
                lines.append(line.split())
        roles = {parts[0]: parts[2] for parts in lines}
        assert set(roles) == {"transmitter", "receiver", "otdr", "switch", "powermeter"}
        assert all(a.startswith("TCPIP0::127.0.0.1::") for a in roles.values())
        rm = pyvisa.ResourceManager("@py")
        tx = rm.open_resource(roles["transmitter"], read_termination="\n", write_termination="\n")
        tx.timeout = 10_000
        assert "transmitter" in tx.query("*IDN?")
        tx.write("SOUR1:GRID:CHAN 34")
        assert abs(float(tx.query("SOUR1:WAV?")) * 1e9 - 1550.12) <= 0.01
        tx.close()
        rm.close()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
