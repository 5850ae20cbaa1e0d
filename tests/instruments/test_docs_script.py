"""Criterion 7: the technician's scripts in README.md and docs/instruments.md run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import pyvisa

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("doc", ["docs/instruments.md", "README.md"])
def test_technician_script_runs(doc: str, capsys, monkeypatch) -> None:
    monkeypatch.setenv("QKDSIM_SEED", "3")
    DOC = ROOT / doc
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
    assert "200000 samples" in out
    assert re.search(r"end +at +25\.0\d km", out)  # the OTDR finds the default 25 km link's end
