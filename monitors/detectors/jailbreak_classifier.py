"""A trained jailbreak-attempt classifier, loaded from the folder ``python -m trainers.detector`` writes.

The folder holds ``alignd_detector.json`` (layers pooled, head shape, the threshold chosen on validation),
``encoder/`` (MiniLM and its tokenizer), ``head.pt`` and the same graph as ONNX, fp32 and int8
(docs/jailbreak-classifier.md). This module reads it without importing the trainers (monitors and trainers never
import one another): the torch path rebuilds the head from its state dict, the ONNX paths run the exported graph in
onnxruntime, which is what makes the classifier cheap enough for the event stream (int8 by default).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST = "alignd_detector.json"
RUNTIMES = ("onnx-int8", "onnx", "torch")


class ClassifierLoadError(ValueError):
    """The folder is not a jailbreak classifier this version can read (the message says what to do)."""


class JailbreakClassifier:
    """``scores(texts)``: the probability that each prompt is a jailbreak attempt; ``threshold`` flags."""

    def __init__(
        self,
        folder: str | Path,
        *,
        runtime: str = "onnx-int8",
        threshold: float | None = None,
        threads: int = 1,
        batch_size: int = 16,
    ) -> None:
        self.folder = Path(folder)
        path = self.folder / MANIFEST
        if not path.is_file():
            raise ClassifierLoadError(
                f"{self.folder} holds no {MANIFEST}: point monitors.jailbreak_classifier at a folder written by "
                "`python -m trainers.detector --out FOLDER`"
            )
        self.manifest: dict[str, Any] = json.loads(path.read_text("utf-8"))
        if self.manifest.get("format") != 1 or self.manifest.get("kind") != "jailbreak_attempt":
            raise ClassifierLoadError(f"{path} is not a format-1 jailbreak_attempt classifier; retrain it")
        if runtime not in RUNTIMES:
            raise ClassifierLoadError(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
        self.runtime = runtime
        self.threshold = float(self.manifest["threshold"] if threshold is None else threshold)
        self.max_length = int(self.manifest["max_length"])
        self.batch_size = batch_size
        self.model_id = f"{self.folder.name}:{runtime}"
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder / "encoder"), local_files_only=True)
        if runtime == "torch":
            self._torch_model = _TorchDetector(self.folder, self.manifest, threads)
        else:
            import onnxruntime as ort

            name = self.manifest.get("files", {}).get("onnx_int8" if runtime == "onnx-int8" else "onnx")
            if not name or not (self.folder / name).is_file():
                raise ClassifierLoadError(f"{self.folder} has no ONNX file for {runtime}; use runtime torch")
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            self._session = ort.InferenceSession(str(self.folder / name), options, providers=["CPUExecutionProvider"])

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros(len(texts), dtype=np.float32)
        # longest first within batches of similar length, so each batch pads little
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            enc = self.tokenizer(
                [texts[i] for i in idx], padding=True, truncation=True, max_length=self.max_length, return_tensors="np"
            )
            ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
            if self.runtime == "torch":
                out[idx] = self._torch_model(ids, mask)
            else:
                out[idx] = self._session.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]
        return out

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logits(texts).astype(np.float64)))


class _TorchDetector:
    """The saved graph in torch: the encoder's mean-pooled ``layers``, concatenated, through the head."""

    def __init__(self, folder: Path, manifest: dict[str, Any], threads: int) -> None:
        import torch
        from transformers import AutoModel

        self._torch = torch
        torch.set_num_threads(max(1, threads))
        self.encoder = AutoModel.from_pretrained(str(folder / "encoder"), local_files_only=True).eval()
        self.layers = [int(i) for i in manifest["layers"]]
        state = torch.load(folder / "head.pt", map_location="cpu", weights_only=True)
        # the head (trainers.detector): standardise (0.mean, 0.scale), then Linear (1.*) or
        # Linear-GELU-Dropout-Linear (1.*, 4.*); the standardisation is applied by hand below
        self.mean, self.scale = state.pop("0.mean"), state.pop("0.scale")
        modules: list[Any] = [torch.nn.Identity(), torch.nn.Linear(*reversed(state["1.weight"].shape))]
        if "4.weight" in state:
            modules += [torch.nn.GELU(), torch.nn.Dropout(0.0), torch.nn.Linear(*reversed(state["4.weight"].shape))]
        self.head = torch.nn.Sequential(*modules).eval()
        self.head.load_state_dict(state)

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            input_ids, attention_mask = torch.from_numpy(ids), torch.from_numpy(mask)
            states = self.encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
            m = attention_mask.unsqueeze(-1).to(torch.float32)
            count = m.sum(dim=1).clamp(min=1.0)
            feats = torch.cat([(states.hidden_states[i] * m).sum(dim=1) / count for i in self.layers], dim=-1)
            return self.head((feats - self.mean) / self.scale).squeeze(-1).numpy()
