"""Built LDPC codes kept on disk, so that each is built once per machine, not per process.

A 1e6-bit code of the family takes 7 .. 50 s to build (the short-cycle removal), and every
distillation worker process of a run, and every ``make bench`` worker, used to build the
codes it needed again. The matrices are public and deterministic, so a file per code under
the cache directory holds its check lists (about 18 MB for 1e6 bits) and is loaded in well
under a second.

Where: ``$CVQKD_CODE_CACHE`` if set (empty or ``off`` turns the store off), else
``$XDG_CACHE_HOME/cvqkd-hil/codes`` or ``~/.cache/cvqkd-hil/codes``. Deleting the directory
is always safe.

A file is named by a digest of everything the matrix depends on: the code's ensemble,
length, seed and construction options, the source of :mod:`dsp.ldpc` and the numpy version
(whose random streams the construction draws from). Alice and Bob on two hosts must hold
the same matrix; a stale file can therefore never stand in for a code built differently.
Files are written to a temporary name and renamed, and each carries the code's own
fingerprint (:attr:`dsp.ldpc.LDPCCode.digest`, the one the protocol compares), checked on
loading: a damaged file is rebuilt, never used.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from dsp import ldpc
from dsp.ldpc import LDPCCode
from dsp.reconciliation import CodeSpec

__all__ = ["CACHE_ENV", "cache_dir", "code_path", "load_or_build"]

CACHE_ENV = "CVQKD_CODE_CACHE"
FORMAT = 2


def cache_dir() -> Path | None:
    """The directory codes are kept in, or ``None`` when the store is turned off."""
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in ("", "off") else Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cvqkd-hil" / "codes"


@functools.cache
def _construction_digest() -> str:
    """Digest of what a code's matrix depends on beyond its spec: the construction code
    and the numpy version."""
    h = hashlib.sha256(Path(ldpc.__file__).read_bytes())
    h.update(np.__version__.encode())
    return h.hexdigest()


def code_path(spec: CodeSpec, directory: Path) -> Path:
    """The file that holds ``spec``'s matrix in ``directory``."""
    what = repr(
        (FORMAT, spec.ensemble, spec.n, spec.seed, spec.cycles, spec.chain, _construction_digest())
    )
    digest = hashlib.sha256(what.encode()).hexdigest()[:20]
    return directory / f"{spec.name}-n{spec.n}-{digest}.npz"


def _load(path: Path, spec: CodeSpec) -> LDPCCode:
    with np.load(path, allow_pickle=False) as f:
        chk_deg, chk_var, var_kind, digest = (
            f["chk_deg"],
            f["chk_var"],
            f["var_kind"],
            f["digest"],
        )
    chk_ptr = np.zeros(chk_deg.size + 1, dtype=np.int64)
    np.cumsum(chk_deg, out=chk_ptr[1:])
    code = LDPCCode.from_checks(chk_ptr, chk_var, var_kind, spec.seed, spec.ensemble)
    if code.digest != digest.tobytes():
        raise ValueError("digest mismatch")
    return code


def _save(path: Path, code: LDPCCode) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                chk_deg=np.diff(code.chk_ptr).astype(np.int32),
                chk_var=code.chk_var,
                var_kind=code.var_kind,
                digest=np.frombuffer(code.digest, dtype=np.uint8),
            )
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_or_build(spec: CodeSpec) -> LDPCCode:
    """``spec``'s code from the store, or built (and then stored) if it is not there.

    The store is best effort: a file that cannot be read or fails its digest is rebuilt
    and replaced.
    """
    directory = cache_dir()
    if directory is None:
        return spec.build()
    path = code_path(spec, directory)
    try:
        return _load(path, spec)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        pass  # not there yet, or damaged: built and (re)placed below
    code = spec.build()
    with contextlib.suppress(OSError):  # a read-only or full disk only costs the saving
        _save(path, code)
    return code
