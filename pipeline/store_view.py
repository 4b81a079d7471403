"""Showing annotated rows to people: the text cut into plain, cause and effect pieces."""

from __future__ import annotations

from typing import Literal

from cattune.schemas import AnnotatedExample

Role = Literal["cause", "effect"] | None


def segments(example: AnnotatedExample) -> list[tuple[str, Role]]:
    """``prompt + completion`` as consecutive (piece, role) pairs; effect wins over cause."""
    text = example.text
    roles: list[Role] = [None] * len(text)
    for relation in example.relations:
        for cause in relation.causes:
            for i in range(cause.start, cause.end):
                roles[i] = roles[i] or "cause"
    for relation in example.relations:
        for i in range(relation.effect.start, relation.effect.end):
            roles[i] = "effect"
    pieces: list[tuple[str, Role]] = []
    start = 0
    for i in range(1, len(text) + 1):
        if i == len(text) or roles[i] != roles[start]:
            pieces.append((text[start:i], roles[start]))
            start = i
    return pieces


def markdown(example: AnnotatedExample, limit: int = 400) -> str:
    """One line of Markdown: causes in **bold**, effects in _italics_ (text cut at ``limit``)."""
    out, used = [], 0
    for piece, role in segments(example):
        piece = piece[: max(limit - used, 0)]
        used += len(piece)
        clean = piece.replace("\n", " ").replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")
        if role == "cause" and clean.strip():
            out.append(f"**{clean}**")
        elif role == "effect" and clean.strip():
            out.append(f"_{clean}_")
        else:
            out.append(clean)
        if used >= limit:
            out.append("…")
            break
    return "".join(out)
