"""The served policy and its one generation thread: answers, and adapter swaps between answers (docs/serve.md).

One thread, the *worker*, owns the model: it runs the queued generations one after another, and it is the only
code that changes the model. A swap is handed to it as a job of its own, run ahead of the waiting generations, so
it always falls *between* two answers: an answer in progress finishes on the version it started with, and no
answer ever reads a half-installed adapter. What is slow about a swap (downloading the version from MLflow;
loading a whole base model when a version names another base) happens before, on the caller's thread (the
models-topic follower of daemon/serve.py); the worker then only attaches the adapter's weights from a local
folder (peft's ``load_adapter``), activates it and drops the previous one.

Models load through the trainers' code: the base with :func:`trainers.models.load_policy_model` (the offline
SmolLM2 GGUF, a tiny test model, or any Hugging Face name), the adapter as ``trainers.policy.Policy.save`` wrote it
(``adapter/`` and the ``alignd_model.json`` manifest naming its base). Prompts are rendered as
``Policy.prompt_ids`` renders them in training (the tokenizer's chat template with the assistant turn opened), so
the served model reads prompts in the form it was trained on.

Generation is ``model.generate`` with a streamer that hands decoded text to the request (the same call the
benchmark compares with plain ``transformers``), stopped early when the request is cancelled (a client that went
away). Where CUDA is present the model runs there in bf16 (``serve.device``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

from trainers.models import Runtime, load_policy_model, load_tokenizer
from trainers.policy import MANIFEST

logger = logging.getLogger(__name__)

BASE = "base"  # the version name of the bare base model (no champion registered)


class QueueFullError(Exception):
    """More requests wait for the model than ``serve.max_queue``."""


class AdapterLoadError(Exception):
    """A version's artifacts cannot be served (no adapter, a manifest or weights that do not load)."""


@dataclass
class Prepared:
    """A version made ready off the worker: its adapter folder, and a whole model when its base differs."""

    version: str
    base_model: str
    adapter_dir: Path | None  # None: the bare base
    model: Any = None  # set when the base model had to be loaded anew (its adapter already attached)
    tokenizer: Any = None


@dataclass
class Generation:
    """One answer to produce. ``on_text`` is called on the worker thread with each piece of decoded text."""

    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    on_text: Callable[[str], None] = lambda _text: None
    on_done: Callable[[Generation], None] = lambda _g: None
    cancelled: threading.Event = field(default_factory=threading.Event)
    # Filled in by the worker:
    version: str = ""
    text: str = ""
    completion_tokens: int = 0
    finish_reason: str = "stop"
    error: BaseException | None = None
    started: float = 0.0
    finished: float = 0.0


class _Streamer(TextStreamer):
    """transformers' text streamer, counting the generated tokens and passing text to the generation."""

    def __init__(self, tokenizer: Any, job: Generation, eos: set[int]) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.job, self.eos, self.ended_on_eos = job, eos, False

    def put(self, value: Any) -> None:
        if not self.next_tokens_are_prompt:
            ids = value.reshape(-1).tolist()
            self.job.completion_tokens += sum(1 for t in ids if t not in self.eos)
            self.ended_on_eos = self.ended_on_eos or any(t in self.eos for t in ids)
        super().put(value)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.job.text += text
            self.job.on_text(text)


class _Cancelled(StoppingCriteria):
    def __init__(self, job: Generation) -> None:
        self.job = job

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.job.cancelled.is_set(), dtype=torch.bool, device=input_ids.device)


def _manifest_base(folder: Path, default: str) -> str:
    path = folder / MANIFEST
    if not path.is_file():
        return default
    try:
        return str(json.loads(path.read_text())["base_model"])
    except (ValueError, KeyError, TypeError) as exc:
        raise AdapterLoadError(f"{path} is not a readable alignd manifest: {exc}") from None


def adapter_folder(artifacts: Path) -> Path:
    """The PEFT adapter inside a policy version's artifacts (``adapter/``, as training saves it, or the root).

    Raises:
        AdapterLoadError: no ``adapter_config.json`` there.
    """
    found = next((d for d in (artifacts / "adapter", artifacts) if (d / "adapter_config.json").is_file()), None)
    if found is None:
        raise AdapterLoadError(f"no LoRA adapter in {artifacts} (no adapter_config.json)")
    return found


class ModelHost:
    """The served model and its worker thread."""

    def __init__(self, base_model: str, runtime: Runtime, *, max_queue: int = 64) -> None:
        self.runtime, self.max_queue = runtime, max_queue
        self.base_model = base_model
        self.tokenizer = load_tokenizer(base_model, kind="policy")
        self.model: Any = load_policy_model(base_model, runtime).eval()
        self.version = BASE
        self.adapter: str | None = None  # the active peft adapter's name
        self._jobs: deque[Generation] = deque()
        self._swaps: deque[tuple[Prepared, threading.Event, list[BaseException]]] = deque()
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="alignd-serve-model", daemon=True)
        self.last_swap_s = 0.0  # time the worker spent installing the last swap (requests waited that long)

    # --- prompts -----------------------------------------------------------------------------------------------

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """The prompt as ``trainers.policy.Policy.prompt_ids`` renders it (without its truncation)."""
        tokenizer = self.tokenizer
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    @property
    def context_length(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048) or 2048)

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        if not self._thread.is_alive() and not self._stop:
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._stop = True
            for job in self._jobs:
                job.cancelled.set()
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def pending(self) -> int:
        return len(self._jobs)

    def submit(self, job: Generation) -> None:
        """Queue ``job``; ``job.on_done`` is called on the worker once it is answered (or failed).

        Raises:
            QueueFullError: ``max_queue`` requests already wait.
        """
        with self._cond:
            if self._stop:
                raise QueueFullError("the server is stopping")
            if len(self._jobs) >= self.max_queue:
                raise QueueFullError(f"{len(self._jobs)} requests already wait for the model (serve.max_queue)")
            self._jobs.append(job)
            self._cond.notify()

    # --- swaps ------------------------------------------------------------------------------------------------

    def prepare(self, version: str, artifacts: Path | None) -> Prepared:
        """Make ``version`` ready off the worker (on the caller's thread): find its adapter and base, and load a
        whole model when its base is not the one served. ``artifacts`` None: the bare base model.

        Raises:
            AdapterLoadError: the artifacts hold no adapter, or it does not load onto its base.
        """
        if artifacts is None:
            return Prepared(BASE, self.base_model, None)
        folder = adapter_folder(artifacts)
        base = _manifest_base(artifacts, self.base_model)
        prepared = Prepared(version, base, folder)
        if base != self.base_model:
            from peft import PeftModel

            logger.info("serve: %s v%s is trained on %s; loading that base beside the served one", base, version, base)
            try:
                model = load_policy_model(base, self.runtime)
                prepared.model = PeftModel.from_pretrained(model, str(folder), adapter_name=_name(version)).eval()
                prepared.tokenizer = load_tokenizer(base, kind="policy")
            except Exception as exc:  # noqa: BLE001 - any failure to load is this version's, reported as such
                raise AdapterLoadError(f"v{version}'s adapter does not load onto {base}: {exc}") from exc
        return prepared

    def install(self, prepared: Prepared, timeout: float | None = None) -> float:
        """Make the worker switch to ``prepared`` between two answers; returns the seconds the switch took.

        Raises:
            AdapterLoadError: the adapter did not load (the served version is unchanged).
            TimeoutError: the worker did not get to it within ``timeout``.
        """
        done, failure = threading.Event(), list[BaseException]()
        with self._cond:
            self._swaps.append((prepared, done, failure))
            self._cond.notify()
        if not done.wait(timeout):
            raise TimeoutError(f"the model thread did not install v{prepared.version} within {timeout} s")
        if failure:
            raise failure[0]
        return self.last_swap_s

    def _install(self, prepared: Prepared) -> None:
        """On the worker, between two answers."""
        started = time.perf_counter()
        previous, old_model = self.adapter, self.model
        if prepared.model is not None:  # another base, loaded whole off the worker
            self.model, self.tokenizer, self.base_model = prepared.model, prepared.tokenizer, prepared.base_model
            self.adapter = _name(prepared.version)
            previous = None
        elif prepared.adapter_dir is None:
            self.adapter = None  # the bare base: generation runs with the adapters disabled
        else:
            name = _name(prepared.version)
            try:
                if not hasattr(self.model, "peft_config"):
                    from peft import PeftModel

                    self.model = PeftModel.from_pretrained(
                        self.model, str(prepared.adapter_dir), adapter_name=name, low_cpu_mem_usage=True
                    )
                elif name not in self.model.peft_config:
                    # low_cpu_mem_usage: the new adapter's modules are made empty (meta) and filled from the file,
                    # not first initialised at random: the model waits for the copy only.
                    self.model.load_adapter(str(prepared.adapter_dir), adapter_name=name, low_cpu_mem_usage=True)
                self.model.set_adapter(name)
                self.model.eval()
            except Exception as exc:  # noqa: BLE001 - reported to the caller; the served version stays
                if hasattr(self.model, "peft_config") and name in self.model.peft_config and name != previous:
                    self.model.delete_adapter(name)
                if previous is not None:
                    self.model.set_adapter(previous)
                raise AdapterLoadError(f"v{prepared.version}'s adapter does not load: {exc}") from exc
            self.adapter = name
        if previous is not None and previous != self.adapter and hasattr(self.model, "peft_config"):
            if old_model is self.model and previous in self.model.peft_config and self.adapter is not None:
                self.model.delete_adapter(previous)  # one adapter held at a time (peft keeps the active one)
        self.version = prepared.version
        self.last_swap_s = time.perf_counter() - started

    # --- the worker -------------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not self._jobs and not self._swaps:
                    self._cond.wait()
                if self._stop:
                    swaps, self._swaps = list(self._swaps), deque()
                    for _prepared, done, failure in swaps:
                        failure.append(TimeoutError("the server stopped before the swap"))
                        done.set()
                    return
                swap = self._swaps.popleft() if self._swaps else None
                job = None if swap is not None else self._jobs.popleft()
            if swap is not None:  # swaps go first: the next answer is the new version's
                prepared, done, failure = swap
                try:
                    self._install(prepared)
                except Exception as exc:  # noqa: BLE001 - handed to the caller of install()
                    failure.append(exc)
                done.set()
                continue
            assert job is not None
            self._generate(job)

    def _generate(self, job: Generation) -> None:
        job.version, job.started = self.version, time.monotonic()
        try:
            if job.cancelled.is_set():
                job.finish_reason = "cancelled"
                return
            tokenizer = self.tokenizer
            eos = {tokenizer.eos_token_id} | set(_as_list(getattr(self.model.generation_config, "eos_token_id", None)))
            eos.discard(None)
            streamer = _Streamer(tokenizer, job, eos)
            ids = torch.tensor([job.prompt_ids], device=self.runtime.device)
            kwargs: dict[str, Any] = {"do_sample": False}
            if job.temperature > 0:
                kwargs = {"do_sample": True, "temperature": job.temperature, "top_p": job.top_p, "top_k": 0}
                if job.seed is not None:
                    torch.manual_seed(job.seed)
            with torch.inference_mode(), self.runtime.autocast, self._adapter_scope():
                self.model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=job.max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=sorted(eos),
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([_Cancelled(job)]),
                    **kwargs,
                )
            if job.cancelled.is_set():
                job.finish_reason = "cancelled"
            elif streamer.ended_on_eos:
                job.finish_reason = "stop"
            else:
                job.finish_reason = "length" if job.completion_tokens >= job.max_new_tokens else "stop"
        except Exception as exc:  # noqa: BLE001 - the request is answered with a 500; the worker goes on
            logger.exception("serve: generation failed on v%s", job.version)
            job.error = exc
        finally:
            job.finished = time.monotonic()
            job.on_done(job)

    def _adapter_scope(self) -> Any:
        import contextlib

        if self.adapter is None and hasattr(self.model, "disable_adapter"):
            return self.model.disable_adapter()  # the bare base after a rollback to no champion
        return contextlib.nullcontext()


def _name(version: str) -> str:
    return f"v{version}"


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]
