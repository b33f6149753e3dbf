"""The Arrow compute functions batchrunner calls, without importing ``pyarrow.compute``.

Importing ``pyarrow.compute`` costs every run 35–40 ms of CPU (about 175 M instructions, a ninth
of what a run costs besides its requests): it builds a Python wrapper, with parsed docs, for each
of Arrow's ~290 functions. Each function here calls Arrow's function of the same name through
``pyarrow._compute.call_function``, with the options ``pyarrow.compute``'s wrapper would build, so
it returns the same values and raises the same errors. ``Array.take``, ``Table.filter``,
``ChunkedArray.cast``, ``Table.sort_by`` and the like import ``pyarrow.compute`` themselves, so
batchrunner's modules call ``take``, ``filter``, ``cast`` and ``sort_by`` from here instead
(``tests/test_imports.py`` checks that a run, ``report`` and ``status`` never import it).

Arguments are Arrow values (arrays, chunked arrays, scalars, tables): a plain Python value would
go through ``pa.scalar``, which imports pandas (see ``batchrunner.arrow``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

try:
    from pyarrow._compute import (
        CastOptions,
        DictionaryEncodeOptions,
        FilterOptions,
        MatchSubstringOptions,
        QuantileOptions,
        SelectKOptions,
        SetLookupOptions,
        SortOptions,
        StrftimeOptions,
        TakeOptions,
        call_function,
    )
except ImportError:  # a pyarrow that moved its private module: the public one has them all
    from pyarrow.compute import (
        CastOptions,
        DictionaryEncodeOptions,
        FilterOptions,
        MatchSubstringOptions,
        QuantileOptions,
        SelectKOptions,
        SetLookupOptions,
        SortOptions,
        StrftimeOptions,
        TakeOptions,
        call_function,
    )

__all__ = [
    "add", "all", "and_", "cast", "cast_table", "coalesce", "count_distinct", "dictionary_encode",
    "drop_null", "equal", "fill_null", "filter", "greater", "greater_equal", "if_else",
    "index_in", "invert", "is_finite", "is_in", "is_nan", "is_null", "is_valid", "less",
    "match_substring_regex", "max", "mean", "min_element_wise", "multiply", "or_", "quantile",
    "round", "search_sorted", "select_k_unstable", "sort_by", "sort_indices", "strftime",
    "subtract", "sum", "take", "value_counts",
]

# An Arrow array, chunked array, scalar, record batch or table (pyarrow ships no type hints).
Datum = Any
SortKeys = Sequence[tuple[str, str]]


# Element-wise, no options.

def equal(x: Datum, y: Datum) -> Datum:
    return call_function("equal", [x, y])


def less(x: Datum, y: Datum) -> Datum:
    return call_function("less", [x, y])


def greater(x: Datum, y: Datum) -> Datum:
    return call_function("greater", [x, y])


def greater_equal(x: Datum, y: Datum) -> Datum:
    return call_function("greater_equal", [x, y])


def and_(x: Datum, y: Datum) -> Datum:
    return call_function("and", [x, y])


def or_(x: Datum, y: Datum) -> Datum:
    return call_function("or", [x, y])


def invert(x: Datum) -> Datum:
    return call_function("invert", [x])


def is_null(x: Datum) -> Datum:
    return call_function("is_null", [x])


def is_valid(x: Datum) -> Datum:
    return call_function("is_valid", [x])


def is_nan(x: Datum) -> Datum:
    return call_function("is_nan", [x])


def is_finite(x: Datum) -> Datum:
    return call_function("is_finite", [x])


def add(x: Datum, y: Datum) -> Datum:
    return call_function("add", [x, y])


def subtract(x: Datum, y: Datum) -> Datum:
    return call_function("subtract", [x, y])


def multiply(x: Datum, y: Datum) -> Datum:
    return call_function("multiply", [x, y])


def round(x: Datum) -> Datum:
    """To the nearest integer, ties to even."""
    return call_function("round", [x])


def if_else(cond: Datum, left: Datum, right: Datum) -> Datum:
    return call_function("if_else", [cond, left, right])


def coalesce(*values: Datum) -> Datum:
    return call_function("coalesce", list(values))


def min_element_wise(*values: Datum) -> Datum:
    return call_function("min_element_wise", list(values))


def fill_null(values: Datum, fill_value: Datum) -> Datum:
    """``values`` with each null replaced by ``fill_value`` (an Arrow scalar or array)."""
    if fill_value.type != values.type:
        fill_value = call_function("cast", [fill_value], CastOptions.safe(values.type))
    return call_function("coalesce", [values, fill_value])


# With options.

def cast(values: Datum, target_type: pa.DataType) -> Datum:
    """``values`` as ``target_type``, raising where a value would change (a safe cast)."""
    return call_function("cast", [values], CastOptions.safe(target_type))


def cast_table(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with each column cast (safely) to ``schema``'s type for it, as
    ``Table.cast(schema)``: the columns' names must be ``schema``'s, in its order."""
    if table.schema.names != schema.names:
        raise ValueError(f"the columns {table.schema.names!r} are not the schema's "
                         f"{schema.names!r}")
    return pa.Table.from_arrays([cast(column, field.type)
                                 for column, field in zip(table.columns, schema, strict=True)],
                                schema=schema)


def dictionary_encode(values: Datum, null_encoding: str = "mask") -> Datum:
    return call_function("dictionary_encode", [values], DictionaryEncodeOptions(null_encoding))


def index_in(values: Datum, *, value_set: pa.Array) -> Datum:
    return call_function("index_in", [values], SetLookupOptions(value_set))


def is_in(values: Datum, *, value_set: pa.Array) -> Datum:
    return call_function("is_in", [values], SetLookupOptions(value_set))


def match_substring_regex(strings: Datum, pattern: str) -> Datum:
    return call_function("match_substring_regex", [strings], MatchSubstringOptions(pattern))


def strftime(timestamps: Datum, *, format: str) -> Datum:
    return call_function("strftime", [timestamps], StrftimeOptions(format))


def quantile(values: Datum, *, q: Sequence[float]) -> Datum:
    return call_function("quantile", [values], QuantileOptions(q=list(q)))


def select_k_unstable(data: Datum, *, k: int, sort_keys: SortKeys) -> Datum:
    return call_function("select_k_unstable", [data], SelectKOptions(k, list(sort_keys)))


def sort_indices(data: Datum, sort_keys: SortKeys | None = None) -> Datum:
    """Indices that sort ``data``; an array ascending, a table by ``sort_keys``."""
    options = None if sort_keys is None else SortOptions(list(sort_keys))
    return call_function("sort_indices", [data], options)


def search_sorted(sorted_values: Datum, needles: Datum) -> Datum:
    """For each needle, the first index of ``sorted_values`` not less than it."""
    return call_function("search_sorted", [sorted_values, needles])


# Selections: what Array.take, Table.filter, Table.sort_by and the like do.

def take(data: Datum, indices: Datum) -> Datum:
    return call_function("take", [data, indices], TakeOptions(boundscheck=True))


def filter(data: Datum, mask: Datum) -> Datum:
    """The rows of ``data`` where ``mask`` is true (a null drops the row)."""
    return call_function("filter", [data, mask], FilterOptions("drop"))


def drop_null(data: Datum) -> Datum:
    return call_function("drop_null", [data])


def sort_by(table: pa.Table, sort_keys: SortKeys) -> pa.Table:
    """``table``'s rows sorted by ``sort_keys`` ((column, "ascending" or "descending") pairs)."""
    return take(table, sort_indices(table, sort_keys))


def value_counts(values: Datum) -> Datum:
    return call_function("value_counts", [values])


# Aggregates (nulls skipped; null when nothing is left).

def sum(values: Datum) -> pa.Scalar:
    return call_function("sum", [values])


def mean(values: Datum) -> pa.Scalar:
    return call_function("mean", [values])


def max(values: Datum) -> pa.Scalar:
    return call_function("max", [values])


def all(values: Datum) -> pa.Scalar:
    return call_function("all", [values])


def count_distinct(values: Datum) -> pa.Scalar:
    return call_function("count_distinct", [values])
