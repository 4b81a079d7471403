"""The bad-input corpus (tests/data/bad/, big files generated here): a clear error or a reason.

Each input either stops the CLI with one line ``cattune: error: ...`` and exit status 2 (no
traceback), or runs through with every row accounted for: rows in == rows annotated + rows
quarantined (each with a reason) [+ duplicates the run reports].
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from reliability_helpers import batch_rows, source_rows, write_jsonl

from cattune.flows.cli import main
from cattune.pipeline.release import make_release
from cattune.pipeline.store import DatasetStore
from cattune.schemas import AnnotatedExample, Annotation, Example

BAD = Path(__file__).parent / "data" / "bad"
PACK = "key-value-records"


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def assert_user_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    assert err.startswith("cattune: error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err


def annotate_file(
    capsys: pytest.CaptureFixture[str], source: Path, out: Path, *flags: str
) -> tuple[pa.Table, pa.Table]:
    code, stdout, err = run_cli(
        capsys, "annotate", str(source), "--out", str(out), *(flags or ("--pack", PACK))
    )
    assert code == 0, err
    good = pq.read_table(out)
    bad = pq.read_table(out.with_name(f"{out.stem}.quarantine.parquet"))
    assert f"rows read   {good.num_rows + bad.num_rows} (" in stdout
    assert all(error.strip() for error in bad.column("error").to_pylist())
    return good, bad


def lines_in(path: Path) -> int:
    return sum(1 for line in path.read_bytes().splitlines() if line.strip())


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("empty.jsonl", "file is empty"),
        ("binary.jsonl", "binary file"),
        ("missing.jsonl", "no such file"),
    ],
)
def test_unreadable_files_give_one_line_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, needle: str
) -> None:
    source = BAD / name
    if name == "binary.jsonl":
        source = tmp_path / name
        source.write_bytes(bytes(range(256)) * 40)
    elif name == "missing.jsonl":
        source = tmp_path / name
    code, _, err = run_cli(capsys, "annotate", str(source), "--out", str(tmp_path / "o.parquet"))
    assert_user_error(code, err, needle)
    assert not (tmp_path / "o.parquet").exists()


@pytest.mark.parametrize("name", ["empty.jsonl", "binary.jsonl"])
def test_dataset_mode_reports_unreadable_files_before_prefect_starts(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str
) -> None:
    """Raised inside the flow, these errors came with two Prefect tracebacks on stderr."""
    source = BAD / name
    if name == "binary.jsonl":
        source = tmp_path / name
        source.write_bytes(bytes(range(256)) * 40)
    store = tmp_path / "store"
    code, _, err = run_cli(
        capsys, "annotate", str(source), "--dataset", "d", "--store", str(store), "--pack", PACK
    )
    assert_user_error(code, err, name)
    assert not store.exists()


@pytest.mark.parametrize(
    ("name", "flags", "malformed"),
    [
        ("invalid_utf8.jsonl", (), 1),
        ("wrong_types.jsonl", (), 6),
        ("missing_prompt.jsonl", (), 2),
        ("empty_prompt.jsonl", (), 2),  # "   " is a prompt; the annotator quarantines it
        ("outside_spans.jsonl", ("--annotator", "given", "--format", "contract"), 3),
        ("phrases_not_in_text.jsonl", ("--annotator", "given"), 0),
    ],
)
def test_bad_rows_are_quarantined_with_reasons(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    name: str,
    flags: tuple[str, ...],
    malformed: int,
) -> None:
    source = BAD / name
    good, bad = annotate_file(capsys, source, tmp_path / "o.parquet", *flags)
    assert good.num_rows + bad.num_rows == lines_in(source)
    errors = bad.column("error").to_pylist()
    assert sum(e.startswith("malformed source row") for e in errors) == malformed
    assert bad.num_rows >= malformed and bad.num_rows >= 1
    if name == "phrases_not_in_text.jsonl":
        assert bad.num_rows == 2 and good.num_rows == 1
        assert any("does not occur in the text" in e for e in errors)
        assert any("never ends before" in e for e in errors)


def test_invalid_utf8_in_csv_is_quarantined_or_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    source = tmp_path / "rows.csv"
    source.write_bytes(
        b"prompt,completion\ncaf\xe9 Smoking: 2. Answer: ,Low\nSmoking: 3. Answer: ,High\n"
    )
    capsys.readouterr()
    code = main(["annotate", str(source), "--out", str(tmp_path / "o.parquet"), "--pack", PACK])
    _, err = capsys.readouterr()
    assert "Traceback" not in err
    if code == 2:
        assert_user_error(code, err, "rows.csv")
    else:
        good = pq.read_table(tmp_path / "o.parquet")
        bad = pq.read_table(tmp_path / "o.quarantine.parquet")
        assert good.num_rows + bad.num_rows == 2


def test_parquet_with_wrong_column_types(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    source = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"prompt": [1, 2], "completion": [[1.5], [2.5]]}), source)
    code, out, err = run_cli(
        capsys, "annotate", str(source), "--out", str(tmp_path / "o.parquet"), "--pack", PACK
    )
    if code == 2:
        assert_user_error(code, err)
    else:
        bad = pq.read_table(tmp_path / "o.quarantine.parquet")
        assert bad.num_rows == 2 and "rows read   2 (" in out


def test_five_megabyte_prompt_is_quarantined_not_a_crash(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """spaCy refuses texts over 1,000,000 characters: the prior annotator used to crash."""
    big = "Smoking: 2, " + "lorem ipsum " * (5 * 1024 * 1024 // 12) + "Answer: "
    rows = [{"prompt": big, "completion": "Low Risk"}, *source_rows(3)]
    source = write_jsonl(tmp_path / "big.jsonl", rows)
    assert source.stat().st_size > 5 * 1024 * 1024
    good, bad = annotate_file(capsys, source, tmp_path / "o.parquet")
    assert good.num_rows + bad.num_rows == 4
    [reason] = [e for e in bad.column("error").to_pylist() if "characters" in e]
    assert "more than the prior annotator reads" in reason


@pytest.mark.parametrize(
    ("pack", "needle"),
    [("syntax_error_pack.yaml", "not valid YAML"), ("wrong_schema_pack.yaml", "field")],
)
def test_broken_prior_pack_gives_one_line_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, pack: str, needle: str
) -> None:
    source = write_jsonl(tmp_path / "rows.jsonl", source_rows(3))
    code, _, err = run_cli(
        capsys,
        "annotate",
        str(source),
        "--out",
        str(tmp_path / "o.parquet"),
        "--pack",
        str(BAD / pack),
    )
    assert_user_error(code, err, pack, needle)


def _release(tmp_path: Path) -> Path:
    store = DatasetStore(tmp_path / "store")
    rows = []
    for i in range(5):
        example = Example.create(f"Smoking: {i}. Answer: ", "Low")
        rows.append(
            AnnotatedExample(
                **example.model_dump(),
                relations=[],
                annotation=Annotation(annotator="test", annotator_version="1"),
            )
        )
    store.write("bad", rows)
    out = tmp_path / "release"
    make_release(store, "bad", None, out)
    return out


@pytest.mark.parametrize("damage", ["flip-byte", "truncate", "delete", "manifest-json", "extra"])
def test_tampered_release_fails_verification_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, damage: str
) -> None:
    release = _release(tmp_path)
    code, _, err = run_cli(capsys, "release", "verify", str(release))
    assert code == 0, err
    [data] = sorted((release / "data").glob("*.parquet"))
    for path in (release, release / "data", data, release / "manifest.json"):
        path.chmod(path.stat().st_mode | stat.S_IWUSR)
    if damage == "flip-byte":
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        data.write_bytes(bytes(raw))
    elif damage == "truncate":
        os.truncate(data, data.stat().st_size // 2)
    elif damage == "delete":
        data.unlink()
    elif damage == "manifest-json":
        (release / "manifest.json").write_text("{not json")
    else:
        (data.parent / "planted.parquet").write_bytes(data.read_bytes())
    code, _, err = run_cli(capsys, "release", "verify", str(release))
    assert_user_error(code, err)
    if damage in ("flip-byte", "truncate", "delete"):
        assert data.name in err


@pytest.mark.prefect
def test_hundred_thousand_rows_with_duplicate_texts_through_the_flow(
    prefect_harness: None, tmp_path: Path
) -> None:
    """Duplicates are folded into one row per id; the summary must account for all rows read."""
    from cattune.flows.annotate import annotate_flow

    distinct = 500
    rows = [row for _ in range(200) for row in source_rows(distinct)]
    rows[7] = {"prompt": 3}  # and one malformed row
    source = write_jsonl(tmp_path / "dups.jsonl", rows)
    summary = annotate_flow(str(source), "dups", "prior", PACK, store=str(tmp_path / "store"))
    assert summary.rows_read == 100_000
    assert summary.rows_malformed == 1
    assert summary.rows_annotated + summary.rows_quarantined - summary.rows_malformed == distinct
    assert summary.rows_duplicate == 100_000 - 1 - distinct
    accounted = (
        summary.rows_annotated
        + summary.rows_quarantined
        + summary.rows_skipped
        + summary.rows_duplicate
    )
    assert accounted == summary.rows_read


def _edit_manifest(release: Path, edit: dict) -> None:
    path = release / "manifest.json"
    path.chmod(0o644)
    manifest = json.loads(path.read_text())
    manifest["files"][0].update(edit)
    path.write_text(json.dumps(manifest))


def test_manifest_paths_cannot_point_outside_the_release(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    release = _release(tmp_path)
    [data] = sorted((release / "data").glob("*.parquet"))
    outside = tmp_path / "outside.parquet"
    outside.write_bytes(data.read_bytes())
    _edit_manifest(release, {"path": str(outside)})
    (release / "data").chmod(0o755)
    data.unlink()
    code, _, err = run_cli(capsys, "release", "verify", str(release))
    assert_user_error(code, err, "outside")


def test_training_reader_refuses_manifest_paths_outside_the_release(tmp_path: Path) -> None:
    """Training checks releases with ``ReleaseManifest.problems()``, not ``verify_release``."""
    from cattune.schemas import StoreError
    from cattune.training.release_io import read_manifest

    release = _release(tmp_path)
    [data] = sorted((release / "data").glob("*.parquet"))
    outside = tmp_path / "outside.parquet"
    outside.write_bytes(data.read_bytes())
    _edit_manifest(release, {"path": str(outside)})
    (release / "data").chmod(0o755)
    data.unlink()
    with pytest.raises(StoreError):
        read_manifest(release)


def test_manifest_row_counts_are_checked(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    release = _release(tmp_path)
    _edit_manifest(release, {"rows": 6})
    code, _, err = run_cli(capsys, "release", "verify", str(release))
    assert_user_error(code, err, "rows")


@pytest.mark.parametrize("damage", ["missing-data-file", "corrupt-log-entry"])
def test_damaged_store_gives_one_line_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, damage: str
) -> None:
    store = DatasetStore(tmp_path / "store")
    for batch in range(2):
        store.write("hurt", batch_rows("a", batch, 3))
    rows = tmp_path / "store" / "hurt" / "table"
    if damage == "missing-data-file":
        for data in rows.glob("*.parquet"):
            data.unlink()
    else:
        sorted((rows / "_delta_log").glob("*.json"))[-1].write_text("{broken")
    code, _, err = run_cli(capsys, "datasets", "show", "hurt", "--store", str(tmp_path / "store"))
    assert_user_error(code, err, "hurt")
