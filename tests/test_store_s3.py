"""The store and releases on an S3-compatible server (moto's server mode on 127.0.0.1).

Everything is configured the way a user configures it: the standard ``AWS_*`` variables that
deltalake and pyarrow read (endpoint, keys, region, ``AWS_ALLOW_HTTP``), and ``s3://`` URLs.
"""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from reliability_helpers import batch_failures, batch_rows
from server_helpers import free_port

from cattune.flows.cli import main
from cattune.pipeline.release import make_release, verify_release
from cattune.pipeline.store import DatasetStore, Lineage
from cattune.schemas import StoreError

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto.server")

KEYS = {"AWS_ACCESS_KEY_ID": "cattune-test", "AWS_SECRET_ACCESS_KEY": "cattune-test-secret"}
REGION = "us-east-1"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A moto S3 server in a subprocess; yields its endpoint URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"moto server did not start on {url}")
            time.sleep(0.2)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(30)


@pytest.fixture()
def bucket(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new bucket, and the environment a user would set to reach it."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_ALLOW_HTTP", "true")
    for key, value in KEYS.items():
        monkeypatch.setenv(key, value)
    name = f"cattune-{uuid.uuid4().hex[:12]}"
    client().create_bucket(Bucket=name)
    return name


def client():  # noqa: ANN201 (boto3 clients have no importable type)
    import os

    return boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=REGION)


def keys_under(bucket: str, prefix: str) -> list[str]:
    listed = client().list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return sorted(item["Key"] for item in listed)


def test_store_history_time_travel_and_release_on_s3(bucket: str, tmp_path: Path) -> None:
    root = f"s3://{bucket}/store"
    store = DatasetStore(root)
    first = store.write(
        "s3set", batch_rows("a", 0, 5), batch_failures("a", 0), Lineage(write_id="1")
    )
    second = store.write("s3set", batch_rows("a", 1, 3), lineage=Lineage(write_id="2"))
    assert (first.version, second.version) == (0, 1)
    assert any(key.startswith("store/s3set/table/_delta_log/") for key in keys_under(bucket, ""))

    history = store.history("s3set")
    assert [(c.version, c.lineage.write_id) for c in history] == [(0, "1"), (1, "2")]
    assert len(store.read("s3set", 0)) == 5 and len(store.read("s3set")) == 8
    assert store.resolve_version("s3set", history[0].timestamp) == 0
    assert [q.error for q in store.quarantine("s3set")] == ["scripted failure"]
    assert [(d.name, d.rows, d.quarantined) for d in store.list()] == [("s3set", 8, 1)]

    release = f"s3://{bucket}/releases/s3set-v0"
    manifest = make_release(store, "s3set", 0, release, shard_rows=2)
    assert manifest.rows_per_split == {"train": 5}
    assert keys_under(bucket, "releases/")[-1] == "releases/s3set-v0/manifest.json"
    assert verify_release(release).version == 0
    with pytest.raises(StoreError, match="already holds a release"):
        make_release(store, "s3set", 0, release)
    local = make_release(store, "s3set", None, tmp_path / "local")
    assert sum(local.rows_per_split.values()) == 8

    client().put_object(Bucket=bucket, Key=f"releases/s3set-v0/{manifest.files[0].path}", Body=b"x")
    with pytest.raises(StoreError, match="changed file"):
        verify_release(release)
    client().put_object(Bucket=bucket, Key="releases/partial/data/train.parquet", Body=b"x")
    with pytest.raises(StoreError, match="partial upload"):
        make_release(store, "s3set", 0, f"s3://{bucket}/releases/partial")
    with pytest.raises(StoreError, match="manifest.json is missing"):
        verify_release(f"s3://{bucket}/releases/partial")


def test_cli_on_s3(bucket: str, capsys: pytest.CaptureFixture[str]) -> None:
    root = f"s3://{bucket}/cli"
    DatasetStore(root).write("c", batch_rows("c", 0, 2))
    assert main(["datasets", "history", "c", "--store", root]) == 0
    assert main(["release", "c@0", "--out", f"s3://{bucket}/rel/c-v0", "--store", root]) == 0
    assert main(["release", "verify", f"s3://{bucket}/rel/c-v0"]) == 0
    assert "is intact: c@0, 1 files, 2 rows" in capsys.readouterr().out
    assert main(["datasets", "show", "missing", "--store", root]) == 2
    assert "no dataset 'missing'" in capsys.readouterr().err


@pytest.mark.prefect
def test_annotate_flow_into_s3(
    prefect_harness: None, reference_data: Path, bucket: str, tmp_path: Path
) -> None:
    """The authors' STG file through the real annotate flow into an s3:// store, twice."""
    from cattune.flows.annotate import annotate_flow

    full = (reference_data / "STG" / "spurious_token_game_train3_S.jsonl").read_text().splitlines()
    first = tmp_path / "stg_a.jsonl"
    first.write_text("\n".join(full[:60]) + "\n{broken json\n")
    root = f"s3://{bucket}/flows"
    summary = annotate_flow(
        str(first), "stg", annotator="given", format="cat", store=root, shard_size=20
    )
    assert (summary.version, summary.rows_read, summary.rows_malformed) == (0, 61, 1)
    second = tmp_path / "stg_b.jsonl"
    second.write_text("\n".join(full[:90]) + "\n")
    again = annotate_flow(
        str(second), "stg", annotator="given", format="cat", store=root, shard_size=20
    )
    assert again.version == 1
    assert again.rows_annotated + again.rows_quarantined + again.rows_skipped == 90

    store = DatasetStore(root)
    history = store.history("stg")
    assert [c.lineage.flow_run_id for c in history] == [summary.flow_run_id, again.flow_run_id]
    assert len(store.read("stg", 0)) == summary.rows_annotated
    assert len(store.read("stg")) == summary.rows_annotated + again.rows_annotated
    reasons = [q.error for q in store.quarantine("stg", 0)]
    assert any(r.startswith("malformed source row: ") and "(row 61)" in r for r in reasons)


WRITERS, WRITES = 4, 3


def _writer(root: str, tag: str, barrier) -> None:  # noqa: ANN001
    store = DatasetStore(root, max_retries=40, retry_delay=0.02)
    barrier.wait()
    for batch in range(WRITES):
        rows = batch_rows("shared", batch, 4) + batch_rows(tag, batch, 3)
        store.write("race", rows, batch_failures(tag, batch), Lineage(write_id=f"{tag}-{batch}"))


def test_four_concurrent_writers_on_s3(bucket: str) -> None:
    """Writers racing on one table: no commit lost or doubled, history linear, ids unique.

    Every writer also re-writes the ``shared`` rows, so their merges really conflict.
    """
    root = f"s3://{bucket}/concurrent"
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(WRITERS)
    workers = [
        context.Process(target=_writer, args=(root, f"w{k}", barrier)) for k in range(WRITERS)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(300)
    assert [w.exitcode for w in workers] == [0] * WRITERS

    store = DatasetStore(root)
    history = store.history("race")
    assert [c.version for c in history] == list(range(WRITERS * WRITES))
    write_ids = sorted(c.lineage.write_id for c in history)
    assert write_ids == sorted(f"w{k}-{b}" for k in range(WRITERS) for b in range(WRITES))
    for commit in history:
        rows = store.read("race", commit.version)
        assert len(rows) == len({r.id for r in rows})
    latest = store.read("race")
    assert len(latest) == WRITES * 4 + WRITERS * WRITES * 3
    assert len(store.quarantine("race")) == WRITERS * WRITES
