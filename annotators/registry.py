"""One way to get an annotator by kind: ``get_annotator("prior", pack="math-word-problems")``.

The options each kind takes are its spec in :mod:`cattune.annotators.options`; they are
validated there, before any annotator is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from cattune.annotators.base import Annotator
from cattune.annotators.options import (
    KINDS,
    AnnotatorOptions,
    LLMOptions,
    constructor_kwargs,
    options_for,
)
from cattune.schemas import ConfigError

__all__ = ["KINDS", "build_annotator", "get_annotator"]


def get_annotator(
    kind: str,
    *,
    pack: str | Path | None = None,
    api_key: SecretStr | str | None = None,
    **options: Any,
) -> Annotator:
    """Build an annotator of ``kind`` (one of :data:`KINDS`) from keyword options.

    ``pack`` is the prior pack (name or file): used by ``prior`` (``None`` tries every shipped
    pack) and by ``llm``/``vllm`` for their prompts. ``options`` are checked against the kind's
    spec (:func:`~cattune.annotators.options.options_for`): an option it does not take, or a value
    out of bounds, raises :class:`ConfigError`. ``api_key`` (``llm`` only) is kept out of the
    spec, which may be stored as a flow parameter.
    """
    return build_annotator(kind, options, pack=pack, api_key=api_key)


def build_annotator(
    kind: str,
    options: AnnotatorOptions | Mapping[str, Any] | None = None,
    *,
    pack: str | Path | None = None,
    api_key: SecretStr | str | None = None,
) -> Annotator:
    """Build an annotator of ``kind`` from its spec (or a mapping validated into one)."""
    spec = options_for(kind, options)
    if api_key is not None and kind != "llm":
        raise ConfigError(f"the {kind!r} annotator takes no API key")
    if isinstance(spec, LLMOptions) and spec.api_key_secret is not None and api_key is None:
        raise ConfigError(
            "api_key_secret names a Prefect Secret block, which the annotate flow reads; "
            "outside a flow pass api_key, or set the variable named by api_key_env"
        )
    try:
        if kind == "prior":
            from cattune.annotators.prior import PriorAnnotator

            return PriorAnnotator(pack, **constructor_kwargs(spec))
        if kind in ("given", "gold"):
            if pack is not None:
                raise ConfigError(f"the {kind!r} annotator takes no prior pack; drop --pack")
            from cattune.annotators.given import GivenAnnotator, GoldAnnotator

            return (GivenAnnotator if kind == "given" else GoldAnnotator)(
                **constructor_kwargs(spec)
            )
        if kind == "llm":
            from cattune.annotators.llm import LLMAnnotator

            kwargs = constructor_kwargs(spec, exclude={"api_key_secret"})
            return LLMAnnotator(pack=pack, api_key=api_key, **kwargs)
        from cattune.annotators.vllm_engine import VLLMAnnotator

        return VLLMAnnotator(pack=pack, **constructor_kwargs(spec))
    except ImportError as error:
        raise ConfigError(
            f"the {kind!r} annotator is not available here ({error}); install its extra"
        ) from error
