"""The annotate flow under a real Prefect server (the session-wide test harness)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from cattune.flows.annotate import annotate_flow, summary_markdown
from cattune.pipeline.release import make_release
from cattune.pipeline.store import DatasetStore

pytestmark = pytest.mark.prefect


def cat_rows(start: int, stop: int) -> list[dict]:
    """CAT-format rows (the authors' `input`/`target`/`important`), one per integer."""
    rows = []
    for i in range(start, stop):
        prompt = f"Person {i}. Smoking: {i % 10}, Weight: {i % 7}, Room size: 3 Answer: "
        target = "High Risk" if (i % 10) > 4 else "Low Risk"
        causes = [f"Smoking: {i % 10}", f"Weight: {i % 7}"]
        rows.append({"input": prompt, "target": target, "important": [{target: causes}]})
    return rows


def write_jsonl(path: Path, rows: list[dict], extra_lines: list[str] = ()) -> Path:
    lines = [json.dumps(row) for row in rows] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cat_file_end_to_end(prefect_harness: None, reference_data: Path, tmp_path: Path) -> None:
    """CAT-format reference file, given annotator: versions 0 and 1, time travel, release."""
    store_root = str(tmp_path / "store")
    full = (reference_data / "STG" / "spurious_token_game_train3_S.jsonl").read_text().splitlines()
    first = tmp_path / "stg_a.jsonl"
    first.write_text("\n".join(full[:150]) + "\n{broken json\n")

    summary = annotate_flow(
        str(first), "stg-cat", annotator="given", format="cat", store=store_root, shard_size=40
    )
    assert summary.version == 0 and summary.committed
    assert summary.rows_read == 151 and summary.rows_malformed == 1
    assert summary.shards == 4
    assert summary.rows_annotated + summary.rows_quarantined == 151
    store = DatasetStore(store_root)
    assert len(store.read("stg-cat", 0)) == summary.rows_annotated
    reasons = [q.error for q in store.quarantine("stg-cat")]
    assert any(r.startswith("malformed source row: ") and "(row 151)" in r for r in reasons)
    assert summary.quarantine_reasons["malformed source row"] == 1
    lineage = store.history("stg-cat")[0].lineage
    assert lineage is not None
    assert lineage.annotator == "given" and lineage.flow_run_id == summary.flow_run_id
    assert lineage.source_sha256 == summary.source_sha256 and lineage.rows_annotated > 100

    second = tmp_path / "stg_b.jsonl"
    second.write_text("\n".join(full[:200]) + "\n")
    again = annotate_flow(
        str(second), "stg-cat", annotator="given", format="cat", store=store_root, shard_size=40
    )
    assert again.version == 1
    assert again.rows_skipped >= summary.rows_annotated
    assert again.rows_annotated + again.rows_quarantined + again.rows_skipped == 200
    assert len(store.read("stg-cat", 0)) == summary.rows_annotated
    assert len(store.read("stg-cat")) == summary.rows_annotated + again.rows_annotated

    release = tmp_path / "release"
    manifest = make_release(store, "stg-cat", 0, release)
    import datasets

    loaded = datasets.load_dataset("parquet", data_dir=str(release / "data"))
    assert sum(len(split) for split in loaded.values()) == summary.rows_annotated
    assert manifest.lineage[0]["flow_run_id"] == summary.flow_run_id

    from prefect.artifacts import Artifact

    artifact = Artifact.get("annotate-stg-cat")
    assert artifact is not None and "version 1" in (artifact.data or "")


def test_incremental_run_annotates_only_new_rows(prefect_harness: None, tmp_path: Path) -> None:
    store_root = str(tmp_path / "store")
    source = write_jsonl(tmp_path / "src.jsonl", cat_rows(0, 2000))
    first = annotate_flow(
        str(source), "inc", annotator="given", format="cat", store=store_root, shard_size=500
    )
    assert (first.rows_annotated, first.rows_skipped, first.version) == (2000, 0, 0)

    write_jsonl(source, cat_rows(0, 2200))
    second = annotate_flow(
        str(source), "inc", annotator="given", format="cat", store=store_root, shard_size=500
    )
    assert (second.rows_annotated, second.rows_skipped, second.version) == (200, 2000, 1)
    assert second.shards == 1
    assert len(DatasetStore(store_root).read("inc")) == 2200

    write_jsonl(source, cat_rows(0, 2200) + cat_rows(10, 15))
    third = annotate_flow(str(source), "inc", annotator="given", format="cat", store=store_root)
    assert (third.rows_annotated, third.committed, third.version) == (0, False, 1)
    assert (third.rows_read, third.rows_duplicate, third.rows_skipped) == (2205, 5, 2200)


def test_concurrent_flows_on_one_dataset(prefect_harness: None, tmp_path: Path) -> None:
    store_root = str(tmp_path / "store")
    sources = [
        write_jsonl(tmp_path / "a.jsonl", cat_rows(0, 300)),
        write_jsonl(tmp_path / "b.jsonl", cat_rows(200, 500)),
    ]
    outcomes: list[object] = []

    def run(source: Path) -> None:
        try:
            outcomes.append(
                annotate_flow(
                    str(source),
                    "shared",
                    annotator="given",
                    format="cat",
                    store=store_root,
                    shard_size=100,
                )
            )
        except Exception as error:  # noqa: BLE001 - the test inspects what happened
            outcomes.append(error)

    threads = [threading.Thread(target=run, args=(s,)) for s in sources]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert all(not isinstance(o, Exception) for o in outcomes), outcomes
    store = DatasetStore(store_root)
    rows = store.read("shared")
    assert len(rows) == len({r.id for r in rows}) == 500
    assert sorted(o.version for o in outcomes) == [0, 1]


def test_summary_markdown_marks_examples() -> None:
    from cattune.flows.annotate import AnnotateSummary
    from cattune.schemas import AnnotatedExample, Annotation, Example, Relation, Span

    example = Example.create("Smoking: 9. Answer: ", "High Risk")
    row = AnnotatedExample(
        **example.model_dump(),
        relations=[Relation(effect=Span(start=20, end=29), causes=[Span(start=0, end=10)])],
        annotation=Annotation(annotator="gold", annotator_version="1"),
    )
    summary = AnnotateSummary(
        dataset="d",
        version=3,
        committed=True,
        source="s.jsonl",
        source_sha256="0" * 64,
        annotator="gold",
        config_hash="abc",
        rows_read=2,
        rows_annotated=1,
        rows_quarantined=1,
        quarantine_reasons={"phrase 'x' | not found": 1, "no *relations* in prompt_field\nrow": 2},
    )
    text = summary_markdown(summary, [row])
    assert "version 3" in text
    assert "| 2 | 0 | 0 | 0 | 1 | 1 |" in text
    assert "- **1 row**: phrase 'x' | not found\n" in text
    assert "- **2 rows**: no \\*relations\\* in prompt\\_field row\n" in text
    assert "**Smoking: 9**. Answer: _High Risk_" in text


def test_flow_body_only_orchestrates(
    prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Skip query, hashing, lineage and commit are retried tasks; the store is opened once."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    opened: list[str] = []
    real_init = DatasetStore.__init__

    def counting(self: DatasetStore, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        opened.append(str(args[0] if args else kwargs.get("root")))
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(DatasetStore, "__init__", counting)
    source = write_jsonl(tmp_path / "rows.jsonl", cat_rows(0, 30))
    store_root = str(tmp_path / "store")
    summary = annotate_flow(
        str(source), "orch", annotator="given", format="cat", store=store_root, shard_size=10
    )
    assert opened == [store_root]
    assert summary.committed and summary.rows_annotated == 30

    # Prefect records task runs from events, after the flow has returned: wait until all 8 are in.
    deadline = time.monotonic() + 60
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[summary.flow_run_id]))
            )
            if len(runs) >= 8 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    retries = {run.name.rsplit("-", 1)[0]: run.empirical_policy.retries for run in runs}
    assert {name: retries.get(name) for name in ("skip-done", "hash-source", "lineage")} == {
        "skip-done": 2,
        "hash-source": 2,
        "lineage": 2,
    }
    assert "commit-version" in retries and "load-source" in retries
    assert sum(run.name.startswith("annotate-shard") for run in runs) == 3


def staged_folders(store_root: str, dataset: str) -> list[Path]:
    return sorted((Path(store_root) / dataset / "_staging").glob("*"))


def test_a_run_killed_before_its_commit_reuses_its_staged_shards(
    prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store_root = str(tmp_path / "store")
    source = write_jsonl(tmp_path / "src.jsonl", cat_rows(0, 30), ["{broken"])

    def killed(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
        raise RuntimeError("the process died before the commit")

    with monkeypatch.context() as patch:
        patch.setattr(DatasetStore, "write_parts", killed)
        with pytest.raises(RuntimeError, match="died before the commit"):
            annotate_flow(
                str(source),
                "staged",
                annotator="given",
                format="cat",
                store=store_root,
                shard_size=10,
            )
    (folder,) = staged_folders(store_root, "staged")
    assert len(list(folder.glob("shard-*.annotated.parquet"))) == 3
    assert not DatasetStore(store_root).exists("staged")

    summary = annotate_flow(
        str(source), "staged", annotator="given", format="cat", store=store_root, shard_size=10
    )
    assert (summary.version, summary.shards, summary.shards_reused) == (0, 3, 3)
    assert (summary.rows_annotated, summary.rows_malformed, summary.rows_quarantined) == (30, 1, 1)
    store = DatasetStore(store_root)
    assert len(store.read("staged")) == 30 and len(store.quarantine("staged")) == 1
    assert staged_folders(store_root, "staged") == []


def test_a_run_killed_after_its_commit_never_commits_its_staging_twice(
    prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state a kill between the commit and the staging's removal leaves behind."""
    import cattune.flows.annotate as module

    store_root = str(tmp_path / "store")
    source = write_jsonl(tmp_path / "src.jsonl", cat_rows(0, 25))
    with monkeypatch.context() as patch:
        patch.setattr(module, "remove_staging", lambda staging: None)
        first = annotate_flow(
            str(source), "twice", annotator="given", format="cat", store=store_root, shard_size=10
        )
    assert (first.version, first.committed, first.rows_annotated) == (0, True, 25)
    (left,) = staged_folders(store_root, "twice")
    assert left.name.endswith("-v-1")

    again = annotate_flow(
        str(source), "twice", annotator="given", format="cat", store=store_root, shard_size=10
    )
    assert (again.version, again.committed, again.shards_reused) == (0, False, 0)
    assert (again.rows_skipped, again.rows_annotated) == (25, 0)
    assert [c.version for c in DatasetStore(store_root).history("twice")] == [0]
    assert staged_folders(store_root, "twice") == []
