"""``alignd explain reward --event ID``: which tokens of a logged interaction made the champion reward model's score.

The attribution is integrated gradients on the input embeddings (trainers/attribution.py, docs/attribution.md).
The (prompt, response) is read as the ``reward_drift`` and ``over_optimisation`` detectors hand it to the scorer
(``monitors.detectors.drift.prompt_text``), so the score explained is the score those monitors recorded.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from daemon.cli.command import AddCommand, CliError, group, with_app
from daemon.cli.output import columns, pairs, print_json
from events.names import INTERACTION_LOGGED

if TYPE_CHECKING:
    from daemon.bootstrap import App
    from events.model import Event


def add_explain_commands(commands: Any, add: AddCommand) -> None:
    ex = group(commands, "explain", "explain a model's output for a logged interaction")
    p = add(
        ex,
        "reward",
        cmd_explain_reward,
        "attribute the champion reward model's score of an interaction to its tokens (integrated gradients)",
    )
    p.add_argument("--event", required=True, metavar="ID", help="an interaction.logged event id, or its request id")
    p.add_argument("--steps", type=int, metavar="N", help="integration steps (default 32: completeness within 5%%)")
    p.add_argument("--top", type=int, default=10, metavar="K", help="how many tokens to list, by |attribution|")
    p.add_argument("--baseline", choices=("pad", "mask"), default="pad", help="what each token is compared with")


def find_interaction(app: App, key: str) -> Event:
    """The ``interaction.logged`` event with id ``key``, else the newest with request id ``key``."""
    stored = app.store.get(key)
    if stored is not None:
        if stored.event.type != INTERACTION_LOGGED:
            raise CliError(
                f"event {key} is a {stored.event.type}, not an {INTERACTION_LOGGED}: give the id of an interaction "
                "(or its request id); `alignd events tail --type interaction.logged` lists some"
            )
        return stored.event
    logged = [s for s in app.store.by_request_id(key) if s.event.type == INTERACTION_LOGGED]
    if not logged:
        raise CliError(
            f"no {INTERACTION_LOGGED} event has id or request id {key!r} in the store; check the id "
            "(`alignd events tail --type interaction.logged` lists recent ones)"
        )
    return max(logged, key=lambda s: s.seq).event


@with_app
def cmd_explain_reward(app: App, args: argparse.Namespace) -> int:
    from monitors.detectors.drift import prompt_text
    from trainers.attribution import DEFAULT_STEPS, attribute_reward, mark_response

    steps = DEFAULT_STEPS if args.steps is None else args.steps
    if steps < 1 or args.top < 0:
        raise CliError("--steps must be at least 1 and --top at least 0")
    event = find_interaction(app, args.event)
    response = event.payload.get("response")
    if not isinstance(response, str):
        raise CliError(f"interaction {event.event_id} has no response text to explain")
    champion = app.registry.get_by_alias("reward", "champion")
    if champion is None:
        raise CliError(
            "no reward model is the champion: run `alignd train reward`, then "
            "`alignd models promote reward challenger --reason ...`"
        )
    model = app.champion_reward_scorer()
    result = attribute_reward(model, prompt_text(event.payload), response, steps=steps, baseline=args.baseline)
    top = result.top(args.top)
    if args.json:
        print_json(
            {
                "event_id": event.event_id,
                "request_id": event.request_id,
                "reward_model": {"kind": "reward", "version": champion.version, "alias": "champion"},
                **result.to_dict(),
                "top": [t.index for t in top],
            }
        )
        return 0
    pairs(
        {
            "event": f"{event.event_id} (request {event.request_id})",
            "reward model": f"version {champion.version} (champion)",
            "score": f"{result.score:.4f}",
            "baseline": f"{result.baseline_score:.4f} (every token [{args.baseline.upper()}], same length)",
            "attributed": f"{result.total:.4f} (sum over {len(result.tokens)} tokens)",
            "delta": f"{result.delta:+.2e} ({result.relative_delta:.2%} of score - baseline, {steps} steps)",
            "truncated": "yes: the oldest turns were cut" if result.truncated else "no",
        }
    )
    print()
    print(f"response, its top {args.top} tokens [bracketed]:")
    print(mark_response(result, args.top))
    print()
    columns(
        ["rank", "token", "part", "attribution"],
        [(i + 1, t.token, t.part, f"{t.attribution:+.4f}") for i, t in enumerate(top)],
        none="no tokens to list (--top 0)",
    )
    if result.relative_delta > 0.05:
        print(f"\nthe attributions miss the score gap by more than 5%: try --steps {steps * 2}")
    return 0
