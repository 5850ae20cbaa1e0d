"""The on-disk store of built LDPC codes (hil.code_store): same matrix, built once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dsp.ldpc import LDPCCode
from dsp.reconciliation import CodeSpec, code_family
from hil import code_store


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(code_store.CACHE_ENV, str(tmp_path))
    return tmp_path


@pytest.fixture(scope="module")
def spec() -> CodeSpec:
    return next(s for s in code_family(10_000) if s.name == "met-r0.18")


def _same(a: LDPCCode, b: LDPCCode) -> bool:
    return (a.n, a.m, a.seed) == (b.n, b.m, b.seed) and all(
        np.array_equal(getattr(a, f), getattr(b, f)) and getattr(a, f).dtype == getattr(b, f).dtype
        for f in ("chk_ptr", "chk_var", "var_ptr", "var_edge", "var_kind")
    )


def _no_build(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(self: CodeSpec) -> LDPCCode:
        raise AssertionError(f"{self.name} was built, not loaded")

    monkeypatch.setattr(CodeSpec, "build", fail)


def test_a_stored_code_is_the_built_one_and_is_not_built_again(
    store: Path, spec: CodeSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = spec.build()
    first = code_store.load_or_build(spec)
    path = code_store.code_path(spec, store)
    assert path.is_file() and _same(first, built)
    assert [p.name for p in store.iterdir()] == [path.name]  # no temporary left behind
    _no_build(monkeypatch)
    loaded = code_store.load_or_build(spec)
    assert _same(loaded, built) and loaded.ensemble == spec.ensemble


def test_a_damaged_file_is_rebuilt_and_replaced(
    store: Path, spec: CodeSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = spec.build()
    code_store.load_or_build(spec)
    path = code_store.code_path(spec, store)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one flipped bit inside the check lists
    path.write_bytes(bytes(raw))
    assert _same(code_store.load_or_build(spec), built)
    path.write_bytes(b"not a numpy archive")
    assert _same(code_store.load_or_build(spec), built)
    _no_build(monkeypatch)  # the rebuilt file is whole again
    assert _same(code_store.load_or_build(spec), built)


def test_the_file_name_follows_everything_the_matrix_depends_on(spec: CodeSpec) -> None:
    import dataclasses

    d = Path("/nowhere")
    p = code_store.code_path(spec, d)
    assert code_store.code_path(dataclasses.replace(spec), d) == p
    # The decoder budget does not change the matrix; seed, length and construction do.
    assert code_store.code_path(dataclasses.replace(spec, max_iter=spec.max_iter + 1), d) == p
    for change in ({"seed": spec.seed + 1}, {"n": spec.n + 1}, {"cycles": spec.cycles + 1}):
        assert code_store.code_path(dataclasses.replace(spec, **change), d) != p


@pytest.mark.parametrize("value", ["", "off", "OFF"])
def test_the_store_can_be_turned_off(
    value: str, tmp_path: Path, spec: CodeSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(code_store.CACHE_ENV, value)
    monkeypatch.chdir(tmp_path)
    assert code_store.cache_dir() is None
    assert _same(code_store.load_or_build(spec), spec.build())
    assert list(tmp_path.iterdir()) == []


def test_default_directory_is_the_user_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(code_store.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "/var/cache/x")
    assert code_store.cache_dir() == Path("/var/cache/x/cvqkd-hil/codes")


def test_an_unwritable_store_still_gives_the_code(
    spec: CodeSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the directory should be")
    monkeypatch.setenv(code_store.CACHE_ENV, str(blocker / "codes"))
    assert _same(code_store.load_or_build(spec), spec.build())
