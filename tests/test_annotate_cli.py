"""`cattune annotate` in file mode: every source row ends annotated or quarantined, exactly once."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_annot_llm import GOOD, PACK, data_text

from cattune.annotators.scripted_server import Reply, ScriptedChatServer
from cattune.flows.cli import main
from cattune.schemas import AnnotatedExample, QuarantinedExample, from_table

STG_ROW = (
    "Here is the statistical data for a person. Please predict the probability of cancer. "
    "Certain gene: 5, Room size: 6, Clothing size: {w}, Exercise: 2, Weight: {w}, Hormones: 1, "
    "Smoking: {s}, Yellow fingers: 12 Answer: "
)


def stg_line(smoking: int, weight: int, label: str = "High Risk") -> str:
    return json.dumps({"input": STG_ROW.format(s=smoking, w=weight), "target": label})


def outputs(out: Path) -> tuple[list[AnnotatedExample], list[QuarantinedExample]]:
    good = from_table(pq.read_table(out), AnnotatedExample)
    bad = from_table(
        pq.read_table(out.with_name(out.stem + ".quarantine.parquet")), QuarantinedExample
    )
    return good, bad


def pack_file(tmp_path: Path) -> Path:
    """The test pack as a YAML file that load_pack accepts (rules from a shipped pack)."""
    import yaml

    from cattune.annotators.pack import load_pack

    data = PACK.model_dump(mode="json")
    data["rules"] = load_pack("key-value-records").rules.model_dump(mode="json")
    path = tmp_path / "test-pack.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_prior_annotator_file_mode_keeps_malformed_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "rows.jsonl"
    lines = [stg_line(8, 4), '{"input": broken', stg_line(3, 2, "Low Risk"), "[1, 2]"]
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out" / "rows.parquet"
    code = main(["annotate", str(source), "--pack", "key-value-records", "--out", str(out)])
    assert code == 0
    good, bad = outputs(out)
    assert len(good) == 2 and len(bad) == 2
    assert all(r.annotation.annotator == "prior" and r.relations for r in good)
    assert [r.prompt for r in bad] == ['{"input": broken', "[1, 2]"]
    assert all(r.completion == "" and "malformed source row" in r.error for r in bad)
    assert bad[0].meta.extra["line"] == "2" and not bad[0].retryable
    printed = capsys.readouterr().out
    assert "annotated   2" in printed and "2 malformed source rows" in printed
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "rows.parquet",
        "rows.quarantine.parquet",
    ]


def test_llm_annotator_file_mode_and_second_run_from_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def respond(request: dict[str, Any], attempt: int) -> Reply:
        text = data_text(request)
        if "Weight: 7" in text:
            return Reply.error(503)
        if "Weight: 6" in text:
            return Reply.completion("no idea")
        return Reply.completion(
            GOOD.replace("Weight: 4", "Weight: " + text.split("Weight: ")[1][0])
        )

    weights = [1, 2, 3, 4, 5, 6, 7, 8, 9, 1]  # the last row repeats the first
    source = tmp_path / "rows.jsonl"
    body = [stg_line(8, w) for w in weights] + ["not json"]
    source.write_text("\n".join(body) + "\n", encoding="utf-8")
    out = tmp_path / "labelled.parquet"
    args = [
        "annotate",
        str(source),
        "--annotator",
        "llm",
        "--pack",
        str(pack_file(tmp_path)),
        "--model",
        "scripted",
        "--cache",
        str(tmp_path / "cache.sqlite"),
        "--timeout",
        "2",
        "--max-retries",
        "1",
        "--concurrency",
        "4",
        "--batch-size",
        "4",
        "--out",
        str(out),
    ]
    with ScriptedChatServer(respond) as server:
        assert main([*args, "--base-url", server.base_url]) == 1  # a row is left to retry
        assert "1 rows failed for reasons that may pass" in capsys.readouterr().err
        first_requests = server.request_count
        good, bad = outputs(out)
        assert len(good) + len(bad) == len(body)
        assert Counter(r.prompt for r in good) == Counter(
            json.loads(line)["input"]
            for line, w in zip(body, weights, strict=False)
            if w not in (6, 7)
        )
        reasons = sorted(r.error.split(":")[0] for r in bad)
        assert reasons == [
            "HTTP 503 from the endpoint",
            "malformed source row",
            "reply unusable after one repair request",
        ]
        assert "gave up after 2 attempts" in next(r.error for r in bad if r.retryable)
        capsys.readouterr()
        assert main([*args, "--base-url", server.base_url]) == 1
        # the second run asks again only for the row that may pass now (final outcomes are cached)
        assert server.request_count - first_requests == 2
    printed = capsys.readouterr().out
    assert "(9 rows from cache)" in printed


def test_failed_run_leaves_no_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "rows.jsonl"
    source.write_text(stg_line(8, 4) + "\n", encoding="utf-8")
    out = tmp_path / "labelled.parquet"
    with ScriptedChatServer(lambda request, attempt: Reply.error(401)) as server:
        code = main(
            [
                "annotate",
                str(source),
                "--annotator",
                "llm",
                "--pack",
                str(pack_file(tmp_path)),
                "--model",
                "m",
                "--base-url",
                server.base_url,
                "--no-cache",
                "--out",
                str(out),
            ]
        )
    assert code == 2
    assert "refused the API key" in capsys.readouterr().err
    assert list(tmp_path.glob("*.parquet*")) == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--annotator", "prior", "--base-url", "http://x/v1"], "--base-url do(es) not apply"),
        (["--annotator", "llm", "--pack", "key-value-records"], "needs --model"),
        (["--annotator", "vllm", "--pack", "key-value-records", "--model", "m"], "vllm serve"),
        (["--annotator", "prior", "--batch-size", "0"], "--batch-size"),
        (["--annotator", "given", "--pack", "key-value-records"], "drop --pack"),
        (["--annotator", "prior", "--boundary", "none"], "--boundary do(es) not apply"),
    ],
)
def test_user_mistakes_exit_2_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    source = tmp_path / "rows.jsonl"
    source.write_text(stg_line(8, 4) + "\n", encoding="utf-8")
    code = main(["annotate", str(source), "--out", str(tmp_path / "o.parquet"), *extra])
    assert code == 2
    assert message in capsys.readouterr().err


def test_missing_source_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["annotate", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o.parquet")])
    assert code == 2
    assert "nope.jsonl" in capsys.readouterr().err


lines_strategy = st.lists(
    st.one_of(
        st.builds(stg_line, st.integers(1, 10), st.integers(1, 10)),
        st.sampled_from(['{"input": ', "42", '{"target": "x"}', '{"input": "", "target": ""}']),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=lines_strategy, batch_size=st.integers(1, 5))
def test_no_row_lost_or_duplicated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], lines: list[str], batch_size: int
) -> None:
    source = tmp_path / "rows.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "o.parquet"
    argv = ["annotate", str(source), "--pack", "key-value-records", "--out", str(out)]
    code = main([*argv, "--batch-size", str(batch_size)])
    err = capsys.readouterr().err
    if not any(line.startswith('{"input": "') for line in lines):
        # no line has the input/target columns: a whole-file error, not rows to quarantine
        assert code == 2 and ("not JSON Lines" in err or "no usable columns" in err)
        return
    assert code == 0, err
    good, bad = outputs(out)
    assert len(good) + len(bad) == len(lines)
    valid = [json.loads(line)["input"] for line in lines if line.startswith('{"input": "Here')]
    assert Counter(r.prompt for r in good) + Counter(
        r.prompt for r in bad if "malformed" not in r.error
    ) == Counter(valid)


def test_boundary_reaches_the_given_annotator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = {"input": "Weight: 14. Answer: ", "target": "High", "important": [{"High": ["4"]}]}
    source = tmp_path / "rows.jsonl"
    source.write_text(json.dumps(line) + "\n", encoding="utf-8")
    for boundary in ("word", "none"):
        out = tmp_path / f"{boundary}.parquet"
        argv = ["annotate", str(source), "--annotator", "given", "--out", str(out)]
        assert main([*argv, "--boundary", boundary]) == 0
        good, bad = outputs(out)
        if boundary == "word":  # "4" occurs only inside "14": nothing aligns
            assert good == [] and "occurs only inside longer words" in bad[0].error
        else:
            assert bad == [] and good[0].relations[0].causes[0].text(good[0].text) == "4"
    capsys.readouterr()
