"""Arrow ↔ numpy conversions, Arrow scalars and group codes that keep pandas out of the process.

pyarrow imports pandas (about 0.2 s of CPU and 35 MB) the first time it converts a Python or
numpy value: ``pa.scalar``, ``pa.array`` of a list or a numpy array, ``Array.to_numpy``,
``np.asarray`` of an array, a ``pyarrow.compute`` function given a plain Python value,
``Table.group_by(...).aggregate`` (through ``pyarrow.acero``), and ``to_pylist`` of a time with a
zone. A run, ``report`` and ``status``
use none of pandas, so the conversions they need are made here from the arrays' buffers, which
never imports it. Every helper is exact: the same values, types and nulls as the pyarrow call it
stands for.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
import orjson
import pyarrow as pa

from batchrunner import compute as pc

__all__ = [
    "bool_array",
    "dumps_json",
    "float64_array",
    "group_codes",
    "has_maps_or_narrow_floats",
    "int8_array",
    "int64_array",
    "is_value",
    "json_default",
    "nested_values",
    "null_scalar",
    "prompt_text",
    "python_rows",
    "python_values",
    "scalar",
    "string_array",
    "to_numpy",
    "typed_array",
    "unknown_zone",
    "utc_texts",
]

# The numpy type of each Arrow type whose values buffer ``to_numpy`` reads as is.
_NUMPY_TYPES: dict[pa.DataType, type[np.generic]] = {
    pa.int8(): np.int8,
    pa.int16(): np.int16,
    pa.int32(): np.int32,
    pa.int64(): np.int64,
    pa.uint8(): np.uint8,
    pa.uint16(): np.uint16,
    pa.uint32(): np.uint32,
    pa.uint64(): np.uint64,
    pa.float32(): np.float32,
    pa.float64(): np.float64,
}


def _validity(valid: npt.NDArray[np.bool_] | None, n: int) -> tuple[pa.Buffer | None, int]:
    """The validity bitmap of ``valid`` (None when every value is valid) and the null count."""
    if valid is None:
        return None, 0
    valid = np.asarray(valid, dtype=np.bool_)
    if len(valid) != n:
        raise ValueError(f"valid has {len(valid)} entries for {n} values")
    nulls = int(n - np.count_nonzero(valid))
    if not nulls:
        return None, 0
    return pa.py_buffer(np.packbits(valid, bitorder="little")), nulls


def _fixed_width(typ: pa.DataType, dtype: type[np.generic], values: npt.ArrayLike,
                 valid: npt.NDArray[np.bool_] | None) -> pa.Array:
    data = np.ascontiguousarray(values, dtype=dtype)
    bitmap, nulls = _validity(valid, len(data))
    return pa.Array.from_buffers(typ, len(data), [bitmap, pa.py_buffer(data)], null_count=nulls)


def int64_array(values: npt.ArrayLike, valid: npt.NDArray[np.bool_] | None = None) -> pa.Array:
    """An int64 Arrow array over ``values`` (null where ``valid`` is false), built from its
    buffers: ``pa.array`` on a numpy array would import pandas."""
    return _fixed_width(pa.int64(), np.int64, values, valid)


def int8_array(values: npt.ArrayLike, valid: npt.NDArray[np.bool_] | None = None) -> pa.Array:
    """An int8 Arrow array over ``values`` (null where ``valid`` is false), without pandas."""
    return _fixed_width(pa.int8(), np.int8, values, valid)


def float64_array(values: npt.ArrayLike, valid: npt.NDArray[np.bool_] | None = None
                  ) -> pa.Array:
    """A float64 Arrow array over ``values`` (null where ``valid`` is false; NaN stays a NaN
    value, as ``pa.array`` of a numpy array keeps it), without pandas."""
    return _fixed_width(pa.float64(), np.float64, values, valid)


def bool_array(values: npt.ArrayLike, valid: npt.NDArray[np.bool_] | None = None) -> pa.Array:
    """A boolean Arrow array over ``values`` (null where ``valid`` is false), its bits packed
    here: ``pa.array`` on a numpy array would import pandas."""
    bits = np.asarray(values, dtype=np.bool_)
    bitmap, nulls = _validity(valid, len(bits))
    data = pa.py_buffer(np.packbits(bits, bitorder="little"))
    return pa.Array.from_buffers(pa.bool_(), len(bits), [bitmap, data], null_count=nulls)


def string_array(values: Sequence[str | None], *, replace_invalid: bool = False) -> pa.Array:
    """A string Arrow array of ``values`` (None: null), built from its UTF-8 bytes and offsets:
    ``pa.array`` of a Python list would import pandas. With ``replace_invalid``, text that is
    not valid Unicode (a lone surrogate) gets "?" for its bad characters. Anything else than
    ``str`` or ``None`` (or, without ``replace_invalid``, text that is not valid Unicode) is left
    to ``pa.array``, to convert or refuse as it always did.

    The journal builds every string column of every row with this, so the common cases skip
    the loop over the values in Python: a column of nulls only, and ASCII text, whose UTF-8
    bytes are the joined text and whose offsets are the running sum of the lengths. What is
    not text is found by the join, which refuses it (the type of every value, collected in a
    set, cost 1,400 instructions a row of the journal's twelve text columns)."""
    n = len(values)
    nones = values.count(None)
    if nones == n:
        return pa.nulls(n, pa.string())
    present: Sequence[str] = values if not nones else [  # type: ignore[assignment]
        "" if v is None else v for v in values]
    try:
        text = "".join(present)
    except TypeError:  # a value that is not text
        return pa.array(values, type=pa.string())
    if text.isascii():
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, present), dtype=np.int64, count=n), out=offsets[1:])
        data = text.encode("ascii")
    else:
        errors = "replace" if replace_invalid else "strict"
        try:
            encoded = [v.encode("utf-8", errors) for v in present]
        except UnicodeEncodeError:
            return pa.array(values, type=pa.string())
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=n), out=offsets[1:])
        if offsets[-1] > np.iinfo(np.int32).max:  # too long for one array: pyarrow splits it
            return pa.array([None if v is None else v.encode("utf-8", errors).decode()
                             for v in values], type=pa.string())
        data = b"".join(encoded)
    if present is values:
        bitmap, nulls = None, 0
    else:
        bitmap, nulls = _validity(np.fromiter(map(_is_not_none, values), dtype=np.bool_,
                                              count=n), n)
    return pa.Array.from_buffers(
        pa.string(), n, [bitmap, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data)],
        null_count=nulls,
    )


def _is_not_none(v: object) -> bool:
    return v is not None


# The Python type of the values ``typed_array`` builds each Arrow type from, and its numpy type.
_NATIVE: dict[pa.DataType, tuple[type, type[np.generic]]] = {
    pa.int64(): (int, np.int64),
    pa.float64(): (float, np.float64),
    pa.bool_(): (bool, np.bool_),
}
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def typed_array(values: Sequence[Any], typ: pa.DataType) -> pa.Array | None:
    """``pa.array(values, type=typ)`` for a string, int64, float64 or bool column whose values
    are all ``None`` or of that column's own Python type (str, int, float, bool), made without
    importing pandas; ``None`` for any other values (ints beyond int64, a float for an int64
    column, …), which only ``pa.array`` converts, or refuses, as it does."""
    present = [v for v in values if v is not None]
    if pa.types.is_string(typ):
        return string_array(values) if all(type(v) is str for v in present) else None
    native = _NATIVE.get(typ)
    if native is None or any(type(v) is not native[0] for v in present):
        return None
    if typ == pa.int64() and present and not (min(present) >= _INT64_MIN
                                               and max(present) <= _INT64_MAX):
        return None
    valid = np.fromiter((v is not None for v in values), dtype=np.bool_, count=len(values))
    data = np.array([False if v is None else v for v in values], dtype=native[1])
    if typ == pa.bool_():
        return bool_array(data, valid)
    return _fixed_width(typ, native[1], data, valid)


def null_scalar(typ: pa.DataType) -> pa.Scalar:
    """A null scalar of ``typ``: ``pa.scalar(None, typ)`` would import pandas."""
    return pa.nulls(1, typ)[0]


def scalar(value: bool | int | float | str, typ: pa.DataType) -> pa.Scalar:
    """``value`` as an Arrow scalar of ``typ`` (bool, a numeric type or string), taken from a
    one-value array: ``pa.scalar``, or a plain value given to a ``pyarrow.compute`` function,
    would import pandas."""
    if pa.types.is_string(typ):
        if not isinstance(value, str):
            raise TypeError(f"a string scalar needs a str, not {type(value).__name__}")
        return string_array([value])[0]
    if pa.types.is_boolean(typ):
        return bool_array(np.array([value], dtype=np.bool_))[0]
    dtype = _NUMPY_TYPES.get(typ)
    if dtype is None:
        raise TypeError(f"no scalar of type {typ} is made here")
    return _fixed_width(typ, dtype, np.array([value], dtype=dtype), None)[0]


def is_value(values: pa.Array | pa.ChunkedArray, value: str) -> pa.Array | pa.ChunkedArray:
    """``values == value`` for a string column (null where ``values`` is null), as
    ``pc.equal(values, value)`` gives it without importing pandas."""
    return pc.equal(values, scalar(value, pa.string()))


def to_numpy(values: pa.Array | pa.ChunkedArray, fill: bool | int | float | None = None
             ) -> npt.NDArray[Any]:
    """A boolean or numeric Arrow column as a numpy array, nulls replaced by ``fill`` (a column
    with nulls and no ``fill`` is refused): what ``to_numpy(zero_copy_only=False)`` gives
    without nulls, without importing pandas. Numbers are a read-only view of the column's
    buffer when it is one chunk without nulls; booleans are unpacked into a new array."""
    typ = values.type
    if isinstance(values, pa.ChunkedArray):
        if values.num_chunks == 0:
            return np.empty(0, dtype=np.bool_ if pa.types.is_boolean(typ) else _numpy_type(typ))
        values = values.chunk(0) if values.num_chunks == 1 else values.combine_chunks()
    if values.null_count:
        if fill is None:
            raise ValueError(f"{values.null_count} null values and no fill value")
        values = pc.fill_null(values, scalar(fill, typ))
    n, offset = len(values), values.offset
    data = values.buffers()[1]
    if pa.types.is_boolean(typ):
        if n == 0:
            return np.empty(0, dtype=np.bool_)
        first, last = offset // 8, (offset + n + 7) // 8
        packed = np.frombuffer(data, dtype=np.uint8, count=last - first, offset=first)
        bits = np.unpackbits(packed, bitorder="little")
        start = offset % 8
        return bits[start:start + n].view(np.bool_)
    dtype = np.dtype(_numpy_type(typ))
    if n == 0:
        return np.empty(0, dtype=dtype)
    return np.frombuffer(data, dtype=dtype, count=n, offset=offset * dtype.itemsize)


def _numpy_type(typ: pa.DataType) -> type[np.generic]:
    dtype = _NUMPY_TYPES.get(typ)
    if dtype is None:
        raise TypeError(f"no numpy conversion of type {typ} here")
    return dtype


def group_codes(values: pa.Array | pa.ChunkedArray) -> tuple[npt.NDArray[np.int64], list[Any]]:
    """The group of each value (0, 1, …) and each group's value (None for null), groups in
    order of first appearance: ``group_by`` would import pandas through ``pyarrow.acero``."""
    if isinstance(values, pa.ChunkedArray):
        if values.num_chunks == 0:
            return np.empty(0, dtype=np.int64), []
        values = values.chunk(0) if values.num_chunks == 1 else values.combine_chunks()
    encoded = pc.dictionary_encode(values, null_encoding="encode")
    codes = to_numpy(pc.cast(encoded.indices, pa.int64()))
    return codes, encoded.dictionary.to_pylist()


def json_default(value: object) -> object:
    """orjson fallback for Arrow values it cannot serialise itself (Decimal, bytes, timedelta):
    bytes as UTF-8 text, those that are not UTF-8 as ``\\x`` escapes; the rest by ``str``."""
    if isinstance(value, bytes | bytearray | memoryview):
        return _bytes_text(value)
    return str(value)


def _bytes_text(value: bytes | bytearray | memoryview) -> str:
    """Bytes as UTF-8 text, with ``\\x`` escapes where they are not UTF-8."""
    return bytes(value).decode("utf-8", "backslashreplace")


def dumps_json(value: Any, option: int = 0) -> bytes:
    """``orjson.dumps`` of Arrow's Python values: the rest of ``json_default``'s, and map keys
    orjson takes only as text (bytes, decimals: a map column keyed by them) made text."""
    option |= orjson.OPT_NON_STR_KEYS
    try:
        return orjson.dumps(value, default=json_default, option=option)
    except TypeError:
        return orjson.dumps(_keys_as_text(value), default=json_default, option=option)


def _keys_as_text(value: Any) -> Any:
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(json_default(k)): _keys_as_text(v)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_keys_as_text(v) for v in value]
    return value


def prompt_text(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """A column as the text a prompt shows of its values, when its values' ``str`` would read
    badly: numbers and booleans as JSON writes them (floats in their shortest form, so a
    float32 0.7 is ``0.7`` and 2021.0, an integer column with a gap saved as floats, is
    ``2021``; NaN stays null), binary as UTF-8 (``\\x`` escapes where it is not), lists,
    structs and maps as compact JSON, timestamps to the nanosecond (pandas' datetimes, with a
    time zone or without) as pandas writes them. Text, other times and other types are left as
    they are."""
    typ = column.type
    if pa.types.is_dictionary(typ):  # decoded as DictionaryArray.dictionary_decode does
        if isinstance(column, pa.Array):
            column = pc.take(column.dictionary, column.indices)
        else:
            column = pa.chunked_array([pc.take(c.dictionary, c.indices) for c in column.chunks],
                                      typ.value_type)
        typ = column.type
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        return column
    if pa.types.is_floating(typ):
        text = pc.cast(column, pa.string())
        return pc.if_else(pc.is_nan(column), null_scalar(pa.string()), text)
    if pa.types.is_integer(typ) or pa.types.is_boolean(typ) or pa.types.is_decimal(typ):
        return pc.cast(column, pa.string())
    if (pa.types.is_binary(typ) or pa.types.is_large_binary(typ)
            or pa.types.is_fixed_size_binary(typ)):
        return string_array([None if v is None else _bytes_text(v) for v in column.to_pylist()])
    if pa.types.is_nested(typ):
        return string_array([None if v is None else dumps_json(v).decode()
                             for v in nested_values(column)])
    if pa.types.is_timestamp(typ) and typ.unit == "ns":
        # pandas' datetimes: pyarrow makes them pandas Timestamps (importing pandas), whose
        # text the prompt showed; Arrow writes their nanoseconds, trimmed here as pandas does.
        if typ.tz is None:
            texts = pc.strftime(column, format="%Y-%m-%d %H:%M:%S").to_pylist()
            return string_array([None if v is None else _timestamp_text(v) for v in texts])
        return string_array(_zoned_texts(column, typ.tz))
    return column


def _zoned_texts(column: pa.Array | pa.ChunkedArray, tz: str) -> list[str | None]:
    """A timestamp[ns] column with a time zone as pandas writes its Timestamps: in the zone,
    with its offset (``+01:00``; ``+00:09:21`` in a local mean time), as Python's zoneinfo
    has them. Not Arrow's own conversion: its zones' rules end with 2037 (a summer time after
    it was an hour off) and its ``%z`` drops an offset's seconds."""
    if tz[:1] in "+-":  # a fixed offset, "+05:30"
        hours, _, minutes = tz[1:].partition(":")
        offset = timedelta(hours=int(hours), minutes=int(minutes or 0))
        zone: tzinfo = timezone(-offset if tz[0] == "-" else offset)
    else:
        zone = ZoneInfo(tz)
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    texts: list[str | None] = []
    valid = to_numpy(pc.is_valid(column)).tolist()
    for ns, ok in zip(to_numpy(column.view(pa.int64()), fill=0).tolist(), valid, strict=True):
        if not ok:
            texts.append(None)
            continue
        us, rest = divmod(ns, 1000)
        at = (_EPOCH + timedelta(microseconds=us)).astimezone(zone)
        text = at.replace(microsecond=0).isoformat(" ")  # 2038-07-06 05:00:00+02:00
        fraction = (f".{at.microsecond:06d}{rest:03d}" if rest
                    else f".{at.microsecond:06d}" if at.microsecond else "")
        texts.append(f"{text[:19]}{fraction}{text[19:]}")
    return texts


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Microseconds in a unit of the timestamps ``rows`` makes Python datetimes of.
_MICROSECONDS = {"s": 1_000_000, "ms": 1000, "us": 1}


def python_rows(batch: pa.RecordBatch) -> list[dict[str, Any]]:
    """``batch.to_pylist()``: the same values, but times with a zone to the second, milli- or
    microsecond made here, where pyarrow imports pandas for each (it asks whether pandas is
    there before it looks at the unit), and dates and times Python cannot hold as their text
    (``python_values``). They are made as pyarrow makes them, in the zone pyarrow's
    ``string_to_tzinfo`` gives, so a prompt shows the same text (``str``) and a row hashes the
    same (orjson's RFC 3339 form) as before."""
    made = [i for i, field in enumerate(batch.schema)
            if _is_zoned(field.type) or holds_far_times(batch.column(i))]
    if not made:
        out: list[dict[str, Any]] = batch.to_pylist()
        return out
    plain = batch
    for i in made:  # read as nulls by to_pylist, then replaced
        plain = plain.set_column(i, batch.schema.field(i).name, pa.nulls(batch.num_rows))
    out = plain.to_pylist()
    for i in made:
        name = batch.schema.field(i).name
        for row, value in zip(out, python_values(batch.column(i)), strict=True):
            row[name] = value
    return out


def _is_zoned(typ: pa.DataType) -> bool:
    return pa.types.is_timestamp(typ) and typ.tz is not None and typ.unit in _MICROSECONDS


# Python's dates end with 9999-12-31 and start with 0001-01-01, and pyarrow's ``as_py`` of a
# value outside raises OverflowError: exports write 10000-01-01 (and 0000-12-31) for "never".
#: Days from 1970-01-01 to Python's first and last dates.
_FIRST_DAY, _LAST_DAY = -719_162, 2_932_896
#: Days in 400 Gregorian years: the calendar (leap years, weekdays) repeats after them.
_CYCLE_DAYS = 146_097
#: Each date and time unit's values in a day (``_MICROSECONDS``'s, and dates').
_PER_DAY = {"s": 86_400, "ms": 86_400_000, "us": 86_400_000_000}
_MICROS_A_DAY = 86_400_000_000


def _day_units(typ: pa.DataType) -> int | None:
    """A date or time type's values in a day (date32: 1), None for other types and for
    timestamps to the nanosecond (1677 to 2262: always within Python's range)."""
    if pa.types.is_date32(typ):
        return 1
    if pa.types.is_date64(typ):
        return _PER_DAY["ms"]
    if pa.types.is_timestamp(typ) and typ.unit in _PER_DAY:
        return _PER_DAY[typ.unit]
    return None


def _far_days(column: pa.Array | pa.ChunkedArray) -> npt.NDArray[np.bool_] | None:
    """Which values of a date or time column are outside Python's dates, as days in UTC
    (None for a column of another type); False at nulls."""
    per_day = _day_units(column.type)
    if per_day is None:
        return None
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    ints = pa.int32() if pa.types.is_date32(column.type) else pa.int64()
    days = np.floor_divide(to_numpy(column.view(ints), fill=0).astype(np.int64), per_day)
    far: npt.NDArray[np.bool_] = (days < _FIRST_DAY) | (days > _LAST_DAY)
    if column.null_count:
        far &= to_numpy(pc.is_valid(column))
    return far


def holds_far_times(column: pa.Array | pa.ChunkedArray) -> bool:
    """Whether a date or time column holds a value Python's ``datetime`` cannot (a year past
    9999, or before 1)."""
    far = _far_days(column)
    return far is not None and bool(far.any())


def _moved(micros: int) -> tuple[datetime, int]:
    """The naive UTC time ``micros`` (since 1970) is at, moved by whole 400-year cycles to
    inside Python's dates, with a day to spare either side for a zone's offset, and the years
    it was moved by: its date and time of day, and a zone's rules there, are the same."""
    day = micros // _MICROS_A_DAY
    cycles = 0
    if day > _LAST_DAY - 1:
        cycles = -(-(day - (_LAST_DAY - 1)) // _CYCLE_DAYS)
    elif day < _FIRST_DAY + 1:
        cycles = (_FIRST_DAY + 1 - day) // -_CYCLE_DAYS
    moved = micros - cycles * _CYCLE_DAYS * _MICROS_A_DAY
    return datetime(1970, 1, 1) + timedelta(microseconds=moved), 400 * cycles


def _year_text(text: str, years: int) -> str:
    """An ISO 8601 date or time ``text`` of a moved value, its year moved back by ``years``:
    ``10000-01-01``, ``-0001-12-31`` (ISO's year 0 is 1 BC), as Arrow writes them."""
    year = int(text[:4]) + years
    return (f"{year:04d}" if year >= 0 else f"-{-year:04d}") + text[4:]


def _far_text(micros: int, typ: pa.DataType, zone: tzinfo | None, sep: str) -> str:
    """A value of ``typ`` Python cannot hold, at ``micros`` since 1970 in UTC, as ``str`` (or,
    ``sep`` "T", orjson) writes the values it can: ``10000-01-01`` (a date),
    ``10000-01-01 00:00:00``, ``10000-01-01 01:00:00+01:00`` (in a zone)."""
    at, years = _moved(micros)
    if not pa.types.is_timestamp(typ):
        return _year_text(at.date().isoformat(), years)
    if zone is not None:
        at = at.replace(tzinfo=UTC).astimezone(zone)
    return _year_text(at.isoformat(sep), years)


def python_values(column: pa.Array | pa.ChunkedArray, sep: str = " ") -> list[Any]:
    """``column.to_pylist()``, times with a zone made here as ``python_rows`` says, and the
    dates and times Python's ``datetime`` cannot hold (past 9999, before year 1: pyarrow
    raises OverflowError) as text: as ``str`` writes the others, or, ``sep`` "T", as orjson
    does (``10000-01-01T00:00:00``). The others are left as they were, so that the rows a run
    sent before hash the same."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    typ = column.type
    far = _far_days(column)
    if far is None or not far.any():
        if _is_zoned(typ):
            return _zoned_datetimes(column, sep)
        values: list[Any] = column.to_pylist()
        return values
    if _is_zoned(typ):
        return _zoned_datetimes(column, sep)
    per_day = _day_units(typ)
    assert per_day is not None
    scale = _MICROS_A_DAY // per_day
    at = np.flatnonzero(far)
    values = pc.if_else(bool_array(far), null_scalar(typ), column).to_pylist()
    ints = pa.int32() if pa.types.is_date32(typ) else pa.int64()
    raw = to_numpy(column.view(ints), fill=0)
    for i in at.tolist():
        values[i] = _far_text(int(raw[i]) * scale, typ, None, sep)
    return values


def _zoned_datetimes(column: pa.Array, sep: str = " ") -> list[datetime | str | None]:
    """A timestamp column with a time zone (a unit of ``_MICROSECONDS``) as pyarrow's
    ``as_py`` makes its values: the time in UTC put in the column's zone; one that is not a
    ``datetime`` in the zone (a year past 9999) as text (``python_values``)."""
    typ = column.type
    zone = pa.lib.string_to_tzinfo(typ.tz)
    scale = _MICROSECONDS[typ.unit]
    epoch, delta = _EPOCH, timedelta
    values = to_numpy(column.view(pa.int64()), fill=0).tolist()
    days = np.floor_divide(to_numpy(column.view(pa.int64()), fill=0), _PER_DAY[typ.unit])
    if len(days) and (days.min() <= _FIRST_DAY or days.max() >= _LAST_DAY):
        # Near or past Python's last or first date, which the zone's offset may cross.
        valid = to_numpy(pc.is_valid(column)).tolist()
        return [_zoned(v * scale, typ, zone, sep) if ok else None
                for v, ok in zip(values, valid, strict=True)]
    if not column.null_count:
        return [(epoch + delta(microseconds=v * scale)).astimezone(zone) for v in values]
    valid = to_numpy(pc.is_valid(column)).tolist()
    return [(epoch + delta(microseconds=v * scale)).astimezone(zone) if ok else None
            for v, ok in zip(values, valid, strict=True)]


def _zoned(micros: int, typ: pa.DataType, zone: tzinfo, sep: str) -> datetime | str:
    try:
        return (_EPOCH + timedelta(microseconds=micros)).astimezone(zone)
    except OverflowError:
        return _far_text(micros, typ, zone, sep)


def utc_texts(column: pa.Array | pa.ChunkedArray, texts: pa.Array | pa.ChunkedArray
              ) -> pa.Array | pa.ChunkedArray:
    """``texts``, a time column's values as Arrow's ``strftime`` wrote them in UTC
    (``%Y-%m-%dT%H:%M:%SZ``), with those Python's dates cannot hold written here: Arrow's own
    overflow past the year 32767 (10**13 seconds came out as the year -8823)."""
    far = _far_days(column)
    if far is None or not far.any():
        return texts
    typ = column.type
    per_day = _day_units(typ)
    assert per_day is not None
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    raw = to_numpy(column.view(pa.int64()), fill=0)
    written: list[str | None] = texts.to_pylist()
    digits = {"s": 0, "ms": 3, "us": 6}[typ.unit]
    for i in np.flatnonzero(far).tolist():
        at, years = _moved(int(raw[i]) * (_MICROS_A_DAY // per_day))
        fraction = f".{at.microsecond:06d}"[:digits + 1] if digits else ""
        written[i] = _year_text(at.isoformat("T", "seconds"), years) + fraction + "Z"
    return string_array(written)


def unknown_zone(typ: pa.DataType) -> str | None:
    """The time zone of a timestamp type when this machine's time zone database does not
    have it (a name mistyped, or newer than the database), else None: its times cannot be
    put in it."""
    if pa.types.is_dictionary(typ):
        typ = typ.value_type
    if not (pa.types.is_timestamp(typ) and typ.tz is not None):
        return None
    try:
        pa.lib.string_to_tzinfo(typ.tz)
    except (pa.ArrowException, ValueError, KeyError):
        return str(typ.tz)
    return None


def _timestamp_text(text: str) -> str:
    """``YYYY-MM-DD HH:MM:SS.fffffffff`` as pandas writes a Timestamp: nanoseconds when there
    are some, else microseconds when there are some, else whole seconds."""
    if text.endswith("000"):
        return text[:-10] if text.endswith("000000000") else text[:-3]
    return text


def nested_values(column: pa.Array | pa.ChunkedArray) -> list[Any]:
    """A list, struct or map column's Python values (maps as dicts, a key given twice with its
    last value), float32 and float16 in them as the float64 nearest their shortest text: 0.7,
    not 0.699999988079071."""
    values: list[Any] = column.to_pylist()
    if has_maps_or_narrow_floats(column.type):
        values = [_shortest_floats(v, column.type) for v in values]
    return values


def has_maps_or_narrow_floats(typ: pa.DataType) -> bool:
    """Whether ``typ`` is, or holds, float32 or float16 values or maps: values whose Python
    form ``nested_values`` changes (``to_pylist`` gives a map's entries as (key, value) pairs;
    its ``maps_as_pydicts`` is newer than pyarrow 16)."""
    if pa.types.is_float32(typ) or pa.types.is_float16(typ) or pa.types.is_map(typ):
        return True
    if pa.types.is_dictionary(typ):
        return has_maps_or_narrow_floats(typ.value_type)
    if pa.types.is_struct(typ):
        return any(has_maps_or_narrow_floats(typ.field(i).type) for i in range(typ.num_fields))
    if _is_list(typ):
        return has_maps_or_narrow_floats(typ.value_type)
    return False


def _is_list(typ: pa.DataType) -> bool:
    return bool(pa.types.is_list(typ) or pa.types.is_large_list(typ)
                or pa.types.is_fixed_size_list(typ))


def _shortest_floats(value: Any, typ: pa.DataType) -> Any:
    """``value`` (a Python value of ``typ``) with its float32 and float16 values shortened and
    its maps as dicts."""
    if value is None:
        return None
    if pa.types.is_float32(typ):
        return float(str(np.float32(value)))  # numpy writes a float32's shortest text
    if pa.types.is_float16(typ):
        return float(str(np.float16(value)))
    if pa.types.is_map(typ):
        return {_shortest_floats(k, typ.key_type): _shortest_floats(v, typ.item_type)
                for k, v in value}
    if pa.types.is_dictionary(typ):
        return _shortest_floats(value, typ.value_type)
    if pa.types.is_struct(typ):
        types = {typ.field(i).name: typ.field(i).type for i in range(typ.num_fields)}
        return {k: _shortest_floats(v, types[k]) for k, v in value.items()}
    if _is_list(typ):
        return [_shortest_floats(v, typ.value_type) for v in value]
    return value
