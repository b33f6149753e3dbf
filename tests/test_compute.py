"""``batchrunner.compute`` gives what ``pyarrow.compute`` gives, for every function it has."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as apc
import pytest

from batchrunner import compute

F = pa.array([1.5, None, float("nan"), -2.5, 0.5, float("inf")])
N = pa.array([3, None, 1, 3, 7, 0], pa.int64())
J = pa.chunked_array([[2, 2, None], [5, 1, 0]], pa.int64())
B = pa.array([True, False, None, True, None, False])
C = pa.array([False, False, True, None, True, True])
S = pa.array(["b", "a", None, "b", "12", "c"])
T = pa.table({"k": ["b", "a", "b", "a", "c", "a"], "v": [3.0, 1.0, None, 2.0, 5.0, 1.0]})
STAMPS = pa.array([0, 1_764_000_000_123, None], pa.timestamp("ms", tz="UTC"))
ZERO = pa.scalar(0, pa.int64())

# name: (ours, pyarrow.compute's) over the same arguments
CASES: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
    "equal": (lambda: compute.equal(N, J), lambda: apc.equal(N, J)),
    "less": (lambda: compute.less(F, pa.scalar(1.0)), lambda: apc.less(F, pa.scalar(1.0))),
    "greater": (lambda: compute.greater(N, ZERO), lambda: apc.greater(N, ZERO)),
    "greater_equal": (lambda: compute.greater_equal(J, N), lambda: apc.greater_equal(J, N)),
    "and_": (lambda: compute.and_(B, C), lambda: apc.and_(B, C)),
    "or_": (lambda: compute.or_(B, C), lambda: apc.or_(B, C)),
    "invert": (lambda: compute.invert(B), lambda: apc.invert(B)),
    "is_null": (lambda: compute.is_null(F), lambda: apc.is_null(F)),
    "is_valid": (lambda: compute.is_valid(J), lambda: apc.is_valid(J)),
    "is_nan": (lambda: compute.is_nan(F), lambda: apc.is_nan(F)),
    "is_finite": (lambda: compute.is_finite(F), lambda: apc.is_finite(F)),
    "add": (lambda: compute.add(N, J), lambda: apc.add(N, J)),
    "subtract": (lambda: compute.subtract(N, ZERO), lambda: apc.subtract(N, ZERO)),
    "multiply": (lambda: compute.multiply(F, pa.scalar(1000.0)),
                 lambda: apc.multiply(F, pa.scalar(1000.0))),
    "round": (lambda: compute.round(F), lambda: apc.round(F)),
    "if_else": (lambda: compute.if_else(B, N, J), lambda: apc.if_else(B, N, J)),
    "coalesce": (lambda: compute.coalesce(N, J, ZERO), lambda: apc.coalesce(N, J, ZERO)),
    "min_element_wise": (lambda: compute.min_element_wise(N, pa.scalar(2, pa.int64())),
                         lambda: apc.min_element_wise(N, pa.scalar(2, pa.int64()))),
    "fill_null": (lambda: compute.fill_null(N, ZERO), lambda: apc.fill_null(N, ZERO)),
    "cast": (lambda: compute.cast(N, pa.string()), lambda: apc.cast(N, pa.string())),
    "cast_table": (lambda: compute.cast_table(T, pa.schema([("k", pa.large_string()),
                                                            ("v", pa.float32())])),
                   lambda: T.cast(pa.schema([("k", pa.large_string()), ("v", pa.float32())]))),
    "dictionary_encode": (lambda: compute.dictionary_encode(S, null_encoding="encode"),
                          lambda: apc.dictionary_encode(S, null_encoding="encode")),
    "index_in": (lambda: compute.index_in(S, value_set=pa.array(["c", "b"])),
                 lambda: apc.index_in(S, value_set=pa.array(["c", "b"]))),
    "is_in": (lambda: compute.is_in(N, value_set=pa.array([3, 0])),
              lambda: apc.is_in(N, value_set=pa.array([3, 0]))),
    "count_substring": (lambda: compute.count_substring(S, "b"),
                        lambda: apc.count_substring(S, "b")),
    "match_substring": (lambda: compute.match_substring(S, "b"),
                        lambda: apc.match_substring(S, "b")),
    "match_substring_regex": (lambda: compute.match_substring_regex(S, "^[0-9]+$"),
                              lambda: apc.match_substring_regex(S, "^[0-9]+$")),
    "strftime": (lambda: compute.strftime(STAMPS, format="%Y-%m-%dT%H:%M:%S%Ez"),
                 lambda: apc.strftime(STAMPS, format="%Y-%m-%dT%H:%M:%S%Ez")),
    "quantile": (lambda: compute.quantile(F, q=[0.5, 0.95]),
                 lambda: apc.quantile(F, q=[0.5, 0.95])),
    "select_k_unstable": (
        lambda: compute.select_k_unstable(T, k=2, sort_keys=[("v", "descending")]),
        lambda: apc.select_k_unstable(T, k=2, sort_keys=[("v", "descending")])),
    "sort_indices": (lambda: compute.sort_indices(S), lambda: apc.sort_indices(S)),
    "search_sorted": (lambda: compute.search_sorted(pa.array([1, 3, 3, 8]), N),
                      lambda: apc.search_sorted(pa.array([1, 3, 3, 8]), N)),
    "take": (lambda: compute.take(T, pa.array([4, 0, 0])), lambda: T.take(pa.array([4, 0, 0]))),
    "filter": (lambda: compute.filter(T, B), lambda: T.filter(B)),
    "drop_null": (lambda: compute.drop_null(J), lambda: J.drop_null()),
    "sort_by": (lambda: compute.sort_by(T, [("k", "ascending"), ("v", "descending")]),
                lambda: T.sort_by([("k", "ascending"), ("v", "descending")])),
    "value_counts": (lambda: compute.value_counts(S), lambda: apc.value_counts(S)),
    "sum": (lambda: compute.sum(J), lambda: apc.sum(J)),
    "mean": (lambda: compute.mean(F), lambda: apc.mean(F)),
    "max": (lambda: compute.max(N), lambda: apc.max(N)),
    "all": (lambda: compute.all(B), lambda: apc.all(B)),
    "any": (lambda: compute.any(B), lambda: apc.any(B)),
    "count_distinct": (lambda: compute.count_distinct(S), lambda: apc.count_distinct(S)),
}


def test_every_function_has_a_case() -> None:
    assert set(CASES) == set(compute.__all__)


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_same_result_as_pyarrow_compute(name: str) -> None:
    ours, theirs = CASES[name]
    if getattr(compute, name) is None:  # search_sorted before pyarrow 26: neither has it
        assert not hasattr(apc, name)
        return
    got, want = ours(), theirs()
    assert type(got) is type(want)
    assert got.type == want.type if hasattr(want, "type") else got.schema == want.schema
    # NaN equals nothing, so arrays holding one are compared by their values' repr
    assert got.equals(want) or repr(_values(got)) == repr(_values(want)), (got, want)


def _values(x: Any) -> Any:
    return x.as_py() if isinstance(x, pa.Scalar) else x.to_pylist()


def test_fill_null_casts_the_fill_value_to_the_values_type() -> None:
    got = compute.fill_null(pa.array([1.5, None]), pa.scalar(0, pa.int64()))
    assert got.equals(apc.fill_null(pa.array([1.5, None]), 0))


def test_errors_are_pyarrow_computes() -> None:
    with pytest.raises(pa.ArrowInvalid, match="truncated"):
        compute.cast(pa.array([1.5]), pa.int64())
    with pytest.raises(pa.ArrowInvalid):
        apc.cast(pa.array([1.5]), pa.int64())
    with pytest.raises(IndexError):
        compute.take(N, pa.array([99]))
    with pytest.raises(ValueError, match="not the schema's"):
        compute.cast_table(T, pa.schema([("v", pa.float64()), ("k", pa.string())]))


def test_works_from_the_public_module_where_the_private_one_is_gone() -> None:
    code = ("import sys\n"
            "import pyarrow as pa, pyarrow.compute\n"
            "sys.modules['pyarrow._compute'] = None  # from now on, importing it fails\n"
            "from batchrunner import compute\n"
            "print(compute.cast(compute.take(pa.array([3, 1]), pa.array([1])), pa.string()))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert '"1"' in done.stdout
