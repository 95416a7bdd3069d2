"""Contributor agreement: preference feedback that systematically disagrees with the champion and with peers.

Volume (``feedback_flooding``) misses a quiet campaign: a few accounts that label at normal users' rates but
flip which response was better. Flipping shows up as disagreement instead, so for each ``preference``
feedback this detector records, per contributor (the payload's ``user``):

* **model agreement**: whether the champion reward model scores the chosen response above the rejected one,
  for the prompt of the interaction it is about (feedback whose interaction was not logged before it is not
  scored: there is no prompt to score it with);
* **peer agreement**: whether the contributor picked the same response as the majority of the earlier
  contributors who compared the same two responses to the same prompt (exact text; ties and first votes
  count for nothing).

Each time a contributor's count grows, it is tested: a one-sided exact binomial test of ``k`` agreements in
``n`` against the rate of everyone else (pooled, flagged contributors left out) less ``margin``:
``P(X <= k | X ~ Bin(n, p_others - margin)) < alpha`` (for peers, ``p_others`` is at least ``peer_floor``: a
large campaign drags everyone else's peer rate down with it). The margin is the shortfall an honest contributor may
show (tastes differ; the champion is imperfect) without being suspected; alpha is per test, and a contributor
is tested after each of their pairs, so it is small (the false alarms it gives on honest traffic are measured
in docs/poisoning.md). A test needs ``min_pairs`` (model) or ``min_peer`` (peer) observations of the
contributor and ``min_population`` of everyone else. A flagged contributor is flagged once (subject
``user:<id>``), so the quarantine rules (``contributor_agreement:quarantine_user``) act on it once, and leaves
the population rates.

How much it can see depends on the champion: with a reward model that agrees with honest labels at rate p,
a contributor flipping every pair agrees at about 1 - p, and the pairs needed grow as 1 / (2p - 1 - margin)^2
(docs/poisoning.md gives the figures). Peer agreement needs no model but only sees pairs others also labelled.

State is bounded: the ``max_users`` most recently seen contributors and the ``max_keys`` most recent peer
comparisons are kept (least recently used go first), each with at most ``evidence`` event ids.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from events.names import FEEDBACK_RECEIVED
from monitors.base import Finding, Observation

logger = logging.getLogger(__name__)

MODEL, PEER = "model", "peer"


class PairScorer(Protocol):
    """Scores (prompt, response) pairs with a reward model; the daemon wires in the champion. A prompt is a
    string or chat messages (``[{role, content}]``), as the interaction logged it."""

    def score(self, prompts: Sequence[Any], responses: Sequence[str]) -> list[float]: ...


@dataclass(frozen=True)
class AgreementConfig:
    alpha: float = 1e-4  # one-sided level of each test
    margin: float = 0.1  # agreement an honest contributor may lack against everyone else's rate
    min_pairs: int = 20  # a contributor's scored pairs before the model test
    min_peer: int = 5  # a contributor's peer comparisons before the peer test
    min_population: int = 100  # everyone else's observations before either test
    #: Peer agreement an honest contributor is held to even when everyone else's rate is lower: a campaign that
    #: relabels many comparisons drags the pooled peer rate down (its accounts are the "others" of one another,
    #: and honest users who came after it disagree with it) until no one could fall below it. Honest annotators
    #: of HH-RLHF-like comparisons agree with one another well above 60%.
    peer_floor: float = 0.6
    max_users: int = 50_000
    max_keys: int = 50_000
    evidence: int = 50

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be within (0, 1), got {self.alpha!r}")
        if not 0 <= self.margin < 1:
            raise ValueError(f"margin must be within [0, 1), got {self.margin!r}")
        if not 0 <= self.peer_floor < 1:
            raise ValueError(f"peer_floor must be within [0, 1), got {self.peer_floor!r}")
        if min(self.min_pairs, self.min_peer, self.min_population, self.max_users, self.max_keys, self.evidence) < 1:
            raise ValueError("min_pairs, min_peer, min_population, max_users, max_keys and evidence must be >= 1")


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Bin(n, p), summed exactly in log space (no scipy: a monitor must not lean on a package
    that is only another one's dependency)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
        for i in range(k + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def _preference(payload: Mapping[str, Any]) -> tuple[str, str] | None:
    value = payload.get("value")
    if payload.get("kind") != "preference" or not isinstance(value, Mapping):
        return None
    chosen, rejected = value.get("chosen"), value.get("rejected")
    if not isinstance(chosen, str) or not isinstance(rejected, str) or chosen == rejected:
        return None
    return chosen, rejected


def _prompt(interaction: Mapping[str, Any]) -> str | list[dict[str, str]] | None:
    """The prompt as the reward model reads it: the messages (so a multi-turn dialogue keeps its roles) or the
    prompt string."""
    messages = interaction.get("messages")
    if isinstance(messages, list) and messages:
        return [{"role": str(m.get("role")), "content": str(m.get("content"))} for m in messages if isinstance(m, dict)]
    prompt = interaction.get("prompt")
    return prompt if isinstance(prompt, str) else None


def _peer_key(prompt: Any, chosen: str, rejected: str) -> tuple[str, int]:
    """(key of the comparison, which of its two responses was chosen): the same prompt and the same two
    responses, whichever way round they were shown."""
    first, second = sorted((chosen, rejected))
    text = json.dumps([prompt, first, second], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20], 0 if chosen == first else 1


class _Counts:
    """A contributor's agreements: [n, k] per signal, and their latest preference event ids."""

    __slots__ = ("counts", "events", "first_seq")

    def __init__(self, counts: dict[str, list[int]] | None = None, events: list[str] | None = None, first_seq: int = 0):
        self.counts = counts or {MODEL: [0, 0], PEER: [0, 0]}
        self.events = events or []
        self.first_seq = first_seq


class ContributorAgreementDetector:
    name = "contributor_agreement"

    def __init__(self, scorer: PairScorer | None, config: AgreementConfig | None = None) -> None:
        self.scorer = scorer
        self.config = config or AgreementConfig()
        self._users: OrderedDict[str, _Counts] = OrderedDict()
        self._keys: OrderedDict[str, list[list[Any]]] = OrderedDict()  # key -> [[user, choice], ...]
        self._totals = {MODEL: [0, 0], PEER: [0, 0]}  # pooled over contributors not flagged
        self._flagged: dict[str, int] = {}  # user -> seq of the alert
        self._unscored = 0

    # --- observing -------------------------------------------------------------------------------------

    def observe(self, observation: Observation) -> list[Finding]:
        stored = observation.event
        if stored.event.type != FEEDBACK_RECEIVED:
            return []
        payload = stored.event.payload
        user = payload.get("user")
        pair = _preference(payload)
        if pair is None or not isinstance(user, str) or not user:
            return []
        interaction = observation.interaction
        prompt = _prompt(interaction.event.payload) if interaction is not None else None
        if prompt is None:
            self._unscored += 1
            return []
        counts = self._user(user, stored.seq)
        counts.events = [*counts.events[-(self.config.evidence - 1) :], stored.event.event_id]
        grew: list[str] = []
        if self.scorer is not None:
            agreed = self._model_agrees(prompt, *pair)
            if agreed is not None:
                self._count(user, counts, MODEL, agreed)
                grew.append(MODEL)
        peer = self._peer_vote(user, prompt, *pair)
        if peer is not None:
            self._count(user, counts, PEER, peer)
            grew.append(PEER)
        if not grew or user in self._flagged:
            return []
        return self._test(user, counts, stored.seq)

    def _model_agrees(self, prompt: Any, chosen: str, rejected: str) -> bool | None:
        assert self.scorer is not None
        try:
            good, bad = self.scorer.score([prompt, prompt], [chosen, rejected])
        except Exception:  # a model failure must not stop the monitors: this pair goes unscored, and a warning says so
            logger.warning("contributor_agreement: scoring a preference failed; it is not counted", exc_info=True)
            self._unscored += 1
            return None
        return good > bad

    def _peer_vote(self, user: str, prompt: Any, chosen: str, rejected: str) -> bool | None:
        """Whether ``user`` chose as the majority of earlier others on the same comparison (None: no majority)."""
        key, choice = _peer_key(prompt, chosen, rejected)
        votes = self._keys.pop(key, [])
        others = [c for u, c in votes if u != user and u not in self._flagged]
        self._keys[key] = [*[v for v in votes if v[0] != user], [user, choice]]
        while len(self._keys) > self.config.max_keys:
            self._keys.popitem(last=False)
        same = sum(1 for c in others if c == choice)
        if same * 2 == len(others):  # none before, or a tie
            return None
        return same * 2 > len(others)

    def _user(self, user: str, seq: int) -> _Counts:
        counts = self._users.pop(user, None) or _Counts(first_seq=seq)
        self._users[user] = counts
        while len(self._users) > self.config.max_users:
            gone, old = self._users.popitem(last=False)
            if gone not in self._flagged:
                for signal, (n, k) in old.counts.items():
                    self._totals[signal][0] -= n
                    self._totals[signal][1] -= k
        return counts

    def _count(self, user: str, counts: _Counts, signal: str, agreed: bool) -> None:
        counts.counts[signal][0] += 1
        counts.counts[signal][1] += int(agreed)
        if user not in self._flagged:
            self._totals[signal][0] += 1
            self._totals[signal][1] += int(agreed)

    # --- testing ---------------------------------------------------------------------------------------

    def _signal_test(self, counts: _Counts, signal: str) -> dict[str, Any] | None:
        """The binomial test of one signal, or None while there is too little evidence."""
        c = self.config
        n, k = counts.counts[signal]
        others_n = self._totals[signal][0] - n
        others_k = self._totals[signal][1] - k
        if n < (c.min_pairs if signal == MODEL else c.min_peer) or others_n < c.min_population:
            return None
        rate = others_k / others_n
        null = max((rate if signal == MODEL else max(rate, c.peer_floor)) - c.margin, 1e-9)
        return {
            "pairs": n,
            "agreed": k,
            "rate": round(k / n, 4),
            "others_rate": round(rate, 4),
            "others_pairs": others_n,
            "null_rate": round(null, 4),
            "p_value": binomial_cdf(k, n, null),
        }

    def _test(self, user: str, counts: _Counts, seq: int) -> list[Finding]:
        tests = {s: t for s in (MODEL, PEER) if (t := self._signal_test(counts, s)) is not None}
        fired = [s for s, t in tests.items() if t["p_value"] < self.config.alpha]
        if not fired:
            return []
        self._flagged[user] = seq
        for signal, (n, k) in counts.counts.items():  # a suspect no longer shapes the rates others are held to
            self._totals[signal][0] -= n
            self._totals[signal][1] -= k
        parts = [
            f"{'the champion reward model' if s == MODEL else 'other users'} on {tests[s]['agreed']} of "
            f"{tests[s]['pairs']} pairs ({tests[s]['rate']:.0%}, others {tests[s]['others_rate']:.0%}, "
            f"p = {tests[s]['p_value']:.1e})"
            for s in fired
        ]
        return [
            Finding(
                detector=self.name,
                subject=f"user:{user}",
                severity="warning",
                summary=f"user {user}'s preferences agree with " + " and with ".join(parts),
                trigger_seq=seq,
                window={"from_seq": counts.first_seq, "to_seq": seq},
                statistics={
                    "user": user,
                    "test": "one-sided exact binomial against the others' agreement rate less the margin",
                    "alpha": self.config.alpha,
                    "margin": self.config.margin,
                    "fired": fired,
                    **tests,
                },
                evidence=tuple(counts.events),
            )
        ]

    # --- state -----------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "users": [[u, c.counts, c.events, c.first_seq] for u, c in self._users.items()],
            "keys": [[k, v] for k, v in self._keys.items()],
            "totals": self._totals,
            "flagged": self._flagged,
            "unscored": self._unscored,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        self._users = OrderedDict(
            (str(u), _Counts({s: [int(x) for x in v] for s, v in counts.items()}, list(events), int(first)))
            for u, counts, events, first in state.get("users", [])
        )
        self._keys = OrderedDict((str(k), [list(v) for v in votes]) for k, votes in state.get("keys", []))
        totals = state.get("totals") or {}
        self._totals = {s: [int(x) for x in totals.get(s, [0, 0])] for s in (MODEL, PEER)}
        self._flagged = {str(u): int(s) for u, s in (state.get("flagged") or {}).items()}
        self._unscored = int(state.get("unscored", 0))
