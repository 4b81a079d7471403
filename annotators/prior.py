"""PriorAnnotator: deterministic, offline causal relations from a prior pack's rules.

A rule family (``pack.rules.kind``) reads one example (spaCy tokens from ``spacy.blank("en")``
plus regexes) and proposes phrase relations, each phrase anchored at the exact place the rule
matched it. The phrases are aligned with :func:`cattune.schemas.align` like any annotator's, and
of the spans alignment finds only the anchored ones are kept: a value such as ``3.4`` that also
occurs in a spurious item is not linked there. A row the rules find nothing in is quarantined with
the reason, never returned with an empty label.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from cattune.annotators.base import AnnotationResult, stable_hash
from cattune.annotators.pack import (
    KeyValueRules,
    MathRules,
    MultipleChoiceRules,
    PriorPack,
    load_pack,
)
from cattune.schemas import (
    AnnotatedExample,
    Annotation,
    Example,
    PhraseRelation,
    QuarantinedExample,
    Relation,
    Span,
    align,
)

AUTO_ORDER = ("key-value-records", "multiple-choice", "math-word-problems")
"""Shipped packs tried in turn when no pack is given: the most specific rules first."""

_CONNECTORS = frozenset({"of", "a", "an", "the", "more", "less", "fewer"})
_CLAUSE_ENDS = frozenset({".", ",", ";", ":", "?", "!", "\n"})
_CURRENCY = frozenset({"$", "€", "£"})

Anchor = tuple[int, int]


Proposal = list[tuple[Anchor, list[Anchor]]]
"""What a rule found: (effect anchor, cause anchors) pairs, each anchor the span a phrase was
matched at."""


class _NotFound(Exception):
    """The rules found nothing to label; the message says what was looked for."""


def _strip_span(text: str, start: int, end: int) -> Anchor | None:
    segment = text[start:end]
    left = len(segment) - len(segment.lstrip())
    right = len(segment.rstrip())
    return (start + left, start + right) if right > left else None


def _final_answer(rules: MathRules, example: Example) -> Anchor:
    offset = len(example.prompt)
    for pattern in rules.answer_patterns:
        matches = list(re.finditer(pattern, example.completion, re.MULTILINE))
        if matches:
            return (offset + matches[-1].start(1), offset + matches[-1].end(1))
    raise _NotFound("no final answer in the completion (rules.answer_patterns matched nothing)")


def _is_boundary(token: Any) -> bool:
    return token.text in _CLAUSE_ENDS


def _quantities(rules: MathRules, tokens: list[Any]) -> list[tuple[int, Anchor]]:
    """(first token index, span) of each number with its currency sign and unit words."""
    found: list[tuple[int, Anchor]] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not (token.like_num and any(c.isdigit() for c in token.text)):
            i += 1
            continue
        first = i - 1 if i > 0 and tokens[i - 1].text in _CURRENCY else i
        end, j, content = token.idx + len(token.text), i + 1, 0
        while j < len(tokens) and content < rules.unit_words:
            word = tokens[j]
            if word.text == "%" or (word.is_alpha and not word.is_stop):
                content += word.text != "%"
                end = word.idx + len(word.text)
            elif word.lower_ not in _CONNECTORS:
                break
            j += 1
        found.append((first, (tokens[first].idx, end)))
        i = j if content else i + 1
    return found


def _clause_opening(rules: MathRules, tokens: list[Any], before: int) -> Anchor | None:
    """The first ``context_words`` tokens of the clause that token ``before`` sits in."""
    start = before
    while start > 0 and not _is_boundary(tokens[start - 1]):
        start -= 1
    last = min(before, start + rules.context_words) - 1
    while last >= start and (tokens[last].is_punct or tokens[last].like_num):
        last -= 1
    if last < start:
        return None
    return (tokens[start].idx, tokens[last].idx + len(tokens[last].text))


def _question(rules: MathRules, tokens: list[Any]) -> tuple[Anchor, Anchor | None] | None:
    """The question phrase (from the last question word opening a clause) and the tail of the
    question sentence (its last ``context_words`` tokens before the question mark)."""
    words = {w.lower() for w in rules.question_words}
    opening = None
    for k, token in enumerate(tokens):
        if token.lower_ in words and (k == 0 or tokens[k - 1].is_punct):
            opening = k
    if opening is None:
        return None
    end = opening
    for k in range(opening, min(opening + rules.question_length, len(tokens))):
        if tokens[k].is_punct:
            break
        end = k
        if k > opening and tokens[k].is_alpha and not tokens[k].is_stop:
            break
    phrase = (tokens[opening].idx, tokens[end].idx + len(tokens[end].text))
    stop = opening
    while stop < len(tokens) and not _is_boundary(tokens[stop]):
        stop += 1
    first_tail = max(end + 1, stop - rules.context_words)
    tail = None
    if rules.context_words and first_tail < stop:
        tail = (tokens[first_tail].idx, tokens[stop - 1].idx + len(tokens[stop - 1].text))
    return phrase, tail


def _math(rules: MathRules, doc: Any, example: Example) -> Proposal:
    answer = _final_answer(rules, example)
    tokens = list(doc)
    proposal: Proposal = []
    causes: list[Anchor] = []
    for first, quantity in _quantities(rules, tokens):
        causes.append(quantity)
        context = _clause_opening(rules, tokens, first) if rules.context_words else None
        if context is not None:
            proposal.append((quantity, [context]))
    if rules.include_entities:
        causes.extend(
            (t.idx, t.idx + len(t.text))
            for k, t in enumerate(tokens)
            if k > 0 and t.is_title and t.is_alpha and not t.is_stop and not tokens[k - 1].is_punct
        )
    question = _question(rules, tokens)
    asked = [a for a in question or () if a is not None]
    causes.extend(asked)
    if not causes:
        raise _NotFound("no quantity or question phrase in the prompt")
    if rules.answer_marker:
        marker_at = example.text.rfind(rules.answer_marker, 0, answer[0])
        if marker_at != -1:
            marker = (marker_at, marker_at + len(rules.answer_marker))
            if asked:
                proposal.append((marker, asked))
            causes.append(marker)
    proposal.append((answer, causes))
    return proposal


def _key_value(rules: KeyValueRules, doc: Any, example: Example) -> Proposal:
    text, prompt_end = example.text, len(example.prompt)
    effect_span = _strip_span(text, prompt_end, len(text))
    if effect_span is None:
        raise _NotFound("the completion is empty")
    separator, value = re.escape(rules.separator), rules.value_pattern
    for profile in rules.profiles:
        found: list[Anchor] = []
        for key in profile.causal_keys:
            pattern = rf"(?<!\w){re.escape(key)}\s*{separator}\s*({value})"
            match = re.search(pattern, example.prompt)
            if match is None:
                continue
            found.append(match.span(1) if profile.cause == "value" else match.span(0))
        if not found or len(found) < (profile.min_keys or len(profile.causal_keys)):
            continue
        effect = effect_span
        if profile.effect == "marker+completion":
            marker_at = example.prompt.rfind(rules.answer_marker)
            between = (
                example.prompt[marker_at + len(rules.answer_marker) :] if marker_at >= 0 else ""
            )
            if marker_at >= 0 and not between.strip():
                effect = (marker_at, effect_span[1])
        return [(effect, found)]
    names = ", ".join(p.name for p in rules.profiles)
    raise _NotFound(f"no profile's causal keys occur as 'Name{rules.separator} value' ({names})")


def _multiple_choice(rules: MultipleChoiceRules, doc: Any, example: Example) -> Proposal:
    options = list(rules.compiled(rules.option_pattern).finditer(example.prompt))
    if len(options) < 2:
        raise _NotFound("fewer than two lettered options in the prompt")
    prompt_end = len(example.prompt)
    answer = rules.compiled(rules.answer_pattern).search(example.completion)
    if answer is None:
        raise _NotFound("no answer letter in the completion")
    letter = answer.group("letter")
    chosen = [m for m in options if m.group("letter") == letter]
    if not chosen:
        raise _NotFound(f"the answer {letter!r} is not one of the options")
    causes: list[Anchor] = []
    option_text = _strip_span(example.prompt, *chosen[0].span("text"))
    if option_text is not None:
        causes.append(option_text)
    stem = _strip_span(example.prompt, 0, options[0].start())
    if stem is not None:
        end = stem[1] - (example.prompt[stem[1] - 1] in "?:")
        start = max(example.prompt.rfind(c, 0, end) for c in ".!?\n:") + 1
        stem = _strip_span(example.prompt, start, end)
    if stem is not None:
        causes.append(stem)
    effect = (prompt_end + answer.start("letter"), prompt_end + answer.end("letter"))
    return [(effect, causes)]


_RULES = {
    "math-word-problems": _math,
    "key-value-records": _key_value,
    "multiple-choice": _multiple_choice,
}


def _anchored(text: str, proposal: Proposal) -> list[Relation]:
    """Align the proposal's phrases and keep the spans at the anchors; merge shared effects."""
    merged: dict[Anchor, set[Anchor]] = {}
    for effect, causes in proposal:
        phrase = PhraseRelation(
            effect=text[effect[0] : effect[1]], causes=[text[s:e] for s, e in causes]
        )
        wanted = set(causes)
        for relation in align(text, [phrase]).relations:
            if (relation.effect.start, relation.effect.end) != effect:
                continue
            kept = {(c.start, c.end) for c in relation.causes} & wanted
            if kept:
                merged.setdefault(effect, set()).update(kept)
    return [
        Relation(
            effect=Span(start=effect[0], end=effect[1]),
            causes=[Span(start=s, end=e) for s, e in sorted(causes)],
        )
        for effect, causes in sorted(merged.items())
    ]


def _fields(example: Example) -> dict[str, Any]:
    """The :class:`Example` fields of a row (which may itself be an annotated row)."""
    return {name: getattr(example, name) for name in Example.model_fields}


class PriorAnnotator:
    """The default annotator: a prior pack's rules, offline and deterministic.

    ``pack`` is a shipped pack name, a pack file, a loaded :class:`PriorPack`, or a sequence of
    those tried in turn; ``None`` tries every shipped pack (see :data:`AUTO_ORDER`). The first pack
    whose rules label a row wins and is recorded in the row's annotation.
    """

    name = "prior"
    version = "1.0"
    max_chars = 1_000_000
    """Longer prompts are quarantined: spaCy refuses texts over its ``max_length`` (this value)."""

    def __init__(
        self,
        pack: str | Path | PriorPack | Sequence[str | Path | PriorPack] | None = None,
        *,
        batch_size: int = 256,
    ) -> None:
        if pack is None:
            specs: Sequence[str | Path | PriorPack] = AUTO_ORDER
        elif isinstance(pack, str | Path | PriorPack):
            specs = [pack]
        else:
            specs = list(pack)
        self.packs = [p if isinstance(p, PriorPack) else load_pack(p) for p in specs]
        self.batch_size = batch_size
        self._nlp: Any = None
        # Hashed once: every row's provenance carries them (a hash per row was ~25% of the time).
        self._pack_hashes = {id(p): p.content_hash for p in self.packs}
        self._config_hash = stable_hash(
            {
                "annotator": self.name,
                "version": self.version,
                "packs": [[p.name, self._pack_hashes[id(p)]] for p in self.packs],
            }
        )

    def config_hash(self) -> str:
        return self._config_hash

    def _tokenizer(self) -> Any:
        if self._nlp is None:
            import spacy

            self._nlp = spacy.blank("en")
            self._nlp.max_length = self.max_chars
        return self._nlp

    def annotate(self, examples: Sequence[Example]) -> list[AnnotationResult]:
        prompts: Iterable[str] = (e.prompt for e in examples if len(e.prompt) <= self.max_chars)
        docs = iter(self._tokenizer().pipe(prompts, batch_size=self.batch_size))
        return [
            self._annotate_one(example, next(docs))
            if len(example.prompt) <= self.max_chars
            else self._too_long(example)
            for example in examples
        ]

    def _too_long(self, example: Example) -> QuarantinedExample:
        return QuarantinedExample(
            **_fields(example),
            annotation=self._annotation(self.packs[0] if len(self.packs) == 1 else None),
            error=(
                f"prompt has {len(example.prompt):,} characters, more than the prior annotator "
                f"reads ({self.max_chars:,}); shorten or split the row, or use an LLM annotator"
            ),
        )

    def _annotation(self, pack: PriorPack | None) -> Annotation:
        return Annotation(
            annotator=self.name,
            annotator_version=self.version,
            pack=pack.name if pack else None,
            pack_hash=self._pack_hashes[id(pack)] if pack else None,
            config_hash=self._config_hash,
        )

    def _annotate_one(self, example: Example, doc: Any) -> AnnotationResult:
        reasons: list[str] = []
        for pack in self.packs:
            try:
                proposal = _RULES[pack.rules.kind](pack.rules, doc, example)  # type: ignore[operator]
            except _NotFound as nothing:
                reasons.append(f"pack {pack.name!r}: {nothing}")
                continue
            relations = _anchored(example.text, proposal)
            if relations:
                return AnnotatedExample(
                    **_fields(example),
                    relations=relations,
                    annotation=self._annotation(pack),
                )
            reasons.append(f"pack {pack.name!r}: no cause precedes the effect")
        return QuarantinedExample(
            **_fields(example),
            annotation=self._annotation(self.packs[0] if len(self.packs) == 1 else None),
            error=(
                "prior rules found nothing to label ("
                + "; ".join(reasons)
                + "); use a pack written for this data (--pack), or an LLM annotator"
            ),
        )
