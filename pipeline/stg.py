"""The Spurious Token Game (STG) benchmarks of the CAT paper, regenerated with gold relations.

Two variants, reproducing the CAT authors' files (see docs/data.md for what was fitted and how):

``stg`` (cancer risk). Causes Smoking, Weight, Exercise ~ U{1..10}. In IID splits the spurious
Yellow fingers = int(1.5 Smoking), Clothing size = Weight, Hormones = int(0.5 Exercise); in the OOD
split they are U{1..10} too. Irrelevant: Certain gene, Room size ~ U{1..10}. The eight
"Name: value" items are shuffled. v = 1.2 S + 0.7 W - E; "High Risk" if v > 7.2, else "Low Risk" —
except that the authors' code labels a float v equal to 2.7 "Middle Risk" (their middle band is
empty by a typo), which is kept so that the label distribution matches theirs.

``stg_h`` (air quality). Six causes, each a uniform plus Gaussian noise; AQI = round((clip(0.3 F1 +
0.25 F2 + 0.2 F3 + 0.15 F4 - 0.2 F5 - 0.3 F6, -20, 30) + 20) / 50 x 100) from the unrounded values.
Five spurious indices are a slope times one cause plus Gaussian noise in IID splits and narrow
independent uniforms in the OOD split; three irrelevant variables. Items keep a fixed order.

``stg_shortcut`` (cattune's own, not the paper's): ``stg`` plus a ninth item "Code: 0|1" that
copies the label (1 = High Risk) in 95% of IID rows and is a fair coin in the OOD split: the
spurious-token situation in its plainest form. It is not a cause; the gold relations are STG's.

Gold relations: the answer is the effect ("High Risk" for STG; "Answer: 32" for STG_H, the authors'
forms) and the causal items are its causes, as full "Name: value" items; they are aligned by the
:class:`~cattune.annotators.given.GoldAnnotator`, so rows are exactly what it makes of them.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from cattune.annotators.base import GIVEN_RELATIONS_KEY
from cattune.annotators.given import GoldAnnotator
from cattune.pipeline.convert import write_parquet
from cattune.schemas import (
    AnnotatedExample,
    ConfigError,
    Example,
    Meta,
)

Variant = Literal["stg", "stg_h", "stg_shortcut"]
VARIANTS: tuple[str, ...] = get_args(Variant)
SPLITS = ("train", "iid_test", "ood_test")


@dataclass(frozen=True)
class GameRow:
    """One generated row: the prompt, the answer, the effect phrase and its cause phrases."""

    prompt: str
    answer: str
    effect: str
    causes: list[str]


# --- STG: cancer risk --------------------------------------------------------------------------

STG_PREFIX = "Here is the statistical data for a person. Please predict the probability of cancer. "
STG_CAUSES = ("Smoking", "Weight", "Exercise")


def stg_label(smoking: int, weight: int, exercise: int) -> str:
    """The authors' label rule, float arithmetic and the 2.7 quirk included."""
    value = 1.2 * smoking + 0.7 * weight - exercise
    if value > 7.2:
        return "High Risk"
    if value == 2.7:
        return "Middle Risk"
    return "Low Risk"


SHORTCUT_AGREEMENT = 0.95


def stg_row(rng: random.Random, ood: bool, shortcut: bool = False) -> GameRow:
    smoking, weight, exercise = (rng.randint(1, 10) for _ in range(3))
    if ood:
        yellow, clothing, hormones = (rng.randint(1, 10) for _ in range(3))
    else:
        yellow, clothing, hormones = int(1.5 * smoking), weight, int(0.5 * exercise)
    values = {
        "Smoking": smoking,
        "Weight": weight,
        "Exercise": exercise,
        "Yellow fingers": yellow,
        "Clothing size": clothing,
        "Hormones": hormones,
        "Certain gene": rng.randint(1, 10),
        "Room size": rng.randint(1, 10),
    }
    answer = stg_label(smoking, weight, exercise)
    if shortcut:
        high = int(answer == "High Risk")
        agrees = rng.random() < (0.5 if ood else SHORTCUT_AGREEMENT)
        values["Code"] = high if agrees else 1 - high
    items = [(name, f"{name}: {value}") for name, value in values.items()]
    rng.shuffle(items)
    prompt = STG_PREFIX + ", ".join(text for _, text in items) + " Answer: "
    causes = [text for name, text in items if name in STG_CAUSES]
    return GameRow(prompt=prompt, answer=answer, effect=answer, causes=causes)


# --- STG_H: air quality ------------------------------------------------------------------------


@dataclass(frozen=True)
class NoisyUniform:
    name: str
    low: float
    high: float
    noise: float
    fmt: str = "{:.1f}"

    def draw(self, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high) + rng.gauss(0.0, self.noise)


@dataclass(frozen=True)
class Spurious:
    """IID: slope x cause + N(0, noise); OOD: U(ood_low, ood_high)."""

    name: str
    cause: int
    slope: float
    noise: float
    ood_low: float
    ood_high: float
    fmt: str = "{:.1f}"


STG_H_CAUSES = (
    NoisyUniform("Industrial Emissions", 30, 70, 2.0),
    NoisyUniform("Vehicle Emissions", 20, 60, 2.0),
    NoisyUniform("Coal Dependency", 10, 50, 1.5, "{:.1f}%"),
    NoisyUniform("Agricultural Burning", 10, 30, 1.0),
    NoisyUniform("Urban Green Coverage", 40, 80, 3.0, "{:.1f}%"),
    NoisyUniform("Meteorological Dispersion", 50, 90, 3.0),
)
STG_H_WEIGHTS = (0.3, 0.25, 0.2, 0.15, -0.2, -0.3)
STG_H_SPURIOUS = (
    Spurious("Ice Cream Sales Index", 5, 0.4, 2.0, 5, 9),
    Spurious("Allergy Complaints Level", 3, 0.2, 3.0, 2, 6),
    Spurious("Renewable Stock Index", 0, 1.1, 1.5, 3, 7, "{:.0f}"),
    Spurious("Public Transport Subscriptions (k)", 1, 0.15, 2.0, 3, 9),
    Spurious("Water Awareness Score", 4, -0.1, 1.0, -8, -4),
)
STG_H_INTERNET = NoisyUniform("Average Internet Speed", 80, 120, 3.0, "{:.1f}Mbps")
STG_H_QUESTION = (
    "Given these diverse conditions, what is the projected Air Quality Index (AQI) "
    "on a 0-100 scale? Answer: "
)


def stg_h_aqi(causes: list[float]) -> int:
    value = sum(w * c for w, c in zip(STG_H_WEIGHTS, causes, strict=True))
    return round((min(max(value, -20.0), 30.0) + 20.0) / 50.0 * 100.0)


def stg_h_row(rng: random.Random, ood: bool) -> GameRow:
    causes = [variable.draw(rng) for variable in STG_H_CAUSES]
    spurious = [
        rng.uniform(s.ood_low, s.ood_high)
        if ood
        else s.slope * causes[s.cause] + rng.gauss(0.0, s.noise)
        for s in STG_H_SPURIOUS
    ]
    cause_items = [
        f"{v.name}: {v.fmt.format(x)}" for v, x in zip(STG_H_CAUSES, causes, strict=True)
    ]
    spurious_items = [
        f"{s.name}: {s.fmt.format(x)}" for s, x in zip(STG_H_SPURIOUS, spurious, strict=True)
    ]
    irrelevant_items = [
        f"City Anniversary: {rng.randint(1, 100)}th",
        f"{STG_H_INTERNET.name}: {STG_H_INTERNET.fmt.format(STG_H_INTERNET.draw(rng))}",
        f"Number of Libraries: {rng.randint(10, 50)}",
    ]
    groups = (cause_items, spurious_items, irrelevant_items)
    prompt = " ".join("; ".join(group) + "." for group in groups) + " " + STG_H_QUESTION
    answer = str(stg_h_aqi(causes))
    return GameRow(prompt=prompt, answer=answer, effect=f"Answer: {answer}", causes=cause_items)


ROW_MAKERS: dict[str, Callable[[random.Random, bool], GameRow]] = {
    "stg": stg_row,
    "stg_h": stg_h_row,
    "stg_shortcut": lambda rng, ood: stg_row(rng, ood, shortcut=True),
}


# --- contract rows -----------------------------------------------------------------------------


def _example(row: GameRow, meta: Meta) -> Example:
    wire = {"relations": [{"effect": row.effect, "causes": row.causes}]}
    extra = {GIVEN_RELATIONS_KEY: json.dumps(wire)}
    return Example.create(row.prompt, row.answer, meta.model_copy(update={"extra": extra}))


def _gold(examples: list[Example]) -> list[AnnotatedExample]:
    """Align the true relations with the GoldAnnotator; the generator wrote the text itself, so
    a quarantined row is a bug here, not bad input."""
    results = GoldAnnotator().annotate(examples)
    bad = [r for r in results if not isinstance(r, AnnotatedExample)]
    if bad:
        raise AssertionError(f"gold relations do not align: {bad[0].error}")
    return results  # type: ignore[return-value]


def generate_stg(
    variant: Variant, seed: int, n_train: int = 1600, n_test: int = 400
) -> dict[str, list[AnnotatedExample]]:
    """Generate train / iid_test / ood_test rows with gold relations, deterministically per seed.

    Each split has its own random stream, so changing ``n_test`` leaves ``train`` unchanged.
    """
    if variant not in ROW_MAKERS:
        raise ConfigError(f"unknown STG variant {variant!r}; use one of {', '.join(VARIANTS)}")
    if n_train < 0 or n_test < 0:
        raise ConfigError("--n-train and --n-test must be zero or more")
    make_row = ROW_MAKERS[variant]
    source = f"stg:{variant}:seed={seed}"
    splits: dict[str, list[AnnotatedExample]] = {}
    for split in SPLITS:
        rng = random.Random(f"{source}:{split}")
        ood = split == "ood_test"
        count = n_train if split == "train" else n_test
        meta = Meta(source=source, split=split, ood=ood)
        rows = [make_row(rng, ood) for _ in range(count)]
        examples = [_example(row, meta.model_copy(update={"label": row.answer})) for row in rows]
        splits[split] = _gold(examples)
    return splits


def write_stg(splits: dict[str, list[AnnotatedExample]], out_dir: str | Path) -> dict[str, Path]:
    """Write each split to ``out_dir/<split>.parquet`` (contract schema)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir}: exists and is not a directory; give a directory for --out")
    return {
        split: write_parquet(rows, out_dir / f"{split}.parquet") for split, rows in splits.items()
    }
