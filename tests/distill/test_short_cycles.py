"""Short cycles of degree-2 core bits are removed when a code is built (dsp.ldpc)."""

from collections import deque

import numpy as np
import pytest

from dsp.ldpc import LDPCCode, build_code
from dsp.reconciliation import met_ensemble


def _shortest_core_cycle(code: LDPCCode) -> int:
    """Length, in degree-2 core bits, of the shortest cycle they form through the core
    checks: plain breadth-first search per bit, independent of the builder's search."""
    kinds = code.ensemble.var_types
    one = np.array([d == (0, 0, 1) for _, d in kinds])[code.var_kind]
    two = np.array([d[0] == 2 for _, d in kinds])[code.var_kind]
    rows = np.repeat(np.arange(code.m), np.diff(code.chk_ptr))
    ldgm = np.zeros(code.m, dtype=bool)
    ldgm[rows[one[code.chk_var]]] = True
    sel = ~ldgm[rows] & two[code.chk_var]
    ends: dict[int, list[int]] = {}
    for r, v in zip(rows[sel].tolist(), code.chk_var[sel].tolist(), strict=True):
        ends.setdefault(v, []).append(r)
    adj: dict[int, list[tuple[int, int]]] = {}
    for v, (a, *rest) in ends.items():
        b = rest[0] if rest else a
        adj.setdefault(a, []).append((b, v))
        adj.setdefault(b, []).append((a, v))
    best = 10**9
    for v, ab in ends.items():
        if len(ab) == 1:  # both sockets on one check: the repeated edge was dropped
            return 1
        a, b = ab
        dist = {a: 0}
        queue = deque([a])
        while queue:
            c = queue.popleft()
            if dist[c] + 2 > best:
                break
            for n, w in adj[c]:
                if w != v and n not in dist:
                    dist[n] = dist[c] + 1
                    queue.append(n)
        if b in dist:
            best = min(best, dist[b] + 1)
    return best


@pytest.mark.parametrize("cycles", [3, 6])
def test_no_degree2_cycle_up_to_the_limit(cycles: int) -> None:
    ens = met_ensemble(0.065, 0.0906, 2.66, 0.41, "t", 4.7)
    code = build_code(ens, 100_000, seed=3, cycles=cycles)
    assert _shortest_core_cycle(code) > cycles
    assert _shortest_core_cycle(build_code(ens, 100_000, seed=3, cycles=1)) <= cycles


def test_chain_leaves_no_degree2_cycle_and_keeps_the_degrees() -> None:
    ens = met_ensemble(0.065, 0.0940, 2.78, 0.70, "t", 20.4)
    code = build_code(ens, 100_000, seed=3, chain=True)
    assert _shortest_core_cycle(code) == 10**9  # no cycle of degree-2 core bits at all
    free = build_code(ens, 100_000, seed=3, cycles=1)
    assert _shortest_core_cycle(free) < 10**9  # the random wiring at this length has some
    # Same variable degrees as the random wiring (the chain only moves sockets; either
    # wiring drops the odd repeated edge of a degree-3 bit).
    assert np.mean(np.diff(code.var_ptr) != np.diff(free.var_ptr)) < 1e-3
    assert abs(code.chk_var.size - free.chk_var.size) < 1e-3 * free.chk_var.size
    assert np.array_equal(build_code(ens, 100_000, seed=3, chain=True).chk_var, code.chk_var)


def test_chain_needs_fewer_degree2_bits_than_core_checks() -> None:
    crowded = met_ensemble(0.065, 0.0906, 2.66, 0.41, "t", 4.7)  # 53 k degree-2 bits, 26 k checks
    with pytest.raises(ValueError, match="raise the degree-3 share"):
        build_code(crowded, 100_000, seed=3, chain=True)
