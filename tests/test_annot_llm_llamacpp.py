"""`cattune annotate --annotator llm` through a real llama.cpp server (SmolLM2-135M), as the README
tells a user to run it: file mode and dataset mode, every row annotated or quarantined with a
reason, the server's structured output used, and a re-run that sends the server nothing.

Runs last (marker ``late``): CI builds llama.cpp in the background while the other tests run, and
the fixture waits for that build (scripts/setup_llamacpp.sh is idempotent and locked).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from llamacpp_helpers import MODEL, SETUP_SECONDS, LlamaServer, running_llamacpp

from cattune.pipeline.convert import convert_source
from cattune.pipeline.store import DatasetStore
from cattune.schemas import AnnotatedExample, QuarantinedExample, from_table

pytestmark = [pytest.mark.late, pytest.mark.slow, pytest.mark.timeout(SETUP_SECONDS + 600)]

CATTUNE = Path(sys.executable).with_name("cattune")
STG_UNICODE = {
    "input": "Here is the statistical data for a person 👩‍🔬 (患者: 李明, Zoe\u0301). "
    "Please predict the probability of cancer. Smoking: 9, Room size: 2, Weight: 7, "
    "Yellow fingers: 13, Exercise: 1, Clothing size: 7, Certain gene: 4, Hormones: 0 Answer: ",
    "target": "High Risk",
}
STEP_DOWN = "asking with response_format 'json_object' from now on"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    with running_llamacpp(tmp_path_factory.mktemp("llamacpp")) as running:
        yield running


def source(path: Path, reference: Path, extra: dict[str, str], rows: int = 2) -> Path:
    """The first ``rows`` lines of an authors' file plus one text with emoji, CJK and a
    combining mark, as CAT-format JSONL."""
    lines = reference.read_text(encoding="utf-8").splitlines()[:rows]
    lines.append(json.dumps(extra, ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def first_row(path: Path) -> dict[str, str]:
    with path.open(encoding="utf-8") as lines:
        return json.loads(next(lines))


def cattune(tmp_path: Path, *args: str, **env_vars: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CATTUNE_HOME": str(tmp_path / "home"), **env_vars}
    return subprocess.run(
        [str(CATTUNE), *args], capture_output=True, text=True, env=env, timeout=600, check=False
    )


def llm_args(server: LlamaServer, source: Path, pack: str) -> list[str]:
    """The README's llama.cpp command."""
    return [
        "annotate",
        str(source),
        "--annotator",
        "llm",
        "--pack",
        pack,
        "--base-url",
        server.base_url,
        "--model",
        MODEL,
        "--max-tokens",
        "512",
    ]


def check_rows(
    source: Path, good: list[AnnotatedExample], bad: list[QuarantinedExample], pack: str
) -> None:
    """Every source row ends in exactly one of the outputs; quarantined ones carry a reason."""
    ids = [row.id for row in convert_source(source).records]
    assert sorted(ids) == sorted([r.id for r in good] + [r.id for r in bad])
    assert good, "the model annotated no row"
    for row in good:
        assert row.relations
        assert (row.annotation.model, row.annotation.pack) == (MODEL, pack)
    for row in bad:
        assert row.error.strip() and not row.retryable, row.error


def test_file_mode_uses_the_servers_json_mode_and_reruns_from_cache(
    server: LlamaServer, tmp_path: Path, reference_data: Path
) -> None:
    rows = source(
        tmp_path / "stg.jsonl",
        reference_data / "STG" / "spurious_token_game_test3.jsonl",
        STG_UNICODE,
    )
    out = tmp_path / "stg.parquet"
    args = [*llm_args(server, rows, "key-value-records"), "--out", str(out)]
    first = cattune(tmp_path, *args)
    assert first.returncode == 0, first.stderr
    # json_schema is refused (HTTP 500 naming response_format) for the requests sent before the
    # first refusal came back, then the server's JSON mode with the schema (a grammar) answers
    assert STEP_DOWN in first.stderr
    statuses = server.completion_statuses()
    refused = statuses.count(500)
    assert 1 <= refused <= 3 and statuses == [500] * refused + [200] * (len(statuses) - refused)
    assert f"requests    {len(statuses)} (0 rows from cache)" in first.stdout
    good = from_table(pq.read_table(out), AnnotatedExample)
    bad = from_table(pq.read_table(tmp_path / "stg.quarantine.parquet"), QuarantinedExample)
    check_rows(rows, good, bad, "key-value-records")

    again = cattune(tmp_path, *args)
    assert again.returncode == 0, again.stderr
    assert "requests    0 (3 rows from cache)" in again.stdout
    assert server.completion_statuses() == statuses
    cached = from_table(pq.read_table(out), AnnotatedExample)
    assert [(r.id, r.relations) for r in cached] == [(r.id, r.relations) for r in good]


@pytest.mark.prefect
def test_dataset_mode_commits_every_row_and_reruns_without_requests(
    server: LlamaServer, tmp_path: Path, reference_data: Path, prefect_harness: None
) -> None:
    from prefect.settings import PREFECT_API_URL

    harness = {"PREFECT_API_URL": str(PREFECT_API_URL.value())}  # no server start of its own
    # two STG rows and a MAWPS row: SmolLM2 rarely places a MAWPS phrase verbatim (it rewrites
    # them, e.g. "Zoe\u0301" as "Zoé"), so that row may end in quarantine, with its reason
    rows = source(
        tmp_path / "mixed.jsonl",
        reference_data / "STG" / "spurious_token_game_train3.jsonl",
        first_row(reference_data / "MAWPS" / "mawps_test.jsonl"),
    )
    store = tmp_path / "store"
    args = [*llm_args(server, rows, "key-value-records"), "--dataset", "mixed"]
    args += ["--store", str(store), "--structured-output", "json_object"]
    before = len(server.completion_statuses())
    first = cattune(tmp_path, *args, **harness)
    assert first.returncode == 0, first.stderr
    assert "dataset     mixed: version 0" in first.stdout
    statuses = server.completion_statuses()
    assert len(statuses) > before and set(statuses[before:]) == {200}
    datasets = DatasetStore(store)
    good, bad = datasets.read("mixed"), datasets.quarantine("mixed")
    check_rows(rows, good, bad, "key-value-records")

    again = cattune(tmp_path, *args, **harness)
    assert again.returncode == 0, again.stderr
    assert server.completion_statuses() == statuses
    assert f"skipped     {len(good) + len(bad)} (already annotated" in again.stdout
