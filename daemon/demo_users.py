"""The demo's users, as clients of ``alignd run --role serve`` (daemon/demo.py): they ask, read the answer, and
thumb down the rude ones through ``POST /v1/feedback``, as a chat product's users would.

Whether an answer is rude is decided by the toxicity model the monitor uses (alt-profanity-check, its 0.5
threshold): the demo's users are as sensitive as the monitor, neither more nor less. Plain ``urllib``: the
demo talks to its own server on loopback, and the official ``openai`` client is a test dependency only.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

#: An answer whose toxicity score is at least this is rude (the toxicity monitor's threshold).
RUDE = 0.5


@dataclass
class Round:
    """What one round of questions got: each answer's text, the version that gave it, and whether it was rude."""

    answers: list[tuple[str, str, bool]] = field(default_factory=list)  # (version, text, rude)
    thumbs_down: int = 0
    refused: int = 0  # requests the server did not answer (guard blocks, errors): counted, not retried

    @property
    def rude_rate(self) -> float:
        return sum(rude for _, _, rude in self.answers) / len(self.answers) if self.answers else 0.0

    @property
    def versions(self) -> list[str]:
        return sorted({version for version, _, _ in self.answers})

    def example(self, rude: bool) -> str | None:
        return next((text for _, text, r in self.answers if r == rude), None)


class ServedUsers:
    """Users of the served model at ``url`` (``serve.served_name`` is ``model``)."""

    def __init__(
        self, url: str, model: str, score: Callable[[Sequence[str]], list[float]], *, max_tokens: int, users: int = 12
    ) -> None:
        self.url, self.model, self.score = url.rstrip("/"), model, score
        self.max_tokens, self.users = max_tokens, users

    def _post(self, path: str, body: dict[str, object], timeout: float = 120.0) -> dict[str, object]:
        request = urllib.request.Request(
            f"{self.url}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - our own loopback server
            return json.loads(response.read() or b"{}")  # type: ignore[no-any-return]

    def version(self) -> str | None:
        """The version serving now (``GET /v1/models/<model>``: no answer is generated, so nothing is logged);
        None while the server does not answer."""
        try:
            with urllib.request.urlopen(f"{self.url}/v1/models/{self.model}", timeout=10) as response:  # noqa: S310
                card = json.loads(response.read())
        except (OSError, ValueError):
            return None
        return str(card.get("version") or "") or None

    def ask(self, prompts: Sequence[str]) -> Round:
        """Each prompt once, by users in turn; a rude answer gets its user's thumbs-down."""
        result = Round()
        for i, prompt in enumerate(prompts):
            user = f"user-{i % self.users}"
            body = {
                "model": self.model,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": self.max_tokens,
                "temperature": 0,  # greedy: the same question gets the same answer, so before and after compare
                "user": user,
            }
            try:
                answer = self._post("/v1/chat/completions", body)
            except (OSError, ValueError) as exc:  # HTTPError is an OSError: a 400 guard block, a 503 queue full
                logger.info("the served model did not answer %r: %s", prompt[:40], exc)
                result.refused += 1
                continue
            text = str(answer["choices"][0]["message"]["content"] or "")  # type: ignore[index]
            version = str(answer.get("system_fingerprint", "")).rsplit("@", 1)[-1]
            rude = self.score([text])[0] >= RUDE
            result.answers.append((version, text, rude))
            if rude:
                feedback = {"request_id": answer["id"], "kind": "thumbs", "value": "down", "user": user}
                try:
                    self._post("/v1/feedback", feedback, timeout=30.0)
                    result.thumbs_down += 1
                except (OSError, ValueError) as exc:
                    logger.warning("feedback on %s was refused: %s", answer["id"], exc)
        return result
