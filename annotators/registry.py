"""One way to get an annotator by kind: ``get_annotator("prior", pack="math-word-problems")``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cattune.annotators.base import Annotator
from cattune.schemas import ConfigError

KINDS = ("prior", "given", "gold", "llm", "vllm")


def get_annotator(kind: str, *, pack: str | Path | None = None, **options: Any) -> Annotator:
    """Build an annotator of ``kind`` (one of :data:`KINDS`).

    ``pack`` is the prior pack (name or file): used by ``prior`` (``None`` tries every shipped
    pack) and by ``llm``/``vllm`` for their prompts. ``options`` go to the annotator's
    constructor; an option it does not take raises :class:`ConfigError`.
    """
    try:
        if kind == "prior":
            from cattune.annotators.prior import PriorAnnotator

            return PriorAnnotator(pack, **options)
        if kind in ("given", "gold"):
            if pack is not None:
                raise ConfigError(f"the {kind!r} annotator takes no prior pack; drop --pack")
            from cattune.annotators.given import GivenAnnotator, GoldAnnotator

            return (GivenAnnotator if kind == "given" else GoldAnnotator)(**options)
        if kind == "llm":
            from cattune.annotators.llm import LLMAnnotator

            return LLMAnnotator(pack=pack, **options)
        if kind == "vllm":
            from cattune.annotators.vllm_engine import VLLMAnnotator

            return VLLMAnnotator(pack=pack, **options)
    except ImportError as error:
        raise ConfigError(
            f"the {kind!r} annotator is not available here ({error}); install its extra"
        ) from error
    except TypeError as error:
        raise ConfigError(f"bad option for the {kind!r} annotator: {error}") from error
    raise ConfigError(f"unknown annotator kind {kind!r}; use one of {', '.join(KINDS)}")
