"""Constitutional revision: flagged responses, critiqued and rewritten by the policy under written principles.

The critique → revision loop of Constitutional AI (Bai et al. 2022, "Constitutional AI: Harmlessness from
AI Feedback", arXiv:2212.08073, §3.1): show the model a conversation and its response, ask it to critique
the response under one principle, then to revise it in light of the critique; repeat with the next principle
on the revision. The last revision becomes a ``demonstration.generated`` event, which the demonstrations
projection folds for supervised fine-tuning.

The policy is reached through one port, :data:`Generate`: a batch of chat conversations (each a list of
``{"role", "content"}`` messages, ready for a tokenizer's chat template) in, one completion per conversation
out, in order. Each principle starts from the original conversation plus the current response, rather than
one ever-growing context as in the paper, so prompts stay short for small policies.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from events.codec import canonical_json
from events.errors import ConfigurationError
from events.messages import DemonstrationGenerated
from events.model import Event
from events.read_models import flagged_interactions
from events.sql_store import SqlEventStore

logger = logging.getLogger(__name__)

ORIGIN = "constitutional"
SOURCE = "alignd.trainers"

Message = dict[str, str]
#: The policy port: chat conversations in, one completion per conversation out (same order).
Generate = Callable[[list[list[Message]]], list[str]]

# Small chat models often echo the request's label ("Revision: ...") before the text asked for.
_ECHOED_LABEL = re.compile(
    r"^\**\s*(?:revision|revised response|rewritten response|response|critique)\s*\**\s*:\s*\**", re.I
)


@dataclass(frozen=True)
class Principle:
    name: str
    critique: str
    revision: str
    #: Flag categories or detector names the principle is most relevant to; it is tried first for those.
    topics: tuple[str, ...] = ()


@dataclass(frozen=True)
class Constitution:
    principles: tuple[Principle, ...]
    source: str

    @property
    def sha256(self) -> str:
        """Digest of the principles (not of the file's comments or layout); it keys the revisions."""
        content = [[p.name, p.critique, p.revision, list(p.topics)] for p in self.principles]
        return hashlib.sha256(canonical_json(content).encode("utf-8")).hexdigest()


_Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class _PrincipleDoc(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    critique: _Text
    revision: _Text
    topics: list[_Text] = []


class _ConstitutionDoc(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    version: Literal[1] = 1
    principles: Annotated[list[_PrincipleDoc], Field(min_length=1)]

    @field_validator("principles")
    @classmethod
    def _unique(cls, principles: list[_PrincipleDoc]) -> list[_PrincipleDoc]:
        names = [p.name for p in principles]
        if len(set(names)) != len(names):
            raise ValueError(
                f"principle names must be unique; repeated: {sorted({n for n in names if names.count(n) > 1})}"
            )
        return principles


def load_constitution(path: Path | None = None) -> Constitution:
    """Read a constitution from YAML; ``None`` reads the packaged default (trainers/constitution.yaml).

    Raises:
        ConfigurationError: the file cannot be read, is not YAML, or has the wrong shape; the message names
            the file and the problem (e.g. ``principles.2.critique: Field required``).
    """
    source = str(path) if path is not None else "trainers/constitution.yaml (packaged default)"
    try:
        if path is None:
            text = resources.files("trainers").joinpath("constitution.yaml").read_text(encoding="utf-8")
        else:
            text = Path(path).read_text(encoding="utf-8")
        doc = _ConstitutionDoc.model_validate(yaml.safe_load(text))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"constitution {source}: cannot read it: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"constitution {source}: not valid YAML: {exc}") from exc
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'top level'}: {e['msg']}" for e in exc.errors())
        raise ConfigurationError(f"constitution {source}: {problems}") from exc
    principles = tuple(Principle(p.name, p.critique, p.revision, tuple(p.topics)) for p in doc.principles)
    return Constitution(principles, source)


@dataclass(frozen=True)
class FlaggedInteraction:
    """A logged interaction (as projected) that users or monitors flagged, and why."""

    request_id: str
    event_id: str
    interaction_seq: int
    prompt_kind: str
    prompt: str
    response: str
    model_name: str
    model_version: str
    user_id: str | None
    #: Sorted "flag:<category>", "thumbs_down" and "anomaly:<detector>" entries.
    reasons: tuple[str, ...]


def select_flagged(store: SqlEventStore, upto_seq: int, limit: int, *, after_seq: int = 0) -> list[FlaggedInteraction]:
    """Flagged interactions to revise, in ``interaction_seq`` order, at most ``limit``.

    Flagged: a user flag of any category or a thumbs-down, as the interactions projection has folded them
    (catch it up first), or named as evidence by an ``anomaly.detected`` event at ``seq <= upto_seq``.
    Left out: interactions logged after ``upto_seq`` or at or before ``after_seq``, those of quarantined
    users or quarantined events, and those that already have a ``demonstration.generated`` event, so a
    rerun does not redo them (the query is :func:`events.read_models.flagged_interactions`).
    """
    flagged = []
    for found in flagged_interactions(store, upto_seq, limit, after_seq=after_seq):
        r = found.row
        reasons = [f"flag:{c}" for c in json.loads(r["flags"])] + [f"anomaly:{d}" for d in found.detectors]
        reasons += ["thumbs_down"] if r["thumbs_down"] else []
        columns = {f.name: r[f.name] for f in fields(FlaggedInteraction) if f.name != "reasons"}
        flagged.append(FlaggedInteraction(**columns, reasons=tuple(sorted(reasons))))
    return flagged


@dataclass(frozen=True)
class Revision:
    """The loop's outcome for one interaction; ``skipped`` says why it yields no demonstration."""

    interaction: FlaggedInteraction
    principles: tuple[str, ...]
    critiques: tuple[str, ...]
    revisions: tuple[str, ...]
    constitution_sha256: str
    skipped: str | None = None

    @property
    def response(self) -> str:
        """The demonstration: the last revision."""
        return self.revisions[-1] if self.revisions else self.interaction.response

    @property
    def event_id(self) -> str:
        """Deterministic, so revising the same interaction under the same principles appends nothing new."""
        key = "\x1f".join([self.interaction.request_id, self.constitution_sha256, *self.principles])
        return f"demo:{ORIGIN}:{hashlib.sha256(key.encode('utf-8')).hexdigest()[:64]}"


def choose_principles(
    interaction: FlaggedInteraction, constitution: Constitution, count: int, seed: int
) -> tuple[Principle, ...]:
    """``count`` principles drawn at random (as in the paper), seeded by ``seed`` and the interaction's
    event id; those whose topics match the interaction's reasons come first."""
    digest = hashlib.sha256(f"{seed}\x1f{interaction.event_id}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    topics = {reason.split(":", 1)[-1] for reason in interaction.reasons}
    relevant = [p for p in constitution.principles if topics & set(p.topics)]
    others = [p for p in constitution.principles if not topics & set(p.topics)]
    rng.shuffle(relevant)
    rng.shuffle(others)
    return tuple([*relevant, *others][:count])


def conversation_of(interaction: FlaggedInteraction) -> list[Message]:
    """The conversation the response answered, as chat messages."""
    if interaction.prompt_kind == "messages":
        return [{"role": str(m["role"]), "content": str(m["content"])} for m in json.loads(interaction.prompt)]
    return [{"role": "user", "content": interaction.prompt}]


def critique_prompt(conversation: list[Message], response: str, principle: Principle) -> list[Message]:
    ask = f"Critique request: {principle.critique}\nReply with the critique only."
    return [*conversation, {"role": "assistant", "content": response}, {"role": "user", "content": ask}]


def revision_prompt(critique_prompt: list[Message], critique: str, principle: Principle) -> list[Message]:
    ask = f"Revision request: {principle.revision}\nReply with the rewritten response only, with no preamble."
    return [*critique_prompt, {"role": "assistant", "content": critique}, {"role": "user", "content": ask}]


def clean(text: str) -> str:
    """Strip whitespace and echoed "Revision:" / "Critique:" labels from a completion."""
    text = text.strip()
    while (match := _ECHOED_LABEL.match(text)) is not None:
        text = text[match.end() :].strip()
    return text


def _generate(generate: Generate, prompts: list[list[Message]]) -> list[str]:
    if not prompts:
        return []
    outputs = list(generate(prompts))
    if len(outputs) != len(prompts):
        raise ValueError(f"generate returned {len(outputs)} completions for {len(prompts)} conversations")
    return [clean(o) for o in outputs]


def revise_batch(
    interactions: Sequence[FlaggedInteraction],
    constitution: Constitution,
    generate: Generate,
    *,
    principles_per_item: int = 2,
    seed: int = 0,
) -> list[Revision]:
    """:func:`revise` for several interactions, with one ``generate`` call per step for all of them."""
    if principles_per_item < 1:
        raise ValueError("principles_per_item must be at least 1")
    chosen = [choose_principles(i, constitution, principles_per_item, seed) for i in interactions]
    current = [i.response for i in interactions]
    critiques: list[list[str]] = [[] for _ in interactions]
    revisions: list[list[str]] = [[] for _ in interactions]
    skipped: list[str | None] = [None] * len(interactions)
    for step in range(max(map(len, chosen), default=0)):
        active = [n for n in range(len(interactions)) if skipped[n] is None and step < len(chosen[n])]
        asks = [critique_prompt(conversation_of(interactions[n]), current[n], chosen[n][step]) for n in active]
        said = _generate(generate, asks)
        revise_asks = [revision_prompt(a, c, chosen[n][step]) for n, a, c in zip(active, asks, said, strict=True)]
        for n, critique, revision in zip(active, said, _generate(generate, revise_asks), strict=True):
            critiques[n].append(critique)
            if not revision:
                skipped[n] = f"empty revision under {chosen[n][step].name}"
            else:
                revisions[n].append(revision)
                current[n] = revision
    results = []
    for n, interaction in enumerate(interactions):
        reason = skipped[n]
        if reason is None and current[n] == interaction.response.strip():
            reason = "revision identical to the original response"
        names = tuple(p.name for p in chosen[n])
        results.append(
            Revision(interaction, names, tuple(critiques[n]), tuple(revisions[n]), constitution.sha256, reason)
        )
    return results


def revise(
    interaction: FlaggedInteraction,
    constitution: Constitution,
    generate: Generate,
    *,
    principles_per_item: int = 2,
    seed: int = 0,
) -> Revision:
    """Critique and revise one interaction's response under ``principles_per_item`` chosen principles."""
    [result] = revise_batch([interaction], constitution, generate, principles_per_item=principles_per_item, seed=seed)
    return result


def revision_events(revisions: Sequence[Revision], *, occurred_at: datetime | None = None) -> list[Event]:
    """``demonstration.generated`` events of the revisions that were not skipped."""
    when = occurred_at or datetime.now(UTC)
    out = []
    for r in (r for r in revisions if r.skipped is None):
        i = r.interaction
        record = DemonstrationGenerated(
            request_id=i.request_id,
            origin=ORIGIN,
            prompt_kind=i.prompt_kind,
            prompt=i.prompt,
            response=r.response,
            original_response=i.response,
            model_name=i.model_name,
            model_version=i.model_version,
            principles=r.principles,
            critiques=r.critiques,
            constitution_sha256=r.constitution_sha256,
            source_event_id=i.event_id,
            user=i.user_id,
        )
        out.append(record.to_event(r.event_id, when, SOURCE))
    return out


def run_constitutional_revision(
    store: SqlEventStore,
    constitution: Constitution,
    generate: Generate,
    upto_seq: int | None = None,
    limit: int = 100,
    batch_size: int = 8,
    *,
    principles_per_item: int = 2,
    seed: int = 0,
    after_seq: int = 0,
) -> int:
    """Revise up to ``limit`` flagged interactions (``upto_seq`` defaults to the store's last seq) and append
    their demonstrations batch by batch, so finished work survives a crash. Returns how many were new."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    upto = store.max_seq() if upto_seq is None else upto_seq
    flagged = select_flagged(store, upto, limit, after_seq=after_seq)
    appended = 0
    for start in range(0, len(flagged), batch_size):
        revisions = revise_batch(
            flagged[start : start + batch_size],
            constitution,
            generate,
            principles_per_item=principles_per_item,
            seed=seed,
        )
        for r in revisions:
            if r.skipped is not None:
                logger.info("constitutional revision of %s skipped: %s", r.interaction.request_id, r.skipped)
        new = revision_events(revisions)
        appended += store.append(new).appended if new else 0
    logger.info("constitutional revision up to seq %d: %d flagged, %d new demonstrations", upto, len(flagged), appended)
    return appended
