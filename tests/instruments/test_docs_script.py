"""Criterion 7: the technician's script in docs/instruments.md runs as written on ``@qkdsim``."""

from __future__ import annotations

import re
from pathlib import Path

import pyvisa

DOC = Path(__file__).resolve().parents[2] / "docs" / "instruments.md"


def test_technician_script_runs(capsys, monkeypatch) -> None:
    monkeypatch.setenv("QKDSIM_SEED", "3")
    text = DOC.read_text(encoding="utf-8")
    script = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    assert 'ResourceManager("@qkdsim")' in script
    namespace: dict = {}
    try:
        exec(compile(script, str(DOC), "exec"), namespace)
    finally:
        rm = namespace.get("rm")
        if isinstance(rm, pyvisa.ResourceManager):
            rm.close()
    out = capsys.readouterr().out
    assert "transmitter at 1550.12 nm" in out
    assert "samples at 1 GSa/s" in out
