"""``cattune annotators``: list prior packs, score annotations against gold."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "annotators", help="prior packs and annotation quality", description=__doc__
    )
    commands = parser.add_subparsers(dest="annotators_command", metavar="SUBCOMMAND", required=True)

    packs = commands.add_parser(
        "packs",
        help="list the shipped prior packs (or check a pack file)",
        description="List the prior packs shipped with cattune, or validate pack files.",
    )
    packs.add_argument("files", nargs="*", help="pack files to validate instead of listing")
    packs.add_argument("--json", action="store_true", help="machine-readable output")
    packs.set_defaults(handler=run_packs)

    evaluate = commands.add_parser(
        "eval",
        help="precision / recall / F1 of predicted relations against gold",
        description=(
            "Score predicted relations against gold relations, matching rows by id: P/R/F1 of "
            "(effect span, cause span) pairs, exact and by word-token overlap, and coverage. "
            "Files are contract rows (Parquet or JSONL) or CAT-format JSONL (input/target/"
            "important, aligned here). Instead of --pred, --annotator annotates the gold rows' "
            "text and scores that."
        ),
    )
    evaluate.add_argument("--gold", required=True, help="gold rows (Parquet, JSONL, CAT JSONL)")
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--pred", help="predicted rows (Parquet, JSONL, CAT JSONL)")
    source.add_argument(
        "--annotator", choices=("prior", "given", "gold"), help="annotate the gold rows' text"
    )
    evaluate.add_argument("--pack", help="prior pack name or file for --annotator prior")
    evaluate.add_argument("--json", action="store_true", help="print the report as JSON")
    evaluate.set_defaults(handler=run_eval)


def run_packs(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from cattune.annotators.pack import load_pack, shipped_packs

    packs = (
        [load_pack(f) for f in args.files]
        if args.files
        else [load_pack(n) for n in shipped_packs()]
    )
    rows = [
        {
            "name": p.name,
            "version": p.version,
            "kind": p.rules.kind,
            "hash": p.content_hash,
            "demonstrations": len(p.demonstrations),
            "description": p.description,
        }
        for p in packs
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title="prior packs", title_justify="left")
    for column in ("name", "version", "kind", "hash", "demonstrations"):
        table.add_column(column, no_wrap=True)
    table.add_column("description", overflow="fold", min_width=30)
    for row in rows:
        table.add_row(*(str(row[c]) for c in row))
    Console().print(table)
    return 0


def _read_labelled(path: Path) -> list[Any]:
    """Rows with span relations: contract rows as stored, other sources aligned from phrases."""
    import pyarrow.parquet as pq

    from cattune.annotators.given import GivenAnnotator
    from cattune.pipeline.sources import load_examples
    from cattune.schemas import AnnotatedExample, InputError, QuarantinedExample, from_table

    if not path.exists():
        raise InputError("file does not exist", path=str(path))
    if path.suffix in (".parquet", ".pq"):
        table = pq.read_table(path)
        model = AnnotatedExample if "problems" in table.column_names else QuarantinedExample
        try:
            return from_table(table, model)
        except ValueError as error:
            raise InputError(f"not contract rows: {error}", path=str(path)) from error
    first = _first_record(path)
    if first is not None and {"id", "relations", "annotation"} <= set(first):
        rows: list[Any] = []
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                record = json.loads(line)
                model = QuarantinedExample if "error" in record else AnnotatedExample
                try:
                    rows.append(model.model_validate(record))
                except ValueError as error:
                    message = str(error).splitlines()[0]
                    raise InputError(message, path=str(path), line=number) from error
        return rows
    return GivenAnnotator().annotate(load_examples(path))


def _first_record(path: Path) -> dict[str, Any] | None:
    from cattune.schemas import InputError

    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    message = f"not JSON Lines: {error.msg}"
                    raise InputError(message, path=str(path), line=number) from error
                return record if isinstance(record, dict) else None
    return None


def run_eval(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from cattune.annotators.quality import evaluate
    from cattune.annotators.registry import get_annotator
    from cattune.schemas import ConfigError, Example

    if args.pack and args.annotator != "prior":
        raise ConfigError("--pack only applies to --annotator prior")
    gold = _read_labelled(Path(args.gold))
    if args.annotator:
        annotator = get_annotator(args.annotator, pack=args.pack)
        examples = [Example(**{n: getattr(r, n) for n in Example.model_fields}) for r in gold]
        pred = annotator.annotate(examples)
    else:
        pred = _read_labelled(Path(args.pred))
    report = evaluate(pred, gold)
    if args.json:
        print(report.model_dump_json(indent=2))
        return 0
    table = Table(
        title=f"{report.rows} gold rows, {report.gold_pairs} gold pairs, "
        f"{report.pred_pairs} predicted pairs",
        title_justify="left",
    )
    for column in ("level", "precision", "recall", "F1"):
        table.add_column(column, justify="right" if column != "level" else "left")
    for level, score in (("exact", report.exact), ("overlap", report.overlap)):
        table.add_row(level, f"{score.precision:.3f}", f"{score.recall:.3f}", f"{score.f1:.3f}")
    console = Console()
    console.print(table)
    console.print(
        f"coverage {report.coverage:.3f} (gold rows with >= 1 predicted relation); "
        f"{report.missing_pred} gold rows without a prediction, "
        f"{report.unmatched_pred} predicted rows without gold"
    )
    return 0
