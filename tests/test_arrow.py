"""The pandas-free Arrow conversions: the same values, types and nulls as the pyarrow calls they
stand for (which may import pandas here: the tests compare against them)."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from batchrunner import arrow

NUMERIC = [pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint32(), pa.uint64(),
           pa.float32(), pa.float64()]


def test_builders_match_pa_array() -> None:
    values = np.array([3, -1, 0, 7, 2**40], dtype=np.int64)
    valid = np.array([True, False, True, True, False])
    assert arrow.int64_array(values).equals(pa.array(values))
    assert arrow.int64_array(values, valid).equals(pa.array(values, mask=~valid))
    assert arrow.int64_array(values, np.ones(5, dtype=np.bool_)).null_count == 0
    small = values[:4].astype(np.int8)
    assert arrow.int8_array(small, valid[:4]).equals(pa.array(small, mask=~valid[:4]))
    floats = np.array([1.5, math.nan, -0.0, math.inf, 2.0])
    built = arrow.float64_array(floats, valid)
    assert built.equals(pa.array(floats, mask=~valid))
    assert built.to_pylist()[0] == 1.5 and built.null_count == 2
    assert math.isnan(arrow.float64_array(floats)[1].as_py())  # NaN stays a value, not a null
    bits = np.arange(19) % 3 == 0
    assert arrow.bool_array(bits).equals(pa.array(bits))
    assert arrow.bool_array(bits, np.arange(19) % 4 != 0).equals(
        pa.array(bits, mask=np.arange(19) % 4 == 0))
    for build in (arrow.int64_array, arrow.int8_array, arrow.float64_array, arrow.bool_array):
        empty = build(np.empty(0))
        assert len(empty) == 0 and empty.null_count == 0
        empty.validate(full=True)
    with pytest.raises(ValueError):
        arrow.int64_array(values, valid[:3])


def test_string_array_matches_pa_array() -> None:
    class Text(str):
        pass

    for values in ([], [None], [None, None, None], ["ok", None, "", "naïve ✓", "x" * 1000, None],
                   ["a"] * 5, ["ascii", "only", ""], ("a tuple", None), ["é", "ü", "✓"],
                   [None, "ü", None], [Text("sub"), "class", None], [""] * 3):
        built = arrow.string_array(values)
        built.validate(full=True)
        assert built.equals(pa.array(values, type=pa.string())), values
        assert built.to_pylist() == list(values)
    # A lone surrogate is refused as by pa.array, or replaced when asked.
    with pytest.raises((pa.ArrowInvalid, UnicodeEncodeError)):
        arrow.string_array(["ok", "bad \ud800"])
    assert arrow.string_array(["ok", "bad \ud800", None], replace_invalid=True).to_pylist() == [
        "ok", "bad ?", None]
    # What is not a str goes to pa.array, which refuses it as before.
    with pytest.raises((pa.ArrowTypeError, pa.ArrowInvalid)):
        arrow.string_array([1, "a"])  # type: ignore[list-item]


@pytest.mark.parametrize("typ", NUMERIC)
def test_to_numpy_numbers(typ: pa.DataType) -> None:
    base = pa.array([1, None, 3, 4, None, 6, 7, 0, 9, 10], type=typ)
    for arr in (base, base.slice(1), base.slice(3, 4), base.slice(10), base.slice(2, 1)):
        got = arrow.to_numpy(arr, fill=0)
        expected = pc.fill_null(arr, 0).to_numpy(zero_copy_only=False)
        assert got.dtype == expected.dtype and got.tolist() == expected.tolist()
    no_nulls = base.drop_null()
    assert arrow.to_numpy(no_nulls.slice(2)).tolist() == no_nulls.slice(2).to_pylist()
    with pytest.raises(ValueError):
        arrow.to_numpy(base)  # nulls and no fill


def test_to_numpy_floats_fill_nan() -> None:
    arr = pa.array([1.0, None, math.nan, 4.0]).slice(1)
    got = arrow.to_numpy(arr, fill=math.nan)
    assert got.dtype == np.float64 and np.isnan(got[:2]).all() and got[2] == 4.0


def test_to_numpy_booleans() -> None:
    rng = np.random.default_rng(0)
    values = rng.random(77) < 0.5
    nulls = rng.random(77) < 0.2
    base = pa.array(values, mask=nulls)
    for start in range(0, 20):
        for length in (0, 1, 7, 8, 9, 33, 77 - start):
            arr = base.slice(start, length)
            for fill in (False, True):
                got = arrow.to_numpy(arr, fill=fill)
                expected = pc.fill_null(arr, fill).to_numpy(zero_copy_only=False)
                assert got.dtype == np.bool_
                assert got.tolist() == expected.tolist()


def test_to_numpy_chunked() -> None:
    a = pa.array([1, 2, None, 4], pa.int64())
    chunked = pa.chunked_array([a.slice(1), a.slice(0, 0), a.slice(3)])
    assert arrow.to_numpy(chunked, fill=-1).tolist() == [2, -1, 4, 4]
    assert arrow.to_numpy(pa.chunked_array([a.slice(3)])).tolist() == [4]
    empty = arrow.to_numpy(pa.chunked_array([], pa.float64()))
    assert empty.dtype == np.float64 and len(empty) == 0
    assert arrow.to_numpy(pa.chunked_array([], pa.bool_())).dtype == np.bool_
    bools = pa.chunked_array([pa.array([True, None]), pa.array([False, True, True]).slice(1)])
    assert arrow.to_numpy(bools, fill=False).tolist() == [True, False, True, True]


def test_scalars() -> None:
    for typ in NUMERIC:
        s = arrow.scalar(5, typ)
        assert s.type == typ and s.as_py() == 5
    assert arrow.scalar(False, pa.bool_()).as_py() is False
    assert arrow.scalar(True, pa.bool_()).as_py() is True
    assert math.isnan(arrow.scalar(math.nan, pa.float64()).as_py())
    assert arrow.scalar("ok", pa.string()).equals(pa.scalar("ok"))
    for typ in (pa.int64(), pa.string(), pa.bool_()):
        n = arrow.null_scalar(typ)
        assert n.type == typ and not n.is_valid
    with pytest.raises(TypeError):
        arrow.scalar(1, pa.string())
    with pytest.raises(TypeError):
        arrow.scalar(1, pa.date32())


def test_is_value() -> None:
    col = pa.array(["ok", None, "failed", "ok", "oks"]).slice(1)
    assert arrow.is_value(col, "ok").equals(pc.equal(col, "ok"))
    chunked = pa.chunked_array([col, col.slice(2)])
    assert arrow.is_value(chunked, "failed").equals(pc.equal(chunked, "failed"))


def test_group_codes() -> None:
    col = pa.chunked_array([pa.array(["b", None, "a"]), pa.array(["a", "b", None, "c"]).slice(1)])
    codes, values = arrow.group_codes(col)
    assert values == ["b", None, "a", "c"]  # in order of first appearance
    assert codes.tolist() == [0, 1, 2, 0, 1, 3]
    assert [values[c] for c in codes.tolist()] == col.to_pylist()
    codes, values = arrow.group_codes(pa.chunked_array([], pa.string()))
    assert len(codes) == 0 and values == []
    codes, values = arrow.group_codes(pa.nulls(2, pa.string()))
    assert codes.tolist() == [0, 0] and values == [None]


def test_maps_are_dicts_on_every_pyarrow_a_key_given_twice_with_its_last_value() -> None:
    """A map's Python value is made a dict by batchrunner (to_pylist's maps_as_pydicts is
    newer than pyarrow 16), quietly: pyarrow's warned once a row of a key given twice."""
    maps = pa.array([[("k", 1), ("k", 2)], None, [("a", 3)]], pa.map_(pa.string(), pa.int64()))
    deep = pa.array([[{"m": [("x", 0.7)]}], None],
                    pa.list_(pa.struct([("m", pa.map_(pa.string(), pa.float32()))])))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert arrow.nested_values(maps) == [{"k": 2}, None, {"a": 3}]
        assert arrow.prompt_text(maps).to_pylist() == ['{"k":2}', None, '{"a":3}']
        assert arrow.nested_values(deep) == [[{"m": {"x": 0.7}}], None]
        assert arrow.nested_values(pa.chunked_array([maps, maps])) == [{"k": 2}, None,
                                                                     {"a": 3}] * 2


def test_helpers_do_not_import_pandas() -> None:
    code = """
import math, sys
import numpy as np, pyarrow as pa, pyarrow.compute as pc
from batchrunner import arrow
a = arrow.int64_array(np.arange(10), np.arange(10) % 3 != 0).slice(2)
b = arrow.bool_array(np.arange(10) % 2 == 0, np.arange(10) % 3 != 0).slice(3)
s = arrow.string_array(["ok", None, "failed"])
arrow.to_numpy(a, fill=0); arrow.to_numpy(b, fill=False)
arrow.to_numpy(pa.chunked_array([a, a]), fill=-1)
arrow.to_numpy(pc.cast(a, pa.float64()), fill=math.nan)
arrow.float64_array(np.ones(3)); arrow.int8_array(np.ones(3))
arrow.is_value(s, "ok"); arrow.group_codes(s)
pc.if_else(arrow.is_value(s, "ok"), arrow.int64_array([1, 2, 3]), arrow.null_scalar(pa.int64()))
for t in (pa.int64(), pa.float64(), pa.bool_()):
    arrow.scalar(1, t)
import io, pyarrow.json as pj
t = pj.read_json(io.BytesIO(b'{"f": 0.5, "l": [1], "m": {"k": 1}, "i": 1, "d": "a"}'))
for column in [*t.columns, pc.cast(t["d"], pa.binary())]:
    arrow.prompt_text(column.combine_chunks())
arrow.prompt_text(arrow.string_array(["a", "a"]).dictionary_encode())
assert "pandas" not in sys.modules, "pandas was imported"
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize(("typ", "values"), [
    (pa.int64(), [1, None, -(2**63), 2**63 - 1, 0]),
    (pa.float64(), [1.5, None, math.inf, -0.0]),
    (pa.bool_(), [True, None, False, True] * 5),
    (pa.string(), ["a", None, "✓"]),
    (pa.int64(), []),
    (pa.bool_(), [None, None]),
])
def test_typed_array_matches_pa_array(typ: pa.DataType, values: list[object]) -> None:
    built = arrow.typed_array(values, typ)
    assert built is not None
    built.validate(full=True)
    assert built.equals(pa.array(values, type=typ))


@pytest.mark.parametrize(("typ", "values"), [
    (pa.int64(), [1, 2**63]),  # beyond int64: pa.array refuses it
    (pa.int64(), [1, 1.5]),  # pa.array cuts the float to an int
    (pa.int64(), [True]),
    (pa.float64(), [1.0, 1]),
    (pa.bool_(), [True, 1]),
    (pa.string(), ["a", 1]),
    (pa.date32(), [None]),
])
def test_typed_array_leaves_other_values_to_pa_array(typ: pa.DataType,
                                                     values: list[object]) -> None:
    assert arrow.typed_array(values, typ) is None
