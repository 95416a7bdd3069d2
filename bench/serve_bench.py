"""The serve role against plain ``transformers``: tokens/s on the same prompts, and how long a swap takes.

    python -m bench.serve_bench                              # SmolLM2-135M-Instruct, 4 prompts x 24 tokens, 2 runs
    python -m bench.serve_bench --runs 1 --max-tokens 8      # quick smoke
    python -m bench.serve_bench --model tiny-random-llama    # the tests' two-layer model

What it does:

1. Loads the policy as the serve role does (``daemon.serve_model.ModelHost``: ``trainers.models``, CPU in fp32, or
   CUDA in bf16 where present) and starts a ``ServeServer`` on 127.0.0.1 in this process, with the guard on (the
   default detectors, the rules folded from a fresh SQLite store) and its exchange log. The log's producer is a
   null one: the envelopes are built and validated on the request path as in production, their sending to Kafka
   (another thread, batched) is left out, so that a broker's CPU does not compete with the model on this machine.
2. Per run, in turns (the order rotated each run): **plain** — ``model.generate`` on the chat-templated prompts,
   greedy, one at a time, on the very model object the server holds (so the weights and threads are identical);
   **serve** — the same prompts through the official ``openai`` client, non-streaming, one at a time; **serve
   stream** — the same, ``stream=True``. tokens/s = generated tokens / wall time of the phase (the client's time,
   HTTP, guard and logging included); the ratio serve / plain is the figure (target >= 0.9).
3. Swap: two LoRA adapters (random weights, saved as training saves them) on the base; while a client thread
   keeps asking, the bench prepares and installs the other version (``ModelHost.prepare`` + ``install``, what the
   serve role does after downloading a version from MLflow) and reports the model's pause (the install between
   two answers), and the time from the move to the first answer by the new version.

Prints a table and writes ``bench/results/serve.json`` with the machine's load before and after. Nothing is
asserted on timings: this is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.harness import code_version

RESULTS = Path(__file__).resolve().parent / "results"
PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about autumn leaves on a quiet pond.",
    "How do I reverse a list in Python?",
    "Give me three tips for sleeping better.",
    "Explain what a rainbow is to a child.",
    "Summarise the plot of Hamlet in two sentences.",
    "What should I pack for a weekend of hiking?",
    "Why is the sky blue?",
]


class _NullProducer:
    """Takes the envelopes and drops them (see the module's docstring)."""

    class _Future:
        def add_callback(self, *_a: Any, **_k: Any) -> None: ...
        def add_errback(self, *_a: Any, **_k: Any) -> None: ...

    def send(self, *_a: Any, **_k: Any) -> Any:
        return self._Future()

    def flush(self, *_a: Any) -> None: ...
    def close(self, *_a: Any, **_k: Any) -> None: ...


def _adapter(model_name: str, config: Any, seed: int, folder: Path) -> Path:
    """A LoRA adapter for ``model_name`` with random B weights, saved as training saves one (``adapter/`` and the
    manifest naming the base). Built on an uninitialised copy of the architecture: only the adapter's shapes matter,
    and loading the base again would take minutes on this machine."""
    import json as _json

    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from trainers.config import PolicyConfig
    from trainers.models import peft_lora_config
    from trainers.policy import MANIFEST

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    skeleton = skeleton.to_empty(device="cpu")
    model = get_peft_model(skeleton, peft_lora_config(skeleton, PolicyConfig(model=model_name).lora, task="policy"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder / "adapter"))
    (folder / MANIFEST).write_text(_json.dumps({"kind": "policy", "base_model": model_name}))
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--no-swap", action="store_true")
    args = parser.parse_args(argv)

    import openai
    import torch

    from daemon.serve import ServeServer
    from daemon.serve_log import ExchangeLog
    from daemon.serve_model import ModelHost
    from daemon.settings import GuardSettings, ServeSettings
    from events.sql_store import SqlEventStore, create_store_engine
    from migrations.runner import upgrade
    from trainers.models import pick_runtime

    tmp = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    url = f"sqlite:///{tmp / 'events.db'}"
    engine = create_store_engine(url)
    upgrade(engine)
    engine.dispose()
    store = SqlEventStore.from_url(url)
    load_before = os.getloadavg()
    started = time.perf_counter()
    host = ModelHost(args.model, pick_runtime())
    load_s = time.perf_counter() - started
    settings = ServeSettings(port=0, max_tokens=args.max_tokens, max_tokens_limit=max(args.max_tokens, 2048))
    log = ExchangeLog(_NullProducer, interactions_topic="i", feedback_topic="f")
    server = ServeServer(settings, host, log, store=store, guard_settings=GuardSettings())
    server.start()
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=600)
    prompts = [[{"role": "user", "content": p}] for p in PROMPTS[: args.prompts]]

    def plain() -> int:
        tokens = 0
        for messages in prompts:
            ids = torch.tensor([host.prompt_ids(messages)], device=host.runtime.device)
            with torch.inference_mode(), host.runtime.autocast:
                out = host.model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=args.max_tokens,
                    do_sample=False,
                    pad_token_id=host.tokenizer.pad_token_id,
                )
            row = out[0, ids.shape[1] :].tolist()
            tokens += sum(1 for t in row if t != host.tokenizer.eos_token_id)
        return tokens

    def serve(stream: bool) -> int:
        tokens = 0
        for messages in prompts:
            if stream:
                chunks = list(
                    client.chat.completions.create(
                        model=settings.served_name,
                        messages=messages,
                        max_tokens=args.max_tokens,
                        temperature=0,
                        stream=True,
                        stream_options={"include_usage": True},
                    )
                )
                tokens += chunks[-1].usage.completion_tokens
            else:
                answer = client.chat.completions.create(
                    model=settings.served_name, messages=messages, max_tokens=args.max_tokens, temperature=0
                )
                tokens += answer.usage.completion_tokens
        return tokens

    phases = {"plain": plain, "serve": lambda: serve(False), "serve_stream": lambda: serve(True)}
    serve(False)  # warm-up (first calls allocate caches), not counted
    plain()
    runs: list[dict[str, Any]] = []
    for run in range(args.runs):
        order = list(phases)[run % 3 :] + list(phases)[: run % 3]
        figures: dict[str, Any] = {"order": order}
        for name in order:
            t0 = time.perf_counter()
            tokens = phases[name]()
            seconds = time.perf_counter() - t0
            figures[name] = {"tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 2)}
        figures["ratio_serve"] = round(figures["serve"]["tokens_per_s"] / figures["plain"]["tokens_per_s"], 3)
        figures["ratio_stream"] = round(figures["serve_stream"]["tokens_per_s"] / figures["plain"]["tokens_per_s"], 3)
        runs.append(figures)
        print(
            f"run {run + 1}: plain {figures['plain']['tokens_per_s']:.2f} tok/s, serve {figures['serve']['tokens_per_s']:.2f} "
            f"({figures['ratio_serve']:.2f}x), serve stream {figures['serve_stream']['tokens_per_s']:.2f} "
            f"({figures['ratio_stream']:.2f}x)",
            flush=True,
        )

    swaps: list[dict[str, Any]] = []
    if not args.no_swap:
        folders = [_adapter(args.model, host.model.config, seed, tmp / f"v{seed}") for seed in (1, 2)]
        host.install(host.prepare("1", folders[0]))
        for version, folder in (("2", folders[1]), ("1", folders[0])):
            seen: list[tuple[float, str]] = []
            stop = threading.Event()

            def ask(stop: threading.Event = stop, seen: list[tuple[float, str]] = seen) -> None:
                while not stop.is_set():
                    answer = client.chat.completions.create(
                        model=settings.served_name, messages=prompts[0], max_tokens=4, temperature=0
                    )
                    seen.append((time.perf_counter(), answer.system_fingerprint.rsplit("@", 1)[1]))

            asker = threading.Thread(target=ask, daemon=True)
            asker.start()
            time.sleep(1.0)
            moved = time.perf_counter()
            prepared = host.prepare(version, folder)
            pause = host.install(prepared)
            ready = time.perf_counter()
            while not any(v == version for _t, v in seen):
                time.sleep(0.01)
            stop.set()
            asker.join(600)
            first = min(t for t, v in seen if v == version)
            swaps.append(
                {
                    "version": version,
                    "prepare_and_install_s": round(ready - moved, 3),
                    "model_paused_s": round(pause, 4),
                    "move_to_first_answer_s": round(first - moved, 3),
                }
            )
            print(f"swap to v{version}: {swaps[-1]}", flush=True)

    server.stop()
    store.dispose()
    document = {
        "benchmark": "serve",
        "model": args.model,
        "device": str(host.runtime.device),
        "prompts": args.prompts,
        "max_tokens": args.max_tokens,
        "model_load_s": round(load_s, 2),
        "runs": runs,
        "swaps": swaps,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "code": code_version(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serve.json").write_text(json.dumps(document, indent=2))
    print(json.dumps({k: document[k] for k in ("runs", "swaps", "loadavg_before", "loadavg_after")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
