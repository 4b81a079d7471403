"""Review export and import without a server: offsets, tasks, and the version an import commits."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cattune.flows.cli import main
from cattune.pipeline.labelstudio import (
    CAUSE,
    EFFECT,
    FROM_NAME,
    TO_NAME,
    from_ls_offset,
    group_pairs,
    labeling_config,
    prediction_result,
    relations_from_result,
    to_ls_offset,
)
from cattune.pipeline.review import (
    HUMAN,
    config_path,
    export_review,
    import_review,
    read_export,
    select_rows,
)
from cattune.pipeline.store import DatasetStore
from cattune.schemas import (
    AnnotatedExample,
    Annotation,
    ConfigError,
    Example,
    InputError,
    Meta,
    QuarantinedExample,
    Relation,
    Span,
)
from tests.review_helpers import edited, rows, simulated_export, write_json

UNICODE = st.text(
    alphabet=st.sampled_from(
        list("ab 7.,")
        + ["\u00e9", "\u0301", "中", "文", "🍎", "👩", "\u200d", "👧", "🏽", "\U0001f1fa"]
    ),
    max_size=40,
)


@given(UNICODE)
def test_offsets_convert_exactly_both_ways(text: str) -> None:
    for index in range(len(text) + 1):
        utf16 = len(text[:index].encode("utf-16-le")) // 2
        assert to_ls_offset(text, index, "utf16") == utf16
        assert from_ls_offset(text, utf16, "utf16") == index
        assert from_ls_offset(text, to_ls_offset(text, index, "code_point"), "code_point") == index


def test_an_offset_inside_a_surrogate_pair_or_past_the_end_is_refused() -> None:
    text = "a🍎b"
    with pytest.raises(ValueError, match="inside a character"):
        from_ls_offset(text, 2, "utf16")
    with pytest.raises(ValueError, match="outside the text"):
        from_ls_offset(text, 4, "code_point")
    with pytest.raises(ValueError, match="outside the text"):
        to_ls_offset(text, 5)


@st.composite
def labelled_texts(draw: st.DrawFn) -> tuple[str, list[Relation]]:
    text = draw(UNICODE.filter(lambda t: len(t) >= 4))
    relations = []
    for _ in range(draw(st.integers(1, 3))):
        effect_start = draw(st.integers(1, len(text) - 1))
        effect_end = draw(st.integers(effect_start + 1, len(text)))
        causes = []
        for _ in range(draw(st.integers(1, 3))):
            start = draw(st.integers(0, effect_start - 1))
            causes.append(Span(start=start, end=draw(st.integers(start + 1, effect_start))))
        relations.append(Relation(effect=Span(start=effect_start, end=effect_end), causes=causes))
    return text, relations


@given(labelled_texts())
def test_predictions_round_trip_to_the_same_pairs(case: tuple[str, list[Relation]]) -> None:
    text, relations = case
    example = Example.create(text[:2], text[2:])
    annotation = Annotation(annotator="t", annotator_version="1")
    row = AnnotatedExample(**example.model_dump(), relations=relations, annotation=annotation)
    result = prediction_result(row)
    for region in (r for r in result if r["type"] == "labels"):
        value = region["value"]
        start, end = (from_ls_offset(text, value[k]) for k in ("start", "end"))
        assert text[start:end] == value["text"]
    pairs, problems = relations_from_result(text, result)
    assert problems == []
    expected = {(r.effect, c) for r in relations for c in r.causes}
    assert set(pairs) == expected and len(pairs) == len(expected)
    assert {(r.effect, c) for r in group_pairs(pairs) for c in r.causes} == expected


def test_labeling_config_names_the_regions_the_tasks_use() -> None:
    view = ET.fromstring(labeling_config())
    labels = view.find("Labels")
    assert labels is not None and labels.get("name") == FROM_NAME
    assert labels.get("toName") == TO_NAME and labels.get("choice") == "multiple"
    assert [label.get("value") for label in labels] == [CAUSE, EFFECT]
    text = view.find("Text")
    assert text is not None and (text.get("name"), text.get("value")) == (TO_NAME, "$text")


def test_a_span_in_a_chain_is_one_region_with_both_labels() -> None:
    row = rows()[2]  # "8 were eaten" is the effect of "café" and a cause of "12"
    result = prediction_result(row)
    both = [
        r["value"]["text"]
        for r in result
        if r["type"] == "labels" and len(r["value"]["labels"]) == 2
    ]
    assert both == ["8 were eaten"]
    assert sum(r["type"] == "relation" for r in result) == 3


@pytest.fixture()
def store(tmp_path: Path) -> DatasetStore:
    store = DatasetStore(tmp_path / "store")
    store.write("mix", rows())
    return store


def test_export_writes_tasks_and_config(store: DatasetStore, tmp_path: Path) -> None:
    out = tmp_path / "out" / "tasks.json"
    result = export_review(store, "mix", None, out)
    assert (result.version, result.rows, result.config) == (0, 4, config_path(out))
    assert result.config.read_text(encoding="utf-8") == labeling_config()
    tasks = json.loads(out.read_text(encoding="utf-8"))
    by_id = {row.id: row for row in rows()}
    for task in tasks:
        row = by_id[task["data"]["cattune_id"]]
        assert task["data"]["text"] == row.text
        assert task["data"]["cattune_version"] == 0
        assert task["predictions"][0]["result"] == prediction_result(row)
        assert task["predictions"][0]["model_version"] == "prior"


def test_import_changes_exactly_the_reviewed_rows(store: DatasetStore, tmp_path: Path) -> None:
    out = tmp_path / "tasks.json"
    export_review(store, "mix", None, out)
    tasks = json.loads(out.read_text(encoding="utf-8"))
    texts = [t["data"]["text"] for t in tasks]
    index = {t["data"]["cattune_id"]: i for i, t in enumerate(tasks)}
    emoji, cjk, combining, mawps = (index[row.id] for row in rows())
    prediction = [t["predictions"][0]["result"] for t in tasks]
    results = {
        # drop the first relation (sells 5 <- bakes 12 cakes); move "sells 5" onto "12 cakes 🎂"
        emoji: edited(
            prediction[emoji],
            texts[emoji],
            drop_relation=0,
            move=("sells 5", "12 cakes 🎂"),
            offset=to_ls_offset,
        ),
        cjk: prediction[cjk],  # confirmed unchanged
        mawps: edited(prediction[mawps], texts[mawps], drop_relation=1),
    }
    export = write_json(tmp_path / "export.json", simulated_export(tasks, results))

    outcome = import_review(store, "mix", export)

    assert (outcome.version, outcome.reviewed, outcome.changed) == (1, 3, 2)
    assert (outcome.quarantined, outcome.unreviewed_tasks, outcome.rejected) == (0, 1, [])
    diff = store.diff("mix", 0, 1)
    assert set(diff.relabelled) == {
        tasks[emoji]["data"]["cattune_id"],
        tasks[mawps]["data"]["cattune_id"],
    }
    assert (diff.added, diff.removed, diff.unchanged) == ([], [], 2)
    before = {r["id"]: r for r in store.read_table("mix", 0).to_pylist()}
    after = {r["id"]: r for r in store.read_table("mix", 1).to_pylist()}
    untouched = tasks[combining]["data"]["cattune_id"]
    assert after[untouched] == before[untouched]

    new = {row.id: row for row in store.read("mix", 1)}
    text = texts[emoji]

    def span(phrase: str) -> Span:
        start = text.index(phrase)
        return Span(start=start, end=start + len(phrase))

    moved = new[tasks[emoji]["data"]["cattune_id"]]
    assert moved.relations == [
        Relation(effect=span("7"), causes=[span("bakes 12 cakes"), span("12 cakes 🎂")])
    ]
    confirmed = new[tasks[cjk]["data"]["cattune_id"]]
    original = {row.id: row for row in rows()}[confirmed.id]
    assert confirmed.relations == original.relations
    for row in (moved, confirmed):
        assert row.annotation.annotator == HUMAN
        assert row.annotation.config_hash == "cfg1"
        assert row.meta.extra["review_reviewer"] == "reviewer@example.com"
        assert row.meta.extra["review_ls_project"] == "3"
        assert row.meta.extra["review_of_version"] == "0"
        assert row.meta.source == "review-test"
    assert moved.meta.extra["review_ls_task"] == str(10 + emoji)
    assert moved.meta.extra["review_ls_annotation"] == str(100 + emoji)
    assert [c.lineage.annotator for c in store.history("mix")] == [None, HUMAN]


def test_unreadable_reviews_quarantine_the_row_and_leave_it(
    store: DatasetStore, tmp_path: Path
) -> None:
    out = tmp_path / "tasks.json"
    export_review(store, "mix", None, out)
    tasks = json.loads(out.read_text(encoding="utf-8"))
    bad = [
        dict(r, value=dict(r["value"])) if r["type"] == "labels" else r
        for r in tasks[0]["predictions"][0]["result"]
    ]
    region = next(r for r in bad if r["type"] == "labels")
    region["value"]["start"] += 1  # the recorded text no longer matches the offsets
    backwards = [
        dict(r, direction="left") if r["type"] == "relation" else r
        for r in tasks[1]["predictions"][0]["result"]
    ]
    dangling = [
        *tasks[2]["predictions"][0]["result"],
        {"type": "relation", "from_id": "x", "to_id": "y"},
    ]
    export = write_json(
        tmp_path / "export.json", simulated_export(tasks, {0: bad, 1: backwards, 2: dangling})
    )

    outcome = import_review(store, "mix", export)

    assert (outcome.reviewed, outcome.quarantined) == (2, 1)
    quarantined = store.quarantine("mix")
    assert [q.id for q in quarantined] == [tasks[0]["data"]["cattune_id"]]
    assert "Label Studio recorded" in quarantined[0].error
    assert quarantined[0].raw_output is not None
    before = {r["id"]: r for r in store.read_table("mix", 0).to_pylist()}
    after = {r["id"]: r for r in store.read_table("mix", 1).to_pylist()}
    assert after[tasks[0]["data"]["cattune_id"]] == before[tasks[0]["data"]["cattune_id"]]
    new = {row.id: row for row in store.read("mix")}
    reversed_row = new[tasks[1]["data"]["cattune_id"]]
    assert reversed_row.relations == []
    assert all("does not end before" in p for p in reversed_row.problems)
    assert len(reversed_row.problems) == 2
    kept = new[tasks[2]["data"]["cattune_id"]]
    assert kept.problems == ["relation 'x' -> 'y' names a region that is not there"]
    assert kept.relations == {r.id: r for r in rows()}[kept.id].relations


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "not JSON"),
        ('{"id": 1}', "expected a list of tasks"),
        ('[{"id": 1, "data": {"text": "x"}}]', "task 1 is not a cattune review task"),
    ],
)
def test_wrong_export_files_are_one_line_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "export.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=message) as error:
        read_export(path)
    assert "\n" not in str(error.value)


def test_import_refuses_another_datasets_tasks(store: DatasetStore, tmp_path: Path) -> None:
    out = tmp_path / "tasks.json"
    export_review(store, "mix", None, out)
    tasks = json.loads(out.read_text(encoding="utf-8"))
    export = write_json(tmp_path / "export.json", simulated_export(tasks, {}))
    with pytest.raises(ConfigError, match="holds tasks of dataset 'mix', not 'other'"):
        import_review(store, "other", export)


def test_selection_samples_and_filters_by_agreement(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "store")
    scored = [
        row.model_copy(update={"meta": Meta(extra={"agreement": str(score)})})
        for row, score in zip(rows(), (0.2, 0.9, 0.5, 1.0), strict=True)
    ]
    plain = rows()
    store.write("plain", plain)
    store.write("scored", scored)
    sample = select_rows(store, "plain", sample=2, seed=1)
    assert len(sample) == 2 and sample == select_rows(store, "plain", sample=2, seed=1)
    low = select_rows(store, "scored", below=0.6)
    assert sorted(r.id for r in low) == sorted(scored[i].id for i in (0, 2))
    with pytest.raises(ConfigError, match="cattune review aggregate"):
        select_rows(store, "plain", below=0.5)


def test_a_reviewed_quarantined_row_leaves_the_quarantine(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "store")
    good, stuck = rows()[0], rows()[1]
    failure = QuarantinedExample(
        **stuck.model_dump(exclude={"relations", "problems"}), error="no cause found"
    )
    store.write("mix", [good], [failure])
    out = tmp_path / "tasks.json"
    assert export_review(store, "mix", None, out, quarantine=True).rows == 1
    tasks = json.loads(out.read_text(encoding="utf-8"))
    assert tasks[0]["predictions"][0]["result"] == []
    reviewed = prediction_result(stuck)  # the reviewer draws the relations from scratch
    export = write_json(tmp_path / "export.json", simulated_export(tasks, {0: reviewed}))

    outcome = import_review(store, "mix", export)

    assert (outcome.reviewed, outcome.changed, outcome.quarantined) == (1, 1, 0)
    assert store.quarantine("mix") == []
    new = {row.id: row for row in store.read("mix")}
    assert new[stuck.id].relations == stuck.relations
    assert new[stuck.id].annotation.annotator == HUMAN
    assert new[good.id] == good


def test_the_quarantine_is_exported_as_of_a_version(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "store")
    good, stuck = rows()[0], rows()[1]
    failure = QuarantinedExample(
        **stuck.model_dump(exclude={"relations", "problems"}), error="no cause found"
    )
    store.write("mix", [good], [failure])
    store.write("mix", [stuck], [])  # version 1 annotates the failed row
    out = tmp_path / "tasks.json"
    assert export_review(store, "mix", 0, out, quarantine=True).rows == 1
    assert export_review(store, "mix", None, out, quarantine=True).rows == 0


def test_a_task_whose_id_is_not_its_text_is_rejected_and_the_rest_imported(
    store: DatasetStore, tmp_path: Path
) -> None:
    out = tmp_path / "tasks.json"
    export_review(store, "mix", None, out)
    tasks = json.loads(out.read_text(encoding="utf-8"))
    tasks[0]["data"]["completion"] += " (edited)"
    tasks[0]["data"]["text"] += " (edited)"
    results = {i: t["predictions"][0]["result"] for i, t in enumerate(tasks[:2])}
    export = write_json(tmp_path / "export.json", simulated_export(tasks, results))

    outcome = import_review(store, "mix", export)

    assert outcome.reviewed == 1 and len(outcome.rejected) == 1
    assert outcome.rejected[0].startswith("task 10: ")
    assert "is not the content hash of the text" in outcome.rejected[0]
    code = main(["review", "import", "mix", str(export), "--store", store.root])
    assert code == 1
