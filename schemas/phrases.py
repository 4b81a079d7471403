"""Phrase-level relations and their alignment to character spans.

This is part of the contract (DESIGN.md): annotators speak in phrases copied verbatim from the text,
``{"relations": [{"effect": "<phrase>", "causes": ["<phrase>", ...]}]}``; the CAT authors' forms
``{"<effect>": ["<cause>", ...]}`` and ``[{"<effect>": [...]}, ...]`` are accepted too.

Alignment turns phrases into spans by finding them in ``text = prompt + completion``. The default
strategy, ``"all"``, is the reference behaviour: every occurrence of a cause that ends before an
occurrence of the effect is linked to that occurrence. ``"nearest"`` links only the closest
preceding occurrence of each cause.

An occurrence counts only where it does not split a word or a number (``boundary="word"``, the
default; see :func:`is_boundary`): "he" is not found in "the", "5" not in "15", "9.6" not in "59.6",
"9" not in "9.6" or "1,900". Scripts written without spaces (Han, Hiragana, Katakana, Thai, Lao,
Khmer, Myanmar, ...) match anywhere, and a combining mark belongs to the character before it.
``boundary="none"`` finds phrases anywhere, as the reference code does.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from functools import lru_cache
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict

from cattune.schemas.records import Relation, Span

Strategy = Literal["all", "nearest"]
Boundary = Literal["word", "none"]
BOUNDARIES: tuple[str, ...] = get_args(Boundary)
ProblemKind = Literal[
    "empty_phrase",
    "effect_not_found",
    "cause_not_found",
    "effect_inside_word",
    "cause_inside_word",
    "cause_not_before_effect",
]


class PhraseRelation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    effect: str
    causes: list[str]


class AlignmentProblem(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: ProblemKind
    effect: str
    cause: str | None = None
    inside: str | None = None
    """For ``*_inside_word``: the first longer word or number the phrase occurs in."""

    @property
    def message(self) -> str:
        if self.kind == "empty_phrase":
            return f"empty phrase in relation of effect {self.effect!r}"
        if self.kind == "effect_not_found":
            return f"effect {self.effect!r} does not occur in the text"
        if self.kind == "cause_not_found":
            return f"cause {self.cause!r} of effect {self.effect!r} does not occur in the text"
        if self.kind == "effect_inside_word":
            return (
                f"effect {self.effect!r} occurs only inside longer words or numbers "
                f"(e.g. {self.inside!r}); copy whole words, or align with boundary 'none'"
            )
        if self.kind == "cause_inside_word":
            return (
                f"cause {self.cause!r} of effect {self.effect!r} occurs only inside longer "
                f"words or numbers (e.g. {self.inside!r}); copy whole words, or align with "
                "boundary 'none'"
            )
        return f"cause {self.cause!r} never ends before effect {self.effect!r} starts"


class Alignment(BaseModel):
    relations: list[Relation]
    problems: list[AlignmentProblem]


_SHOWN = 80


def _shown(value: Any) -> str:
    """``repr`` of a value, shortened for a message."""
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _causes(value: Any, effect: str) -> tuple[list[str] | None, str | None]:
    """The cause phrases of one effect (None if none is usable) and what was wrong, if anything."""
    if isinstance(value, str):
        return [value], None
    if isinstance(value, list):
        causes = [c for c in value if isinstance(c, str)]
        bad = [c for c in value if not isinstance(c, str)]
        if not bad:
            return causes, None
        problem = (
            f"causes of effect {effect!r} must be strings; dropped {len(bad)} other "
            f"value(s), e.g. {_shown(bad[0])}"
        )
        return (causes or None), problem
    kind = "a nested object" if isinstance(value, dict) else type(value).__name__
    problem = f"causes of effect {effect!r} must be a list of strings, got {kind} {_shown(value)}"
    return None, problem


def salvage_phrase_relations(obj: Any) -> tuple[list[PhraseRelation], list[str]]:
    """Read phrase relations in any accepted form, keeping what is well-formed.

    Returns the relations that could be read and one problem per part that could not (a relation
    that is not an object, an effect that is not text, causes that are not strings, such as the
    nested objects some rows of the CAT authors' files carry). Never raises.
    """
    if isinstance(obj, dict) and set(obj) == {"relations"}:
        obj = obj["relations"]
    if isinstance(obj, dict):
        items: list[Any] = [obj]
    elif isinstance(obj, list):
        items = obj
    else:
        return [], [f"expected an object or a list of relations, got {type(obj).__name__}"]
    relations: list[PhraseRelation] = []
    problems: list[str] = []
    for item in items:
        if not isinstance(item, dict):
            problems.append(f"each relation must be an object, got {_shown(item)}")
            continue
        if set(item) == {"effect", "causes"}:
            pairs = [(item["effect"], item["causes"])]
        else:
            pairs = list(item.items())
        for effect, value in pairs:
            if not isinstance(effect, str):
                problems.append(f"an effect must be a phrase (text), got {_shown(effect)}")
                continue
            causes, problem = _causes(value, effect)
            if problem:
                problems.append(problem)
            if causes is not None:
                relations.append(PhraseRelation(effect=effect, causes=causes))
    return relations, problems


def parse_phrase_relations(obj: Any) -> list[PhraseRelation]:
    """Read phrase relations in the wire format or either of the CAT authors' forms.

    Raises ``ValueError`` with a description of what is wrong for anything else (see
    :func:`salvage_phrase_relations` for a reader that keeps the well-formed part).
    """
    relations, problems = salvage_phrase_relations(obj)
    if problems:
        raise ValueError(problems[0])
    return relations


# --- word boundaries ---------------------------------------------------------------------------

_OTHER, _WORD, _UNSPACED, _EXTEND = range(4)
# Names of scripts written without spaces between words (and of their ideographic marks).
_UNSPACED_NAMES = (
    "CJK UNIFIED IDEOGRAPH",
    "CJK COMPATIBILITY IDEOGRAPH",
    "IDEOGRAPHIC",
    "HIRAGANA",
    "KATAKANA",
    "HALFWIDTH KATAKANA",
    "BOPOMOFO",
    "YI SYLLABLE",
    "THAI",
    "LAO",
    "KHMER",
    "MYANMAR",
    "TIBETAN",
)
_NUMBER_SEPARATORS = frozenset(".,\u066b\u066c")  # decimal points, thousands separators
_ZWJ = "\u200d"


@lru_cache(maxsize=8192)
def _char_class(char: str) -> int:
    category = unicodedata.category(char)
    if category[0] == "M" or char == _ZWJ or "\U0001f3fb" <= char <= "\U0001f3ff":
        return _EXTEND  # combining marks, joiners and emoji modifiers extend the character before
    if category == "Nd":
        return _WORD  # digits are words in every script, so numbers are never split
    if category[0] in "LN" or category == "Pc":
        return _UNSPACED if unicodedata.name(char, "").startswith(_UNSPACED_NAMES) else _WORD
    return _OTHER


def _is_digit(char: str) -> bool:
    return unicodedata.category(char) == "Nd"


def is_boundary(text: str, index: int) -> bool:
    """Whether a phrase may start or end at ``index`` without splitting a word or a number.

    Not a boundary: between two letters, digits or underscores of scripts that separate words with
    spaces; on either side of a decimal point or thousands separator that stands between digits
    ("9.6", "1,900"); before a combining mark, joiner or emoji modifier, or after a zero-width
    joiner. Next to a character of a script written without spaces (Han, Kana, Thai, ...), and at
    the ends of the text, it is.
    """
    if index <= 0 or index >= len(text):
        return True
    after = text[index]
    if _char_class(after) == _EXTEND or text[index - 1] == _ZWJ:
        return False
    if after in _NUMBER_SEPARATORS and index + 1 < len(text):
        if _is_digit(text[index - 1]) and _is_digit(text[index + 1]):
            return False
    if text[index - 1] in _NUMBER_SEPARATORS and index >= 2:
        if _is_digit(text[index - 2]) and _is_digit(after):
            return False
    base = index - 1
    while base > 0 and _char_class(text[base]) == _EXTEND:
        base -= 1
    return not (_char_class(text[base]) == _WORD and _char_class(after) == _WORD)


def _check_boundary(boundary: str) -> None:
    if boundary not in BOUNDARIES:
        raise ValueError(f"unknown boundary {boundary!r}; use 'word' or 'none'")


def find_occurrences(text: str, phrase: str, boundary: Boundary = "word") -> list[int]:
    """Start offsets (code points) of every occurrence of ``phrase``, overlapping ones included.

    With ``boundary="word"`` an occurrence must start and end at a boundary (:func:`is_boundary`);
    with ``"none"`` every substring match counts.
    """
    _check_boundary(boundary)
    starts: list[int] = []
    start = text.find(phrase)
    while start != -1:
        if boundary == "none" or (
            is_boundary(text, start) and is_boundary(text, start + len(phrase))
        ):
            starts.append(start)
        start = text.find(phrase, start + 1)
    return starts


def _enclosing_word(text: str, phrase: str) -> str:
    """The first word or number that contains ``phrase`` (which occurs in ``text``)."""
    start = text.index(phrase)
    end = start + len(phrase)
    while not is_boundary(text, start):
        start -= 1
    while not is_boundary(text, end):
        end += 1
    return text[start:end]


def _missing(text: str, effect: str, cause: str | None = None) -> AlignmentProblem:
    """The problem for an effect (or a cause) with no occurrence: absent, or only inside words."""
    phrase = effect if cause is None else cause
    if phrase not in text:
        kind: ProblemKind = "effect_not_found" if cause is None else "cause_not_found"
        return AlignmentProblem(kind=kind, effect=effect, cause=cause)
    kind = "effect_inside_word" if cause is None else "cause_inside_word"
    return AlignmentProblem(
        kind=kind, effect=effect, cause=cause, inside=_enclosing_word(text, phrase)
    )


def align(
    text: str,
    relations: Iterable[PhraseRelation],
    strategy: Strategy = "all",
    boundary: Boundary = "word",
) -> Alignment:
    """Turn phrase relations into span relations over ``text`` and list what did not align.

    Each occurrence of an effect becomes one :class:`Relation` whose causes are the cause
    occurrences that end before it starts (all of them, or the nearest one per cause phrase).
    Occurrences follow ``boundary`` (see :func:`find_occurrences`). Relations sharing an effect
    span are merged; cause spans are de-duplicated and sorted.
    """
    if strategy not in ("all", "nearest"):
        raise ValueError(f"unknown alignment strategy {strategy!r}; use 'all' or 'nearest'")
    _check_boundary(boundary)
    causes_by_effect: dict[tuple[int, int], set[tuple[int, int]]] = {}
    problems: list[AlignmentProblem] = []
    for relation in relations:
        if not relation.effect or any(not c for c in relation.causes):
            problems.append(AlignmentProblem(kind="empty_phrase", effect=relation.effect))
        if not relation.effect:
            continue
        effect_starts = find_occurrences(text, relation.effect, boundary)
        if not effect_starts:
            problems.append(_missing(text, relation.effect))
            continue
        for cause in dict.fromkeys(c for c in relation.causes if c):
            cause_starts = find_occurrences(text, cause, boundary)
            if not cause_starts:
                problems.append(_missing(text, relation.effect, cause))
                continue
            linked = False
            for effect_start in effect_starts:
                before = [s for s in cause_starts if s + len(cause) <= effect_start]
                if strategy == "nearest":
                    before = before[-1:]
                if before:
                    linked = True
                    effect_key = (effect_start, effect_start + len(relation.effect))
                    causes_by_effect.setdefault(effect_key, set()).update(
                        (s, s + len(cause)) for s in before
                    )
            if not linked:
                problems.append(
                    AlignmentProblem(
                        kind="cause_not_before_effect", effect=relation.effect, cause=cause
                    )
                )
    span_relations = [
        Relation(
            effect=Span(start=effect[0], end=effect[1]),
            causes=[Span(start=s, end=e) for s, e in sorted(causes)],
        )
        for effect, causes in sorted(causes_by_effect.items())
    ]
    return Alignment(relations=span_relations, problems=problems)
