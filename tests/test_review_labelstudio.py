"""Export -> review in a real Label Studio server -> import, and the labelling page in Chromium.

Slow (Label Studio's first start migrates its database: ~1-3 min here); one module-scoped server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cattune.flows.cli import main
from cattune.pipeline.convert import convert_source
from cattune.pipeline.labelstudio import EFFECT, to_ls_offset
from cattune.pipeline.review import HUMAN, config_path
from cattune.pipeline.store import DatasetStore
from cattune.schemas import Relation, Span
from tests.labelstudio_helpers import LabelStudio, chromium, headless_page, running_labelstudio
from tests.review_helpers import edited, rows

ARTIFACTS = Path(__file__).resolve().parent.parent / "runs" / "test-artifacts" / "review"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudio]:
    with running_labelstudio(tmp_path_factory.mktemp("labelstudio")) as running:
        yield running


@pytest.fixture(scope="module")
def reviewed(
    server: LabelStudio, tmp_path_factory: pytest.TempPathFactory, reference_data: Path
) -> dict[str, Any]:
    """A dataset exported, imported into a Label Studio project, reviewed, and exported back."""
    work = tmp_path_factory.mktemp("review")
    store = DatasetStore(work / "store")
    mawps = convert_source(reference_data / "MAWPS" / "mawps_train.jsonl").records[:3]
    store.write("mix", [*rows(), *mawps])
    tasks_path = work / "tasks.json"
    assert main(["review", "export", "mix", "--out", str(tasks_path), "--store", store.root]) == 0
    tasks = json.loads(tasks_path.read_text(encoding="utf-8"))
    with server.client() as api:
        created = api.post(
            "/api/projects",
            json={
                "title": "cattune review",
                "label_config": config_path(tasks_path).read_text(encoding="utf-8"),
                "show_collab_predictions": True,
            },
        )
        assert created.status_code == 201, created.text[:500]
        project = created.json()["id"]
        imported = api.post(f"/api/projects/{project}/import", json=tasks)
        assert imported.status_code == 201, imported.text[:500]
        assert imported.json()["task_count"] == len(tasks)
        listed = api.get("/api/tasks", params={"project": project, "page_size": 100}).json()
        server_tasks = listed["tasks"] if isinstance(listed, dict) else listed
        task_ids = {t["data"]["cattune_id"]: t["id"] for t in server_tasks}
        emoji, cjk = rows()[0], rows()[1]
        by_id = {t["data"]["cattune_id"]: t for t in tasks}
        prediction = {key: t["predictions"][0]["result"] for key, t in by_id.items()}
        submissions = {
            # one relation removed, one span moved (onto text after an emoji)
            emoji.id: edited(
                prediction[emoji.id],
                emoji.text,
                drop_relation=0,
                move=("sells 5", "12 cakes 🎂"),
                offset=to_ls_offset,
            ),
            cjk.id: prediction[cjk.id],
        }
        for row_id, result in submissions.items():
            answer = api.post(
                f"/api/tasks/{task_ids[row_id]}/annotations",
                json={"result": result, "was_cancelled": False},
            )
            assert answer.status_code == 201, answer.text[:500]
        export = api.get(
            f"/api/projects/{project}/export",
            params={"exportType": "JSON", "download_all_tasks": "true"},
        )
        assert export.status_code == 200, export.text[:500]
    export_path = work / "export.json"
    export_path.write_bytes(export.content)
    return {
        "store": store,
        "export": export_path,
        "project": project,
        "task_ids": task_ids,
        "tasks": tasks,
    }


def test_import_of_a_real_export_changes_exactly_the_reviewed_rows(
    reviewed: dict[str, Any],
) -> None:
    store: DatasetStore = reviewed["store"]
    export = json.loads(reviewed["export"].read_text(encoding="utf-8"))
    assert len(export) == len(reviewed["tasks"])
    assert main(["review", "import", "mix", str(reviewed["export"]), "--store", store.root]) == 0

    emoji, cjk = rows()[0], rows()[1]
    assert store.diff("mix", 0, 1).relabelled == [emoji.id]
    before = {r["id"]: r for r in store.read_table("mix", 0).to_pylist()}
    after = {r["id"]: r for r in store.read_table("mix", 1).to_pylist()}
    assert before.keys() == after.keys()
    for row_id in before.keys() - {emoji.id, cjk.id}:
        assert after[row_id] == before[row_id]
    new = {row.id: row for row in store.read("mix", 1)}
    text = emoji.text

    def span(phrase: str) -> Span:
        start = text.index(phrase)
        return Span(start=start, end=start + len(phrase))

    assert new[emoji.id].relations == [
        Relation(effect=span("7"), causes=[span("bakes 12 cakes"), span("12 cakes 🎂")])
    ]
    assert new[cjk.id].relations == cjk.relations
    for row_id in (emoji.id, cjk.id):
        row = new[row_id]
        assert row.annotation.annotator == HUMAN
        assert row.meta.extra["review_ls_task"] == str(reviewed["task_ids"][row_id])
        assert row.meta.extra["review_ls_project"] == str(reviewed["project"])
        assert row.meta.extra["review_reviewer"] == "user 1"  # the export gives the user id
        assert (
            row.prompt + row.completion == before[row_id]["prompt"] + before[row_id]["completion"]
        )


@pytest.mark.skipif(chromium() is None, reason="no chromium on this machine")
def test_labelling_page_draws_the_predicted_spans_on_the_right_words(
    server: LabelStudio, reviewed: dict[str, Any], tmp_path: Path
) -> None:
    row = rows()[2]  # combining marks, curly quote, emoji with a skin-tone modifier
    task = reviewed["task_ids"][row.id]
    expected = sorted(
        {span.text(row.text) for r in row.relations for span in (r.effect, *r.causes)}
    )
    person = row.text.index("Answer")  # after 👍🏽: two astral characters earlier in the text
    assert len(row.text[:person].encode("utf-16-le")) // 2 == person + 2
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with headless_page(chromium() or "", tmp_path) as page:
        page.send(
            "Network.setCookie",
            name="sessionid",
            value=server.session_cookie(),
            url=server.url,
        )
        page.send(
            "Page.navigate", url=f"{server.url}/projects/{reviewed['project']}/data?task={task}"
        )
        page.wait_for(f"{HIGHLIGHTS_SCRIPT}.length >= {len(expected)}")
        drawn = page.evaluate(HIGHLIGHTS_SCRIPT)
        page.screenshot(ARTIFACTS / "labelling-page.png")
        # A person picks the Effect label and drags the mouse over "Answer".
        page.click(*page.evaluate(EFFECT_BUTTON_SCRIPT))
        box = page.evaluate(f"{PHRASE_BOX_SCRIPT}({json.dumps('Answer')})")
        page.drag(box["x0"], box["x1"], box["y"])
        page.wait_for(f"{REGIONS_SCRIPT}.length > {len(expected)}")
        regions = json.loads(page.evaluate(f"JSON.stringify({REGIONS_SCRIPT})"))
        page.screenshot(ARTIFACTS / "labelling-page-selection.png")
    assert sorted(set(drawn)) == expected
    selected = [r["value"] for r in regions if r["value"]["text"] == "Answer"]
    assert selected == [{"start": person, "end": person + 6, "text": "Answer", "labels": [EFFECT]}]


# The text of every highlighted region on the page (Label Studio draws Text regions as spans
# with the class htx-highlight); empty until the task has rendered.
HIGHLIGHTS_SCRIPT = """(() => {
  const docs = [document, ...Array.from(document.querySelectorAll('iframe'))
    .map(f => { try { return f.contentDocument; } catch (e) { return null; } })
    .filter(Boolean)];
  const found = new Map();
  for (const doc of docs) {
    for (const el of doc.querySelectorAll('span.htx-highlight')) {
      found.set(el, el.textContent);
    }
  }
  return Array.from(found.values());
})()"""

# The centre of the Effect label button of the labelling interface.
EFFECT_BUTTON_SCRIPT = """(() => {
  const label = Array.from(document.querySelectorAll('span.lsf-label'))
    .find(e => e.querySelector('.lsf-label__text')?.textContent === 'Effect');
  const r = label.getBoundingClientRect();
  return [r.left + r.width / 2, r.top + r.height / 2];
})()"""

# Page coordinates of a phrase inside the task's text (the element holding the highlights).
PHRASE_BOX_SCRIPT = """((phrase) => {
  const docs = [[document, 0, 0]];
  for (const f of document.querySelectorAll('iframe')) {
    try {
      const r = f.getBoundingClientRect();
      if (f.contentDocument) docs.push([f.contentDocument, r.left, r.top]);
    } catch (e) {}
  }
  for (const [doc, dx, dy] of docs) {
    const mark = doc.querySelector('span.htx-highlight');
    if (!mark) continue;
    let root = mark.parentElement;
    while (root && !root.textContent.includes(phrase)) root = root.parentElement;
    if (!root) continue;
    const walker = doc.createTreeWalker(root, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      const at = node.data.indexOf(phrase);
      if (at < 0) continue;
      const range = doc.createRange();
      range.setStart(node, at);
      range.setEnd(node, at + phrase.length);
      const rects = range.getClientRects();
      const first = rects[0], last = rects[rects.length - 1];
      const y = first.top + dy + first.height / 2;
      return {x0: first.left + dx + 1, y: y, x1: last.right + dx - 1};
    }
  }
  return null;
})"""

# The labels regions of the annotation on screen, as Label Studio will submit them.
REGIONS_SCRIPT = """window.Htx.annotationStore.selected.serializeAnnotation()
  .filter(r => r.type === 'labels')"""
