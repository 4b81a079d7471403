"""Reading source files into :class:`~cattune.schemas.Example` rows.

Formats: ``jsonl`` (one JSON object a line; ``.json`` files written that way too), ``csv``,
``parquet`` (a file or a directory of ``*.parquet``, e.g. a release's ``data/``), ``hf`` (a
directory written by ``datasets.Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``; its
``*.arrow`` files are read with pyarrow, ``datasets`` is not needed), ``cat`` (the CAT authors'
JSONL: ``input``/``target``/``important``) and ``contract`` (rows that already follow the contract:
``id``, ``prompt``, ``completion``, ``meta``, ``relations``). ``auto`` picks by suffix, directory
content and columns.

Rows are streamed. A malformed row becomes a :class:`SourceRow` with ``example=None`` and an
``error`` a person can act on; a row whose given relations are partly malformed keeps its example
and the well-formed relations, with the rest described under ``meta.extra[GIVEN_PROBLEMS_KEY]``.
Only whole-file problems raise :class:`InputError`: a path that cannot be read, a text file that is
not JSON Lines at all (none of its first lines is a JSON object), or no usable columns (a CSV
header, a Parquet/Arrow schema, or the first JSON Lines objects without a prompt/completion pair).
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from cattune.annotators.base import GIVEN_PROBLEMS_KEY, GIVEN_RELATIONS_KEY
from cattune.schemas import (
    Annotation,
    Example,
    InputError,
    Meta,
    QuarantinedExample,
    Relation,
    example_id,
    salvage_phrase_relations,
)

SourceFormat = Literal["auto", "jsonl", "csv", "parquet", "hf", "cat", "contract"]
SOURCE_FORMATS: tuple[str, ...] = get_args(SourceFormat)

# Column pairs tried in order when no field names are given.
FIELD_PAIRS: tuple[tuple[str, str], ...] = (
    ("prompt", "completion"),
    ("input", "target"),
    ("question", "answer"),
)
CAT_RELATIONS_FIELD = "important"
_META_FIELDS = ("split", "label", "ood")
_SNIFF_BYTES = 8192
_SNIFF_LINES = 32  # JSON Lines objects looked at for the whole-file checks
_JSONL_SUFFIXES = {".jsonl", ".json", ".ndjson"}
_PARQUET_SUFFIXES = {".parquet", ".pq"}


@dataclass(frozen=True)
class SourceRow:
    """One source row: the example, or the reason it could not be read, plus its raw text."""

    line: int  # 1-based line (JSONL/CSV) or row number (Parquet/Arrow, counted across files)
    example: Example | None
    error: str | None
    raw: str


def malformed_row(row: SourceRow, annotation: Annotation, source: str) -> QuarantinedExample:
    """A malformed source row as a quarantine row: the raw text as prompt, the error as reason."""
    return QuarantinedExample(
        id=example_id(row.raw, ""),
        prompt=row.raw,
        completion="",
        meta=Meta(source=source, extra={"line": str(row.line)}),
        annotation=annotation,
        error=f"malformed source row: {row.error} (row {row.line})",
        retryable=False,
    )


class _RowError(ValueError):
    """A problem with one row; becomes ``SourceRow.error``."""


@dataclass(frozen=True)
class _Fields:
    prompt: str | None
    completion: str | None
    mode: Literal["auto", "cat", "contract"]


def read_source(
    path: str | Path,
    *,
    format: SourceFormat = "auto",
    prompt_field: str | None = None,
    completion_field: str | None = None,
    source_name: str | None = None,
) -> Iterator[SourceRow]:
    """Stream the rows of a source file or directory as :class:`SourceRow` objects."""
    path = Path(path)
    if format not in SOURCE_FORMATS:
        raise InputError(
            f"unknown format {format!r}; use one of {', '.join(SOURCE_FORMATS)}", path=str(path)
        )
    if not path.exists():
        raise InputError("no such file or directory; check the path", path=str(path))
    container = _container_format(path, format)
    mode: Literal["auto", "cat", "contract"] = (
        format if format in ("cat", "contract") else "auto"  # type: ignore[assignment]
    )
    fields = _Fields(prompt_field, completion_field, mode)
    source = source_name or path.name
    if container == "jsonl":
        records = _jsonl_records(path, fields)
    elif container == "csv":
        records = _csv_records(path, fields)
    elif container == "parquet":
        records = _table_records(path, _parquet_batches(path), fields)
    else:
        records = _hf_records(path, fields)
    for line, record, raw, split in records:
        if isinstance(record, _RowError):
            yield SourceRow(line=line, example=None, error=str(record), raw=raw)
            continue
        try:
            example = _to_example(record, fields, source, split)
        except (_RowError, ValidationError) as error:
            message = _short_validation(error) if isinstance(error, ValidationError) else error
            yield SourceRow(line=line, example=None, error=str(message), raw=raw)
        else:
            yield SourceRow(line=line, example=example, error=None, raw=raw)


def load_examples(
    path: str | Path,
    *,
    format: SourceFormat = "auto",
    prompt_field: str | None = None,
    completion_field: str | None = None,
    source_name: str | None = None,
) -> list[Example]:
    """All examples of a source; the first malformed row raises ``InputError(path, line)``."""
    examples: list[Example] = []
    for row in read_source(
        path,
        format=format,
        prompt_field=prompt_field,
        completion_field=completion_field,
        source_name=source_name,
    ):
        if row.example is None:
            raise InputError(row.error or "malformed row", path=str(path), line=row.line)
        examples.append(row.example)
    return examples


# --- containers -------------------------------------------------------------------------------

_Record = tuple[int, "dict[str, Any] | _RowError", str, "str | None"]


def _container_format(path: Path, format: str) -> str:
    """The physical layout to read: jsonl, csv, parquet or hf."""
    if format in ("jsonl", "csv", "parquet", "hf"):
        return format
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return "hf"
        if any(path.glob("*.arrow")):
            return "hf"
        if any(path.glob("*.parquet")):
            return "parquet"
        raise InputError(
            "directory holds no *.parquet files and no Hugging Face dataset "
            "(state.json / *.arrow); point at a data file or a dataset directory",
            path=str(path),
        )
    suffix = path.suffix.lower()
    if suffix in _JSONL_SUFFIXES:
        return "jsonl"
    if suffix in _PARQUET_SUFFIXES:
        return "parquet"
    if suffix == ".csv":
        return "csv"
    if suffix == ".arrow":
        return "hf"
    with path.open("rb") as handle:
        head = handle.read(_SNIFF_BYTES)
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.lstrip().startswith(b"{"):
        return "jsonl"
    raise InputError(
        "cannot tell the file format from its name or content; pass the format explicitly "
        f"(one of {', '.join(f for f in SOURCE_FORMATS if f != 'auto')})",
        path=str(path),
    )


def _check_text_file(path: Path) -> None:
    if path.is_dir():
        raise InputError("is a directory; give a JSONL or CSV file", path=str(path))
    with path.open("rb") as handle:
        head = handle.read(_SNIFF_BYTES)
        if b"\x00" in head or head.startswith(b"PAR1"):
            raise InputError(
                "looks like a binary file, not text; for Parquet or Arrow data pass "
                "format 'parquet' or 'hf'",
                path=str(path),
            )
        while not head.strip():
            if not head:
                raise InputError("file is empty; it holds no rows", path=str(path))
            head = handle.read(_SNIFF_BYTES)


def _jsonl_records(path: Path, fields: _Fields) -> Iterator[_Record]:
    _check_text_file(path)
    _check_jsonl_head(path, fields)
    with path.open("rb") as handle:
        for number, raw_bytes in enumerate(handle, start=1):
            if raw_bytes.strip():
                yield _jsonl_record(number, raw_bytes)


def _jsonl_record(number: int, raw_bytes: bytes) -> _Record:
    """One JSON Lines line as a record, or the reason it is not one."""
    try:
        text = raw_bytes.decode("utf-8")
    except UnicodeDecodeError as error:
        raw = raw_bytes.decode("utf-8", errors="replace").rstrip("\r\n")
        problem = f"line is not valid UTF-8 (byte {error.start}); re-encode the file"
        return number, _RowError(problem), raw, None
    raw = text.rstrip("\r\n")
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as error:
        return number, _RowError(f"invalid JSON: {error.msg} (column {error.colno})"), raw, None
    except RecursionError:
        return number, _RowError("invalid JSON: nested too deeply to read"), raw, None
    except ValueError as error:  # an integer with more digits than Python converts
        return number, _RowError(f"invalid JSON: {str(error).split(';')[0]}"), raw, None
    if not isinstance(record, dict):
        return number, _RowError(f"expected a JSON object, got {type(record).__name__}"), raw, None
    if "\\ud" in raw.lower() and _has_lone_surrogate(record):
        problem = "line holds an unpaired UTF-16 surrogate escape (\\ud800-\\udfff); fix the text"
        return number, _RowError(problem), raw, None
    return number, record, raw, None


def _has_lone_surrogate(record: dict[str, Any]) -> bool:
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _column_pairs(fields: _Fields) -> list[tuple[str, str]]:
    """The (prompt, completion) column pairs a row may use."""
    if fields.mode == "contract":
        return [("prompt", "completion")]
    if fields.mode == "cat" or fields.prompt or fields.completion:
        return [_pick_fields({}, fields)]
    return list(FIELD_PAIRS)


def _check_columns(path: Path, columns: Iterable[str], fields: _Fields, what: str) -> None:
    """A whole-file error unless ``columns`` hold a usable prompt/completion pair."""
    names = set(columns)
    pairs = _column_pairs(fields)
    if any(p in names and c in names for p, c in pairs):
        return
    listed = ", ".join(f"{p}/{c}" for p, c in pairs)
    raise InputError(
        f"no usable columns: {what} {sorted(names)[:8]} and none of the pairs {listed}; "
        "check the format, or name the columns with --prompt-field/--completion-field",
        path=str(path),
    )


def _check_jsonl_head(path: Path, fields: _Fields) -> None:
    """Whole-file errors: no JSON object among the first lines, or none with usable columns."""
    objects: list[dict[str, Any]] = []
    first_problem = ""
    seen = 0
    with path.open("rb") as handle:
        for number, raw_bytes in enumerate(handle, start=1):
            if not raw_bytes.strip():
                continue
            _, record, _, _ = _jsonl_record(number, raw_bytes)
            if isinstance(record, _RowError):
                first_problem = first_problem or f"line {number}: {record}"
            else:
                objects.append(record)
            seen += 1
            if seen == _SNIFF_LINES:
                break
    if not objects:
        raise InputError(
            f"not JSON Lines: none of the first {seen} line(s) is a JSON object ({first_problem}); "
            "give one JSON object per line",
            path=str(path),
        )
    keys = {key for record in objects for key in record}
    what = f"the first {len(objects)} object(s) have fields"
    _check_columns(path, keys, fields, what)


class _LineRecorder:
    """Feeds csv.reader lines decoded with surrogateescape and remembers them for ``raw``."""

    def __init__(self, handle: Iterable[bytes]) -> None:
        self._handle = iter(handle)
        self.lines: list[str] = []

    def __iter__(self) -> _LineRecorder:
        return self

    def __next__(self) -> str:
        line = next(self._handle).decode("utf-8", errors="surrogateescape")
        self.lines.append(line)
        return line


def _csv_records(path: Path, fields: _Fields) -> Iterator[_Record]:
    _check_text_file(path)
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # a 5 MB prompt is a valid field
    with path.open("rb") as handle:
        recorder = _LineRecorder(handle)
        reader = csv.reader(recorder)
        header = next(reader, None)
        if not header or not any(h.strip() for h in header):
            raise InputError("CSV file has no header row", path=str(path))
        header = [h.strip().lstrip("\ufeff") for h in header]
        _check_csv_header(path, header, fields)
        recorder.lines.clear()
        line = reader.line_num + 1
        for values in reader:
            raw = "".join(recorder.lines).rstrip("\r\n")
            raw_text = raw.encode("utf-8", errors="surrogateescape").decode("utf-8", "replace")
            recorder.lines.clear()
            start, line = line, reader.line_num + 1
            if not any(v.strip() for v in values):
                continue
            if raw != raw_text:
                problem = "line is not valid UTF-8; re-encode the file"
                yield start, _RowError(problem), raw_text, None
            elif len(values) != len(header):
                problem = f"expected {len(header)} columns, got {len(values)}"
                yield start, _RowError(problem), raw, None
            else:
                yield start, dict(zip(header, values, strict=True)), raw, None


def _check_csv_header(path: Path, header: list[str], fields: _Fields) -> None:
    wanted = [f for f in (fields.prompt, fields.completion) if f]
    missing = [f for f in wanted if f not in header]
    if missing:
        raise InputError(f"CSV header lacks column(s) {missing}; it has {header}", path=str(path))
    if not wanted and not any(p in header and c in header for p, c in FIELD_PAIRS):
        pairs = ", ".join(f"{p}/{c}" for p, c in FIELD_PAIRS)
        raise InputError(
            f"CSV header {header} has none of the column pairs {pairs}; "
            "name the columns with --prompt-field/--completion-field",
            path=str(path),
        )


def _parquet_batches(path: Path) -> Iterator[tuple[pa.RecordBatch, str | None]]:
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise InputError("directory holds no *.parquet files", path=str(path))
    for file in files:
        try:
            parquet = pq.ParquetFile(file)
        except (pa.ArrowException, OSError) as error:
            raise InputError(
                f"not a readable Parquet file ({error}); check the file or pass the right format",
                path=str(file),
            ) from error
        try:
            for batch in parquet.iter_batches(batch_size=1024):
                yield batch, None
        except (pa.ArrowException, OSError) as error:
            raise InputError(f"Parquet file is damaged ({error})", path=str(file)) from error


def _hf_records(path: Path, fields: _Fields) -> Iterator[_Record]:
    dict_file = path / "dataset_dict.json"
    if path.is_dir() and dict_file.is_file():
        try:
            splits = [str(split) for split in json.loads(dict_file.read_text())["splits"]]
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(
                f"not a Hugging Face DatasetDict description ({error})", path=str(dict_file)
            ) from error
        batches = (item for split in splits for item in _arrow_batches(path / split, split))
        yield from _table_records(path, batches, fields)
    else:
        yield from _table_records(path, _arrow_batches(path, None), fields)


def _arrow_files(path: Path) -> list[Path]:
    if not path.is_dir():
        return [path]
    state = path / "state.json"
    if state.is_file():
        try:
            names = [f["filename"] for f in json.loads(state.read_text())["_data_files"]]
            return [path / name for name in names]
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(
                f"state.json is not a Hugging Face dataset state ({error})", path=str(state)
            ) from error
    files = sorted(path.glob("*.arrow"))
    if not files:
        raise InputError("no *.arrow files; is this a save_to_disk directory?", path=str(path))
    return files


def _open_arrow(file: Path) -> pa.ipc.RecordBatchStreamReader | pa.ipc.RecordBatchFileReader:
    try:
        return pa.ipc.open_stream(pa.memory_map(str(file)))
    except (pa.ArrowInvalid, OSError):
        try:
            return pa.ipc.open_file(pa.memory_map(str(file)))
        except (pa.ArrowException, OSError) as error:
            raise InputError(
                f"not a readable Arrow file ({error}); was it written by save_to_disk?",
                path=str(file),
            ) from error


def _arrow_batches(path: Path, split: str | None) -> Iterator[tuple[pa.RecordBatch, str | None]]:
    for file in _arrow_files(path):
        reader = _open_arrow(file)
        try:
            if isinstance(reader, pa.ipc.RecordBatchFileReader):
                for index in range(reader.num_record_batches):
                    yield reader.get_batch(index), split
            else:
                for batch in reader:
                    yield batch, split
        except pa.ArrowException as error:
            raise InputError(f"Arrow file is damaged ({error})", path=str(file)) from error


def _table_records(
    path: Path, batches: Iterator[tuple[pa.RecordBatch, str | None]], fields: _Fields
) -> Iterator[_Record]:
    number = 0
    for batch, split in batches:
        if number == 0:
            _check_columns(path, batch.schema.names, fields, "the columns are")
        for record in batch.to_pylist():
            number += 1
            yield number, record, json.dumps(record, ensure_ascii=False, default=str), split
    if number == 0:
        raise InputError("holds no rows", path=str(path))


# --- rows -> examples -------------------------------------------------------------------------


def _to_example(record: dict[str, Any], fields: _Fields, source: str, split: str | None) -> Example:
    is_contract = fields.mode == "contract" or (
        fields.mode == "auto"
        and not (fields.prompt or fields.completion)
        and "prompt" in record
        and "completion" in record
        and ("relations" in record or ("id" in record and isinstance(record.get("meta"), dict)))
    )
    if is_contract:
        return _contract_example(record, source, split)
    prompt_name, completion_name = _pick_fields(record, fields)
    prompt = _text_field(record, prompt_name)
    if not prompt:
        raise _RowError(f"field {prompt_name!r} is empty")
    completion = _text_field(record, completion_name, numbers=True)
    used = {prompt_name, completion_name}
    extra: dict[str, str] = {}
    # Given phrase relations: the CAT field, or a field named like the key they are kept under
    # (which must then hold wire-format JSON, never the raw value).
    given = [name for name in (CAT_RELATIONS_FIELD, GIVEN_RELATIONS_KEY) if name in record]
    if len(given) > 1:
        raise _RowError(f"fields {given[0]!r} and {given[1]!r} both give relations; keep one")
    for name in given:
        used.add(name)
        _add_given(extra, record[name], name)
    meta = _meta(record, used, extra, source, split)
    return Example.create(prompt, completion, meta)


def _pick_fields(record: dict[str, Any], fields: _Fields) -> tuple[str, str]:
    if fields.mode == "cat":
        return fields.prompt or "input", fields.completion or "target"
    if fields.prompt or fields.completion:
        partner_of = {**dict(FIELD_PAIRS), **{c: p for p, c in FIELD_PAIRS}}
        prompt = fields.prompt or partner_of.get(fields.completion or "", "prompt")
        completion = fields.completion or partner_of.get(prompt, "completion")
        return prompt, completion
    for prompt, completion in FIELD_PAIRS:
        if prompt in record:
            return prompt, completion
    names = ", ".join(repr(p) for p, _ in FIELD_PAIRS)
    raise _RowError(
        f"missing field 'prompt' (looked for {names}); row has {sorted(record)[:8]}; "
        "name the columns with --prompt-field/--completion-field"
    )


def _text_field(record: dict[str, Any], name: str, *, numbers: bool = False) -> str:
    """A text field; ``numbers`` admits int/float values as their text (STG_H targets)."""
    if name not in record or record[name] is None:
        raise _RowError(f"missing field {name!r}")
    value = record[name]
    if isinstance(value, str):
        return value
    if numbers and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise _RowError(f"field {name!r} must be text, got {type(value).__name__}")


def _is_wire(value: Any) -> bool:
    """Phrase relations ({"effect": "<phrase>", ...}) rather than contract spans."""
    if isinstance(value, dict):
        return True
    return isinstance(value, list) and any(
        isinstance(item, dict) and not isinstance(item.get("effect"), dict) for item in value
    )


def _add_given(extra: dict[str, str], value: Any, name: str) -> None:
    """Put phrase relations in any accepted form into ``extra`` as wire-format JSON.

    ``None`` and an empty list give ``{"relations": []}``. Malformed parts (a nested object as a
    cause, a relation that is not an object) are left out and described under
    :data:`GIVEN_PROBLEMS_KEY`; the row keeps the rest.
    """
    relations, problems = salvage_phrase_relations([] if value is None else value)
    wire = [{"effect": r.effect, "causes": list(r.causes)} for r in relations]
    extra[GIVEN_RELATIONS_KEY] = json.dumps({"relations": wire}, ensure_ascii=False)
    if problems:
        messages = [f"field {name!r}: {problem}" for problem in problems]
        extra[GIVEN_PROBLEMS_KEY] = json.dumps(messages, ensure_ascii=False)


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def _meta(
    record: dict[str, Any],
    used: set[str],
    extra: dict[str, str],
    source: str,
    split: str | None,
) -> Meta:
    values: dict[str, Any] = {"source": source, "split": split}
    for name in _META_FIELDS:
        value = record.get(name)
        if value is None or value == "":  # an empty CSV cell means "not given"
            continue
        if name == "ood":
            values["ood"] = _as_bool(value)
        else:
            values[name] = _as_text(value)
    for key, value in record.items():
        if key in used or key in _META_FIELDS or value is None:
            continue
        extra.setdefault(key, _as_text(value))
    return Meta(**values, extra=extra)


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no", ""):
        return False
    raise _RowError(f"field 'ood' must be true or false, got {value!r}")


def _contract_example(record: dict[str, Any], source: str, split: str | None) -> Example:
    prompt = _text_field(record, "prompt")
    if not prompt:
        raise _RowError("field 'prompt' is empty")
    completion = _text_field(record, "completion", numbers=True)
    raw_meta = record.get("meta") or {}
    if isinstance(raw_meta, str):
        try:
            raw_meta = json.loads(raw_meta)
        except json.JSONDecodeError as error:
            raise _RowError(f"field 'meta' is not JSON: {error.msg}") from error
    if not isinstance(raw_meta, dict):
        raise _RowError(f"field 'meta' must be an object, got {type(raw_meta).__name__}")
    try:
        meta = Meta.model_validate(raw_meta)
    except ValidationError as error:
        raise _RowError(f"field 'meta': {_short_validation(error)}") from error
    updates: dict[str, Any] = {}
    if not meta.source:
        updates["source"] = source
    if split is not None and meta.split is None:
        updates["split"] = split
    raw_relations = record.get("relations")
    if _is_wire(raw_relations):
        extra = dict(meta.extra)
        _add_given(extra, raw_relations, "relations")
        updates["extra"] = extra
    elif raw_relations is not None:
        try:
            relations = [Relation.model_validate(r) for r in raw_relations]
        except (ValidationError, TypeError) as error:
            message = _short_validation(error) if isinstance(error, ValidationError) else error
            raise _RowError(f"field 'relations': {message}") from error
        text = prompt + completion
        for relation in relations:
            if relation.effect.end > len(text):
                raise _RowError("field 'relations': a span lies outside prompt + completion")
        if relations or GIVEN_RELATIONS_KEY not in meta.extra:
            wire = [
                {"effect": r.effect.text(text), "causes": [c.text(text) for c in r.causes]}
                for r in relations
            ]
            extra = {
                **meta.extra,
                GIVEN_RELATIONS_KEY: json.dumps({"relations": wire}, ensure_ascii=False),
            }
            updates["extra"] = extra
    if updates:
        meta = meta.model_copy(update=updates)
    return Example.create(prompt, completion, meta)


def _short_validation(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]
