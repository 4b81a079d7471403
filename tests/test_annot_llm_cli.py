"""`cattune annotate --annotator llm` against servers that behave like real ones: the options that
real servers need, endpoint errors that print the same one line in file and dataset mode, and the
exit status of a run that did not get its rows annotated."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from test_annot_llm import GOOD, is_repair
from test_annotate_cli import outputs, pack_file, stg_line

from cattune.annotators.scripted_server import LLAMA_CPP_FORMATS, Reply, ScriptedChatServer
from cattune.flows.cli import main


def good(request: dict[str, Any], attempt: int) -> Reply:
    return Reply.completion(GOOD)


def source(tmp_path: Path, rows: int = 3) -> Path:
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(stg_line(8, 4 + i) for i in range(rows)) + "\n", encoding="utf-8")
    return path


def argv(tmp_path: Path, base_url: str, *extra: str, model: str = "smollm2") -> list[str]:
    return [
        "annotate",
        str(source(tmp_path)),
        "--annotator",
        "llm",
        "--pack",
        str(pack_file(tmp_path)),
        "--model",
        model,
        "--base-url",
        base_url,
        "--no-cache",
        "--timeout",
        "5",
        "--max-retries",
        "1",
        *extra,
    ]


def test_options_for_a_llama_cpp_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.parquet"
    options = ["--max-tokens", "256", "--temperature", "0.2", "--concurrency", "1"]
    options += ["--max-dropped-share", "0"]
    with ScriptedChatServer(good, response_formats=LLAMA_CPP_FORMATS) as server:
        code = main([*argv(tmp_path, server.base_url, *options), "--out", str(out)])
        bodies = [r.body or {} for r in server.requests]
    assert code == 0, capsys.readouterr().err
    good_rows, bad_rows = outputs(out)
    assert len(good_rows) == 3 and bad_rows == []
    formats = [b.get("response_format", {}).get("type") for b in bodies]
    assert formats == ["json_schema"] + ["json_object"] * 5
    # GOOD names "Weight: 4": rows 2 and 3 lose one pair of two, more than a share of 0 allows
    assert sum(is_repair(b) for b in bodies) == 2
    assert [len(r.problems) for r in good_rows] == [0, 1, 1]
    assert {(b["max_tokens"], b["temperature"]) for b in bodies} == {(256, 0.2)}


def test_structured_output_flag_only_for_llm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = source(tmp_path)
    code = main(
        [
            "annotate",
            str(path),
            "--pack",
            "key-value-records",
            "--structured-output",
            "off",
            "--out",
            str(tmp_path / "o.parquet"),
        ]
    )
    assert code == 2
    assert "--structured-output do(es) not apply to --annotator prior" in capsys.readouterr().err


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("failure", ["bad-key", "unknown-model", "refused"])
def test_endpoint_errors_print_one_line_in_both_modes(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    failure: str,
) -> None:
    monkeypatch.setenv("CATTUNE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OPENAI_API_KEY", "wrong-key")
    model = "gpt-4o" if failure == "unknown-model" else "smollm2"
    with ScriptedChatServer(
        good, models=["smollm2"], api_key="right-key" if failure == "bad-key" else None
    ) as server:
        base_url = (
            f"http://127.0.0.1:{_closed_port()}/v1" if failure == "refused" else server.base_url
        )
        if failure == "unknown-model":
            monkeypatch.setenv("OPENAI_API_KEY", "any")
        lines = []
        for target in (
            ["--out", str(tmp_path / "o.parquet")],
            ["--dataset", "rows", "--store", str(tmp_path / "store")],
        ):
            code = main([*argv(tmp_path, base_url, model=model), *target])
            captured = capsys.readouterr()
            assert code == 2 and captured.out == ""
            lines.append(captured.err)
        assert server.request_count == 0
    assert lines[0] == lines[1] and lines[0].count("\n") == 1
    expected = {
        "bad-key": "refused the API key (HTTP 401: Incorrect API key provided)",
        "unknown-model": "does not serve model 'gpt-4o'; it lists 'smollm2': fix --model",
        "refused": "cannot connect to the endpoint",
    }[failure]
    assert lines[0].startswith("cattune: error: ") and expected in lines[0]
    assert not (tmp_path / "store").exists()


def test_a_run_that_annotates_nothing_exits_non_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.parquet"
    with ScriptedChatServer(lambda request, attempt: Reply.completion("I cannot help.")) as server:
        code = main([*argv(tmp_path, server.base_url), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.err == "cattune: error: nothing was annotated: all 3 rows ended in quarantine\n"
    good_rows, bad_rows = outputs(out)
    assert good_rows == [] and [r.retryable for r in bad_rows] == [False] * 3


def test_an_endpoint_error_met_inside_the_flow_is_not_retried_by_prefect(
    prefect_harness: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server without a model list is only found wrong by the first chat request (404), which
    happens inside the flow's shard task: Prefect must not run the shard again."""
    monkeypatch.setenv("CATTUNE_HOME", str(tmp_path / "home"))
    missing = Reply.error(404, message="The model `smollm2` does not exist")
    lines, counts = [], []
    with ScriptedChatServer(lambda request, attempt: missing) as server:
        for target in (
            ["--out", str(tmp_path / "o.parquet")],
            ["--dataset", "rows", "--store", str(tmp_path / "store")],
        ):
            code = main([*argv(tmp_path, server.base_url), "--concurrency", "1", *target])
            lines.append(capsys.readouterr().err)
            counts.append(server.request_count - sum(counts))
            assert code == 2
    assert counts[1] == counts[0] > 0, "the flow sends what file mode sends: no Prefect retry"
    assert lines[0].count("\n") == 1 and "answered 404 for model 'smollm2'" in lines[0]
    assert lines[1].endswith(lines[0]), lines[1]
