"""The pairwise case generator of tests/ops/cases.py: every pair of values of every two factors
appears in some row, the rows are the same on every run, and there are far fewer of them than
the full product."""
from __future__ import annotations

import itertools
import math
import random

import pytest

import cases
import test_extrapolate_step
import test_model_step
import test_transition_dots


def uncovered(factors, rows):
    """The (factor, value, factor, value) pairs no row holds."""
    missing = []
    for (f, values), (g, others) in itertools.combinations(factors.items(), 2):
        for a, b in itertools.product(values, others):
            if not any(row[f] == a and row[g] == b for row in rows):
                missing.append((f, a, g, b))
    return missing


FACTOR_SETS = [
    {"a": [0, 1, 2], "b": [0, 1], "c": ["x", "y"], "d": [None, 5]},
    {"one": [1], "two": [1, 2]},
    {"only": [1, 2, 3]},
    {f"f{i}": list(range(n)) for i, n in enumerate(random.Random(0).choices(range(1, 6), k=9))},
]


@pytest.mark.parametrize("factors", FACTOR_SETS, ids=lambda f: "x".join(str(len(v)) for v in f.values()))
def test_pairwise_covers_every_pair(factors):
    rows = cases.pairwise(factors)
    assert all(set(row) == set(factors) for row in rows)
    if len(factors) > 1:
        assert not uncovered(factors, rows)
    else:
        assert [row["only"] for row in rows] == factors["only"]
    assert rows == cases.pairwise(factors)  # deterministic
    sizes = sorted(len(v) for v in factors.values())
    assert len(rows) <= math.prod(sizes)


def test_the_op_matrices_cover_every_pair_and_every_shape_with_every_dtype():
    """The matrices of the per-op tests: all pairs, so shape x dtype in full, and far fewer rows
    than the product of the factors."""
    for name, module, factors in [
        ("model_step", test_model_step, dict(
            shape=cases.SHAPES, dtype=list(cases.STORAGE), reads=[0, 1, 2, 3], cfg=[False, True], noise=[False, True],
            step=list(cases.STEPS), step_kind=["int", "tensor", "int32"], alias=[None, "x"], strided=[False, True])),
        ("extrapolate_step", test_extrapolate_step, dict(
            shape=cases.SHAPES, dtype=list(cases.STORAGE), reads=[0, 1, 2], step=list(cases.STEPS),
            step_kind=["int", "tensor", "int32"], alias=[None, "x", "x_prev"], strided=[False, True])),
        ("transition_dots", test_transition_dots, dict(
            shape=cases.DOTS_SHAPES, dtype=list(cases.STORAGE), strided=[False, True])),
    ]:
        rows = module.MATRIX
        assert rows == cases.pairwise(factors), f"{name}: the test's factors changed; update this test"
        assert not uncovered(factors, rows), name
        assert {(tuple(r["shape"]), r["dtype"]) for r in rows} == set(itertools.product(
            map(tuple, factors["shape"]), factors["dtype"])), name
        assert len(rows) <= 30 < math.prod(len(v) for v in factors.values()), (name, len(rows))
