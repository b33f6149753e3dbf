"""The Arrow compute functions batchrunner calls, without importing ``pyarrow.compute``.

Importing ``pyarrow.compute`` costs every run 35–40 ms of CPU (about 175 M instructions, a ninth
of what a run costs besides its requests): it builds a Python wrapper, with parsed docs, for each
of Arrow's ~290 functions. Each function here calls Arrow's function of the same name through
``pyarrow._compute.call_function``, with the options ``pyarrow.compute``'s wrapper would build, so
it returns the same values (``tests/test_compute.py`` compares them). ``Array.take``,
``Table.filter``, ``ChunkedArray.cast``, ``Table.sort_by`` and the like import
``pyarrow.compute`` themselves, so batchrunner's modules call ``take``, ``filter``, ``cast`` and
``sort_by`` from here instead (``tests/test_imports.py`` checks that a run, ``report`` and
``status`` never import it).

Arguments are Arrow values (arrays, chunked arrays, scalars, tables): a plain Python value would
go through ``pa.scalar``, which imports pandas (see ``batchrunner.arrow``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
        function_registry,
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
        function_registry,
    )

__all__ = [
    "add", "all", "and_", "any", "cast", "cast_table", "coalesce", "count_distinct",
    "count_substring", "dictionary_encode", "drop_null", "equal", "fill_null", "filter",
    "greater", "greater_equal", "if_else", "index_in", "invert", "is_finite", "is_in", "is_nan",
    "is_null", "is_valid", "less", "match_substring", "match_substring_regex", "max", "mean",
    "min_element_wise", "multiply", "or_", "quantile", "round", "search_sorted",
    "select_k_unstable", "sort_by", "sort_indices", "strftime", "subtract", "sum", "take",
    "value_counts",
]

# An Arrow array, chunked array, scalar, record batch or table (pyarrow ships no type hints).
Datum = Any
SortKeys = Sequence[tuple[str, str]]


# With Arrow's default options, the arguments in order: element-wise (``round`` to the nearest
# integer, ties to even; ``coalesce`` and ``min_element_wise`` take any number), selections,
# and aggregates (nulls skipped; null when nothing is left). ``search_sorted`` gives, for each
# needle, the first index of the sorted values not less than it: None with a pyarrow older than
# that function (26), which the callers do without.

def _with_defaults(name: str) -> Callable[..., Datum]:
    """Arrow's function ``name``, called with its default options."""
    def call(*args: Datum) -> Datum:
        return call_function(name, list(args))
    call.__name__ = call.__qualname__ = name
    return call


equal = _with_defaults("equal")
less = _with_defaults("less")
greater = _with_defaults("greater")
greater_equal = _with_defaults("greater_equal")
and_ = _with_defaults("and")
or_ = _with_defaults("or")
invert = _with_defaults("invert")
is_null = _with_defaults("is_null")
is_valid = _with_defaults("is_valid")
is_nan = _with_defaults("is_nan")
is_finite = _with_defaults("is_finite")
add = _with_defaults("add")
subtract = _with_defaults("subtract")
multiply = _with_defaults("multiply")
round = _with_defaults("round")
if_else = _with_defaults("if_else")
coalesce = _with_defaults("coalesce")
min_element_wise = _with_defaults("min_element_wise")
search_sorted: Callable[..., Datum] | None = (
    _with_defaults("search_sorted")
    if "search_sorted" in function_registry().list_functions() else None)
drop_null = _with_defaults("drop_null")
value_counts = _with_defaults("value_counts")
sum = _with_defaults("sum")
mean = _with_defaults("mean")
max = _with_defaults("max")
all = _with_defaults("all")
any = _with_defaults("any")
count_distinct = _with_defaults("count_distinct")


def fill_null(values: Datum, fill_value: Datum) -> Datum:
    """``values`` with each null replaced by ``fill_value`` (an Arrow scalar or array)."""
    if fill_value.type != values.type:
        fill_value = call_function("cast", [fill_value], CastOptions.safe(values.type))
    return call_function("coalesce", [values, fill_value])


# With options of their own.

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


def count_substring(strings: Datum, pattern: str) -> Datum:
    return call_function("count_substring", [strings], MatchSubstringOptions(pattern))


def match_substring(strings: Datum, pattern: str) -> Datum:
    return call_function("match_substring", [strings], MatchSubstringOptions(pattern))


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


# Selections: what Array.take, Table.filter, Table.sort_by and the like do.

def take(data: Datum, indices: Datum) -> Datum:
    return call_function("take", [data, indices], TakeOptions(boundscheck=True))


def filter(data: Datum, mask: Datum) -> Datum:
    """The rows of ``data`` where ``mask`` is true (a null drops the row)."""
    return call_function("filter", [data, mask], FilterOptions("drop"))


def sort_by(table: pa.Table, sort_keys: SortKeys) -> pa.Table:
    """``table``'s rows sorted by ``sort_keys`` ((column, "ascending" or "descending") pairs)."""
    return take(table, sort_indices(table, sort_keys))
