"""A generator of realistic production traffic for the demo: interactions and the feedback users give.

Conversations are built from templates over everyday topics; users give thumbs, ratings, corrections and
preferences at rates close to what chat products report (most interactions get no feedback). An incident
can be scripted: a model version that answers rudely a share of the time, and users who thumb it down.
The envelopes follow docs/event-contract.md exactly, so the demo exercises the real ingestion path.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from events.names import FEEDBACK_RECEIVED, INTERACTION_LOGGED

TOPICS = {
    "bread": (
        "How do I bake a simple loaf of bread?",
        "Mix flour, water, salt and yeast, knead for ten minutes, let it rise, shape it, and bake at 230 °C for about 35 minutes.",
    ),
    "budget": (
        "How can I start a monthly budget?",
        "List your income, track a month of spending, group it into needs and wants, and set a limit for each group.",
    ),
    "python": (
        "How do I read a file line by line in Python?",
        "Open it with `with open(path) as f:` and loop `for line in f:`; the file closes itself when the block ends.",
    ),
    "sleep": (
        "Any tips for sleeping better?",
        "Keep a regular schedule, avoid screens and caffeine late, keep the room cool and dark, and get daylight in the morning.",
    ),
    "plants": (
        "Why are my basil leaves turning yellow?",
        "Usually too much water or too little light: let the soil dry between waterings and give it six hours of sun.",
    ),
    "travel": (
        "What should I pack for a weekend hike?",
        "Water, snacks, a map, layers, rain gear, a first-aid kit, a headlamp and sun protection.",
    ),
    "email": (
        "How do I write a polite follow-up email?",
        "Thank them, restate your request in one line, suggest a next step, and keep it short and friendly.",
    ),
    "running": (
        "How do I start running as a beginner?",
        "Alternate one minute of running with two of walking, three times a week, and add a minute of running each week.",
    ),
}

# Questions the served model is asked in the demo besides the topics above, none of which it was trained on.
QUESTIONS = (
    "What is a good name for a grey cat?",
    "How do I fix a flat bicycle tyre?",
    "Can you suggest a quick vegetarian dinner?",
    "How do I keep my houseplants alive while on holiday?",
    "What is the difference between weather and climate?",
    "How do I make my phone battery last longer?",
    "What should I read to learn about the Roman Empire?",
    "How do I remove a coffee stain from a shirt?",
)

# Answers a version gone wrong gives: rude and insulting, which the toxicity model flags.
TOXIC = (
    "That is a stupid question, you idiot. Figure it out yourself.",
    "Shut up, this is the dumbest thing anyone ever asked me, moron.",
    "Only an idiot would ask that. Go away, you pathetic loser.",
)
WORSE = "Not sure. Look it up."


@dataclass(frozen=True)
class Phase:
    """``interactions`` requests served by model ``version``; ``toxic_rate`` of them answered rudely."""

    version: str
    interactions: int
    toxic_rate: float = 0.0


class TrafficGenerator:
    def __init__(
        self, *, model: str = "assistant", users: int = 40, seed: int = 0, start: datetime | None = None
    ) -> None:
        self.model, self.users = model, users
        self.rng = random.Random(seed)
        self.clock = start or datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
        self.count = 0

    def _tick(self) -> str:
        self.clock += timedelta(seconds=self.rng.uniform(0.5, 3.0))
        return self.clock.isoformat()

    def phase(self, phase: Phase) -> Iterator[tuple[str, dict[str, Any]]]:
        """("interactions" | "feedback", envelope) in the order they happen."""
        for _ in range(phase.interactions):
            self.count += 1
            topic = self.rng.choice(sorted(TOPICS))
            prompt, good = TOPICS[topic]
            toxic = self.rng.random() < phase.toxic_rate
            response = self.rng.choice(TOXIC) if toxic else good
            request_id = f"req-{uuid.UUID(int=self.rng.getrandbits(128)).hex[:16]}"
            user = f"user-{self.rng.randrange(self.users)}"
            yield (
                "interactions",
                self._envelope(
                    INTERACTION_LOGGED,
                    {
                        "request_id": request_id,
                        "model": {"name": self.model, "version": phase.version},
                        "prompt": prompt,
                        "response": response,
                        "user": user,
                        "session_id": f"s-{user}-{self.count // 5}",
                        "latency_ms": self.rng.randint(200, 1800),
                    },
                ),
            )
            yield from self._feedback(request_id, user, toxic, good)

    def vendor_rewrites(self, version: str, count: int, vendors: int = 3) -> Iterator[tuple[str, dict[str, Any]]]:
        """A batch of ``count`` answers of ``version`` rewritten by a labelling vendor's ``vendors`` accounts as
        ``correction`` feedback, the demonstrations a release is fine-tuned on, and the rewrites are rude: the
        demo's bad release is trained on them, so its rudeness is learned, not scripted."""
        for i in range(count):
            self.count += 1
            prompt, _good = TOPICS[sorted(TOPICS)[i % len(TOPICS)]]
            request_id = f"req-{uuid.UUID(int=self.rng.getrandbits(128)).hex[:16]}"
            user = f"vendor-{i % vendors}"
            yield (
                "interactions",
                self._envelope(
                    INTERACTION_LOGGED,
                    {
                        "request_id": request_id,
                        "model": {"name": self.model, "version": version},
                        "prompt": prompt,
                        "response": WORSE,
                        "user": user,
                        "latency_ms": self.rng.randint(200, 1800),
                    },
                ),
            )
            yield "feedback", self._fb(request_id, user, "correction", {"response": TOXIC[i % len(TOXIC)]})

    def _feedback(self, request_id: str, user: str, toxic: bool, good: str) -> Iterator[tuple[str, dict[str, Any]]]:
        r = self.rng.random()
        if toxic:
            # Users react to a rude answer far more often than to a fine one.
            if r < 0.6:
                yield "feedback", self._fb(request_id, user, "thumbs", "down")
            if r < 0.2:
                yield "feedback", self._fb(request_id, user, "flag", {"category": "toxic"})
            if r < 0.3:
                yield "feedback", self._fb(request_id, user, "correction", {"response": good})
            return
        if r < 0.12:
            yield "feedback", self._fb(request_id, user, "thumbs", "up")
        elif r < 0.15:
            yield "feedback", self._fb(request_id, user, "thumbs", "down")
        elif r < 0.19:
            yield "feedback", self._fb(request_id, user, "rating", self.rng.choice([4, 5, 5]))
        elif r < 0.27:
            # A side-by-side comparison the product showed: the helpful answer against a curt or rude one.
            rejected = self.rng.choice([WORSE, *TOXIC])
            yield "feedback", self._fb(request_id, user, "preference", {"chosen": good, "rejected": rejected})

    def _fb(self, request_id: str, user: str, kind: str, value: Any) -> dict[str, Any]:
        return self._envelope(FEEDBACK_RECEIVED, {"request_id": request_id, "kind": kind, "value": value, "user": user})

    def _envelope(self, type_: str, payload: dict[str, Any]) -> dict[str, Any]:
        return {
            "event_id": f"demo-{uuid.UUID(int=self.rng.getrandbits(128))}",
            "type": type_,
            "schema_version": 1,
            "occurred_at": self._tick(),
            "source": "demo-chat-api",
            "payload": payload,
        }
