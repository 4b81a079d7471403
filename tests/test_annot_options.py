"""Typed annotator option specs: what each kind takes, bounds, messages, CLI, flow and docs."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cattune.annotators.given import GivenAnnotator, GoldAnnotator
from cattune.annotators.llm import LLMAnnotator
from cattune.annotators.options import (
    SPECS,
    GivenOptions,
    LLMOptions,
    PriorOptions,
    VLLMOptions,
    cli_fields,
    markdown_table,
    options_for,
)
from cattune.annotators.prior import PriorAnnotator
from cattune.annotators.registry import build_annotator, get_annotator
from cattune.annotators.vllm_engine import VLLMAnnotator
from cattune.flows.annotate import annotator_for
from cattune.flows.cli import main
from cattune.schemas import AnnotatedExample, ConfigError, Example

DOCS = Path(__file__).resolve().parent.parent / "docs" / "annotators.md"
CONSTRUCTORS = {
    "prior": PriorAnnotator,
    "given": GivenAnnotator,
    "gold": GoldAnnotator,
    "llm": LLMAnnotator,
    "vllm": VLLMAnnotator,
}
LLM_REAL = {
    "model": "Qwen/Qwen2.5-7B-Instruct",
    "base_url": "http://127.0.0.1:8000/v1",
    "api_key_env": "MY_KEY",
    "concurrency": 64,
    "timeout": 120.0,
    "max_retries": 2,
    "structured_output": "json_object",
    "max_tokens": 512,
    "temperature": 0.3,
    "max_dropped_share": 0.25,
    "boundary": "none",
    "strategy": "nearest",
    "cache": False,
    "refresh": True,
    "seed": 7,
    "top_p": 0.9,
}


def test_each_kind_builds_from_its_real_options(tmp_path: Path) -> None:
    prior = get_annotator("prior", pack="key-value-records", batch_size=7)
    assert isinstance(prior, PriorAnnotator) and prior.batch_size == 7
    given_ = get_annotator("given", strategy="nearest", boundary="none")
    assert (given_.strategy, given_.boundary) == ("nearest", "none")
    assert isinstance(get_annotator("gold", boundary="none"), GoldAnnotator)
    llm = get_annotator("llm", pack="key-value-records", **LLM_REAL)
    assert isinstance(llm, LLMAnnotator)
    assert (llm.concurrency, llm.timeout, llm.max_retries, llm.cache_path) == (64, 120.0, 2, None)
    assert (llm.structured_output, llm.refresh, llm.boundary) == ("json_object", True, "none")
    assert llm.decoding.as_dict() == {
        "temperature": 0.3,
        "max_tokens": 512,
        "top_p": 0.9,
        "seed": 7,
    }
    cached = get_annotator(
        "llm",
        pack="key-value-records",
        model="m",
        base_url=LLM_REAL["base_url"],
        cache=str(tmp_path / "c"),
    )
    assert cached.cache_path == tmp_path / "c"
    spec = VLLMOptions(model="tiny/model", engine_options={"tensor_parallel_size": 2})
    assert spec.structured_output is True and spec.engine_options == {"tensor_parallel_size": 2}


def test_spec_defaults_are_the_constructors_defaults() -> None:
    """The constructors keep their keyword defaults; the specs must agree with them."""
    for kind, spec in SPECS.items():
        parameters = inspect.signature(CONSTRUCTORS[kind]).parameters
        for name, field in spec.model_fields.items():
            if name == "api_key_secret":
                assert name not in parameters  # read by the flow, never a constructor argument
                continue
            default = parameters[name].default
            if field.is_required():
                assert default is inspect.Parameter.empty, (kind, name)
            elif name == "engine_options":
                assert default is None and field.get_default(call_default_factory=True) == {}
            else:
                assert field.get_default() == default, (kind, name)


@pytest.mark.parametrize(
    ("kind", "options", "message"),
    [
        (
            "prior",
            {"timeout": 5.0},
            "--timeout do(es) not apply to --annotator prior (it takes: batch_size)",
        ),
        (
            "prior",
            {"batch_size": 0},
            "batch_size of --annotator prior: Input should be greater than or equal to 1, got 0",
        ),
        (
            "gold",
            {"model": "m"},
            "--model do(es) not apply to --annotator gold (it takes: strategy, --boundary)",
        ),
        (
            "given",
            {"boundary": "char"},
            "--boundary of --annotator given: Input should be 'word' or 'none', got 'char'",
        ),
        ("llm", {"base_url": "http://x/v1"}, "--annotator llm needs --model"),
        (
            "llm",
            {"model": ""},
            "--model of --annotator llm: String should have at least 1 character, got ''",
        ),
        (
            "llm",
            {"model": "m", "concurrency": 0},
            "--concurrency of --annotator llm: Input should be greater than or equal to 1, got 0",
        ),
        (
            "llm",
            {"model": "m", "timeout": 0.0},
            "--timeout of --annotator llm: Input should be greater than 0, got 0.0",
        ),
        (
            "llm",
            {"model": "m", "temperature": -0.5},
            "--temperature of --annotator llm: "
            "Input should be greater than or equal to 0, got -0.5",
        ),
        (
            "llm",
            {"model": "m", "max_dropped_share": 1.5},
            "--max-dropped-share of --annotator llm: "
            "Input should be less than or equal to 1, got 1.5",
        ),
        (
            "llm",
            {"model": "m", "structured_output": "xml"},
            "--structured-output of --annotator llm: "
            "Input should be 'auto', 'json_schema', 'json_object' or 'off', got 'xml'",
        ),
        (
            "llm",
            {"model": "m", "cache": True},
            "--cache of --annotator llm: "
            "Value error, should be a file path, or false for no cache, got True",
        ),
        ("llm", {"model": "m", "api_key": "sk-1"}, "api_key do(es) not apply to --annotator llm"),
        ("llm", {"model": "m", "timeout": -1, "concurrency": 0}, "(and 1 more)"),
        (
            "vllm",
            {"model": "m", "base_url": "http://x/v1"},
            "--base-url do(es) not apply to --annotator vllm",
        ),
        (
            "vllm",
            {"model": "m", "top_p": 0.0},
            "top_p of --annotator vllm: Input should be greater than 0, got 0.0",
        ),
        ("oracle", {}, "unknown annotator kind 'oracle'; use one of prior, given, gold, llm, vllm"),
    ],
)
def test_stray_and_out_of_range_options_get_one_clear_line(
    kind: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        options_for(kind, options)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


@given(name=st.sampled_from(["concurrency", "max_retries", "max_tokens"]), value=st.integers(-5, 5))
def test_integer_bounds_hold_at_every_value(name: str, value: int) -> None:
    lowest = {"concurrency": 1, "max_retries": 0, "max_tokens": 1}[name]
    if value >= lowest:
        assert getattr(options_for("llm", {"model": "m", name: value}), name) == value
    else:
        flag = "--" + name.replace("_", "-")
        with pytest.raises(ConfigError, match=f"^{flag} of --annotator llm: .*, got {value}$"):
            options_for("llm", {"model": "m", name: value})


@given(
    name=st.sampled_from(["timeout", "temperature", "max_dropped_share"]),
    value=st.floats(-2, 2, allow_nan=False),
)
def test_float_bounds_hold_at_every_value(name: str, value: float) -> None:
    accepted = {
        "timeout": value > 0,
        "temperature": value >= 0,
        "max_dropped_share": 0 <= value <= 1,
    }[name]
    if accepted:
        assert getattr(options_for("llm", {"model": "m", name: value}), name) == value
    else:
        with pytest.raises(ConfigError, match="--" + name.replace("_", "-") + " of --annotator"):
            options_for("llm", {"model": "m", name: value})


def test_a_spec_is_accepted_as_is_and_its_dict_gives_the_same_annotator() -> None:
    spec = LLMOptions(model="m", base_url="http://127.0.0.1:9/v1", concurrency=3)
    assert options_for("llm", spec) is spec
    from_dict = options_for("llm", spec.model_dump(mode="json", exclude_unset=True))
    assert from_dict == spec
    assert (
        build_annotator("llm", spec, pack="key-value-records").config_hash()
        == get_annotator("llm", pack="key-value-records", **from_dict.model_dump()).config_hash()
    )
    with pytest.raises(ConfigError) as caught:
        options_for("prior", spec)
    assert str(caught.value) == (
        "--model, --base-url, --concurrency do(es) not apply to --annotator prior "
        "(it takes: batch_size)"
    )


def test_api_keys_stay_out_of_specs() -> None:
    with pytest.raises(ConfigError, match="takes no API key"):
        get_annotator("prior", api_key="sk-1")
    with pytest.raises(ConfigError, match="Prefect Secret block, which the annotate flow reads"):
        get_annotator("llm", pack="key-value-records", model="m", api_key_secret="block")
    llm = get_annotator("llm", pack="key-value-records", model="m", api_key="sk-secret-1")
    assert llm.api_key_env == "OPENAI_API_KEY"
    assert "sk-secret-1" not in json.dumps(options_for("llm", {"model": "m"}).model_dump())
    assert "sk-secret-1" not in repr(llm)


def test_options_built_from_a_spec_annotate_the_authors_mawps_rows(reference_data: Path) -> None:
    lines = (reference_data / "MAWPS" / "mawps_test.jsonl").read_text().splitlines()[:40]
    examples = [
        Example.create(json.loads(line)["input"], str(json.loads(line)["target"])) for line in lines
    ]
    small = build_annotator("prior", PriorOptions(batch_size=3), pack="math-word-problems")
    default = get_annotator("prior", pack="math-word-problems")
    ours, theirs = small.annotate(examples), default.annotate(examples)
    assert sum(isinstance(r, AnnotatedExample) for r in ours) >= 30
    assert [r.model_dump(exclude={"annotation"}) for r in ours] == [
        r.model_dump(exclude={"annotation"}) for r in theirs
    ]


# --- the CLI: flags come from the specs, and refusals read as the flow's -----------------------


def _cli_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    source = tmp_path / "rows.jsonl"
    source.write_text(json.dumps({"input": "Smoking: 8 Answer: ", "target": "x"}) + "\n")
    code = main(["annotate", str(source), "--out", str(tmp_path / "o.parquet"), *argv])
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cattune: error: ")
    return lines[0].removeprefix("cattune: error: ")


@pytest.mark.parametrize(
    ("argv", "kind", "options"),
    [
        (["--timeout", "5"], "prior", {"timeout": 5.0}),
        (["--annotator", "gold", "--temperature", "0.2"], "gold", {"temperature": 0.2}),
        (["--annotator", "llm", "--pack", "key-value-records"], "llm", {}),
        (
            ["--annotator", "llm", "--pack", "key-value-records", "--model", "m", "--timeout", "0"],
            "llm",
            {"model": "m", "timeout": 0.0},
        ),
        (
            [
                "--annotator",
                "llm",
                "--pack",
                "key-value-records",
                "--model",
                "m",
                "--max-dropped-share",
                "2",
            ],
            "llm",
            {"model": "m", "max_dropped_share": 2.0},
        ),
        (
            [
                "--annotator",
                "vllm",
                "--pack",
                "key-value-records",
                "--model",
                "m",
                "--concurrency",
                "4",
            ],
            "vllm",
            {"model": "m", "concurrency": 4},
        ),
    ],
)
def test_cli_and_flow_refuse_with_the_same_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    kind: str,
    options: dict[str, Any],
) -> None:
    from_cli = _cli_error(tmp_path, capsys, argv)
    with pytest.raises(ConfigError) as caught:
        annotator_for(kind, "key-value-records", options)
    assert from_cli == str(caught.value)


def test_no_cache_is_checked_like_the_spec_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli_error(tmp_path, capsys, ["--no-cache"]) == (
        "--no-cache does not apply to --annotator prior"
    )
    llm = ["--annotator", "llm", "--pack", "key-value-records", "--model", "m"]
    assert _cli_error(tmp_path, capsys, [*llm, "--no-cache", "--cache", "c.sqlite"]) == (
        "use either --cache PATH or --no-cache, not both"
    )


def test_every_spec_flag_is_on_the_command_line_with_its_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["annotate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name, field in cli_fields().items():
        flag = "--" + name.replace("_", "-")
        assert re.search(rf"{flag}\b", text), flag
        assert " ".join((field.description or "").split()) in text, flag
        default = field.get_default()
        if not field.is_required() and default is not None and not isinstance(default, bool):
            assert re.search(rf"{flag} \S+ .*?\(default: {re.escape(str(default))}\)", text), flag
    assert cli_fields().keys() >= {"model", "timeout", "concurrency", "boundary", "cache"}
    assert "api_key_secret" not in cli_fields() and "engine_options" not in cli_fields()


# --- the flow: validated before anything is read, spec or dict ---------------------------------


@pytest.mark.prefect
def test_flow_takes_a_spec_and_refuses_bad_options_like_the_cli(
    prefect_harness: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cattune.flows.annotate import annotate_flow
    from cattune.pipeline.store import DatasetStore

    source = tmp_path / "rows.jsonl"
    row = {
        "input": "患者 🙂 Smoking: 8, Weight: 3. Answer: ",
        "target": "High Risk",
        "important": [{"High Risk": ["Smoking: 8"]}],
    }
    source.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    store = str(tmp_path / "store")
    spec = GivenOptions(strategy="nearest")
    run = {"annotator": "given", "format": "cat", "store": store}
    summary = annotate_flow(str(source), "spec", options=spec, **run)
    assert (summary.rows_annotated, summary.rows_quarantined) == (1, 0)
    again = annotate_flow(str(source), "spec", options={"strategy": "nearest"}, **run)
    assert again.config_hash == summary.config_hash and again.rows_skipped == 1
    from_cli = _cli_error(tmp_path, capsys, ["--annotator", "given", "--timeout", "3"])
    with pytest.raises(ConfigError) as caught:
        annotate_flow(str(source), "bad", options={"timeout": 3.0}, **run)
    assert str(caught.value) == from_cli
    assert not DatasetStore(store).exists("bad")


def test_a_deployment_with_a_bad_annotator_option_is_refused_before_it_is_served() -> None:
    from cattune.flows.serve import DeploymentConfig, build_deployments

    parameters = {
        "source": "data/mawps/mawps_train.jsonl",
        "dataset": "mawps",
        "annotator": "llm",
        "pack": "math-word-problems",
        "options": {"model": "m", "concurrency": 0},
    }
    deployment = {"name": "nightly", "flow": "annotate", "cron": "0 2 * * *"}
    config = DeploymentConfig.model_validate(
        {"deployments": [deployment | {"parameters": parameters}]}
    )
    with pytest.raises(ConfigError) as caught:
        build_deployments(config)
    assert str(caught.value) == (
        "deployment 'nightly': --concurrency of --annotator llm: "
        "Input should be greater than or equal to 1, got 0"
    )


# --- docs: the option tables are the specs' ------------------------------------------------------


@pytest.mark.parametrize("kind", list(SPECS))
def test_docs_option_tables_match_the_specs(kind: str) -> None:
    text = DOCS.read_text(encoding="utf-8")
    block = re.search(rf"<!-- options:{kind} -->\n(.*?)<!-- /options -->", text, re.S)
    assert block is not None, f"docs/annotators.md has no <!-- options:{kind} --> table"
    assert block.group(1) == markdown_table(kind), (
        f"docs/annotators.md's {kind} options table is out of date; it should read:\n"
        + markdown_table(kind)
    )
