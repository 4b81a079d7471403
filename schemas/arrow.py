"""Arrow schemas derived from the pydantic models, and lossless conversion both ways.

This is the one place that maps the contract onto Arrow; Parquet files, Delta tables and releases
all use these schemas. The schema version travels in the schema metadata.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable
from datetime import datetime
from typing import Any, TypeVar

import pyarrow as pa
from pydantic import BaseModel

from cattune.schemas.records import (
    SCHEMA_VERSION,
    AnnotatedExample,
    Example,
    QuarantinedExample,
)

SCHEMA_VERSION_KEY = b"cattune.schema_version"

ModelT = TypeVar("ModelT", bound=BaseModel)

_SCALARS: dict[type, pa.DataType] = {
    str: pa.string(),
    int: pa.int64(),
    bool: pa.bool_(),
    float: pa.float64(),
    datetime: pa.timestamp("us", tz="UTC"),
}


def _arrow_type(annotation: Any, extra: dict[str, Any] | None = None) -> tuple[pa.DataType, bool]:
    """Return (Arrow type, nullable) for a pydantic field annotation."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        inner, *rest = typing.get_args(annotation)
        for item in rest:
            schema_extra = getattr(item, "json_schema_extra", None)
            if isinstance(schema_extra, dict):
                extra = schema_extra
        return _arrow_type(inner, extra)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported union {annotation!r}")
        return _arrow_type(args[0], extra)[0], True
    if origin is list:
        (item,) = typing.get_args(annotation)
        return pa.list_(pa.field("item", *_arrow_type(item))), False
    if origin is dict:
        if not extra or extra.get("arrow") != "key_value_list":
            raise TypeError(f"dict field {annotation!r} needs a key_value_list serializer")
        key, value = typing.get_args(annotation)
        item = pa.struct(
            [pa.field("key", _arrow_type(key)[0], False), pa.field("value", _arrow_type(value)[0])]
        )
        return pa.list_(pa.field("item", item, False)), False
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return pa.struct(model_fields(annotation)), False
    if extra and extra.get("arrow") == "int32":
        return pa.int32(), False
    if annotation in _SCALARS:
        return _SCALARS[annotation], False
    raise TypeError(f"no Arrow type for {annotation!r}")


def model_fields(model: type[BaseModel]) -> list[pa.Field]:
    fields = []
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else None
        arrow_type, nullable = _arrow_type(info.rebuild_annotation(), extra)
        fields.append(pa.field(name, arrow_type, nullable=nullable))
    return fields


def arrow_schema(model: type[BaseModel]) -> pa.Schema:
    """The Arrow schema of a contract model, tagged with the schema version."""
    return pa.schema(model_fields(model), metadata={SCHEMA_VERSION_KEY: SCHEMA_VERSION.encode()})


EXAMPLE_SCHEMA = arrow_schema(Example)
ANNOTATED_SCHEMA = arrow_schema(AnnotatedExample)
QUARANTINE_SCHEMA = arrow_schema(QuarantinedExample)


def to_table(records: Iterable[BaseModel], model: type[BaseModel]) -> pa.Table:
    """Contract records -> an Arrow table with the model's schema."""
    rows = [record.model_dump() for record in records]
    return pa.Table.from_pylist(rows, schema=arrow_schema(model))


def from_table(table: pa.Table, model: type[ModelT]) -> list[ModelT]:
    """An Arrow table (any column order, extra columns ignored) -> validated contract records."""
    names = list(model.model_fields)
    missing = [n for n in names if n not in table.column_names]
    if missing:
        raise ValueError(f"table lacks contract columns {missing}")
    return [model.model_validate(row) for row in table.select(names).to_pylist()]


def conform(table: pa.Table, model: type[BaseModel]) -> pa.Table:
    """Cast a table read back from storage (e.g. string_view after a Delta merge) to the schema."""
    schema = arrow_schema(model)
    return table.select(schema.names).cast(schema)


def schema_version_of(schema: pa.Schema) -> str | None:
    metadata = schema.metadata or {}
    value = metadata.get(SCHEMA_VERSION_KEY)
    return value.decode() if value is not None else None
