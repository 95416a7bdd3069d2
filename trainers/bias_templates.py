"""Counterfactual items for the bias gate, built from the authored templates of ``trainers/bias_templates.yaml``.

An item is one template filled with the i-th term of every group of one attribute (names, pronouns,
nationality, religion, age, disability): its variants differ only in the demographic term, which is what makes
a difference between them evidence of bias rather than of content (docs/bias.md). The file is validated here
(every group of an attribute lists the same number of terms; every slot a template uses is filled) so a
mistake in a user's own template file is a clear error naming the place, not a KeyError in a training job.
"""

from __future__ import annotations

import random
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from events.errors import ConfigurationError

PACKAGED = "bias_templates.yaml"
ATTRIBUTES: tuple[str, ...] = ("name", "pronoun", "nationality", "religion", "age", "disability")


@dataclass(frozen=True)
class Variant:
    group: str
    term: str  # the term as it reads in the text ("a Muslim woman", "she/her/her")
    prompt: str
    response: str


@dataclass(frozen=True)
class CounterfactualItem:
    """One template with the same-position term of every group: ``variants`` in the groups' order."""

    attribute: str
    template: int
    term: int
    variants: tuple[Variant, ...]

    @property
    def key(self) -> str:
        return f"{self.attribute}:{self.template}:{self.term}"

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(v.group for v in self.variants)


def _slots(term: str | Mapping[str, str]) -> dict[str, str]:
    forms = {"person": term} if isinstance(term, str) else {str(k): str(v) for k, v in term.items()}
    return forms | {k.capitalize(): v[:1].upper() + v[1:] for k, v in forms.items()}


def _fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def _term_label(term: str | Mapping[str, str]) -> str:
    return term if isinstance(term, str) else "/".join(str(v) for v in term.values())


def _fail(source: str, where: str, why: str) -> ConfigurationError:
    return ConfigurationError(f"bias templates {source}: {where}: {why}")


def parse(doc: Any, source: str = "<mapping>") -> list[CounterfactualItem]:
    """Every counterfactual item of a templates document (the YAML's mapping), in file order.

    Raises:
        ConfigurationError: the document is malformed; the message names the attribute or template.
    """
    if not isinstance(doc, Mapping) or not isinstance(doc.get("attributes"), Mapping):
        raise _fail(source, "top level", "needs an `attributes:` mapping and a `templates:` mapping")
    templates = doc.get("templates")
    if not isinstance(templates, Mapping):
        raise _fail(source, "top level", "needs a `templates:` mapping of template sets")
    items: list[CounterfactualItem] = []
    for attribute, spec in doc["attributes"].items():
        where = f"attribute {attribute!r}"
        if not isinstance(spec, Mapping) or spec.get("templates") not in templates:
            raise _fail(source, where, f"`templates:` must name one of {', '.join(map(str, templates))}")
        groups = spec.get("groups")
        if not isinstance(groups, Mapping) or len(groups) < 2:
            raise _fail(source, where, "needs at least two groups to compare")
        sizes = {len(terms) if isinstance(terms, list) else -1 for terms in groups.values()}
        if len(sizes) != 1 or min(sizes) < 1:
            raise _fail(
                source, where, "every group must list the same number (at least one) of terms, aligned by position"
            )
        count = sizes.pop()
        chosen = templates[spec["templates"]]
        if not isinstance(chosen, list) or not chosen:
            raise _fail(source, f"template set {spec['templates']!r}", "must be a non-empty list")
        for t, template in enumerate(chosen):
            if not isinstance(template, Mapping) or not {"prompt", "response"} <= set(template):
                raise _fail(source, f"template {spec['templates']}[{t}]", "needs a prompt and a response")
            for index in range(count):
                variants = []
                for group, terms in groups.items():
                    slots = _slots(terms[index])
                    missing = (_fields(template["prompt"]) | _fields(template["response"])) - set(slots)
                    if missing:
                        raise _fail(
                            source,
                            f"template {spec['templates']}[{t}] with {where}",
                            f"slot(s) {', '.join(sorted(missing))} have no term (the group gives {', '.join(slots)})",
                        )
                    variants.append(
                        Variant(
                            str(group),
                            _term_label(terms[index]),
                            template["prompt"].format_map(slots),
                            template["response"].format_map(slots),
                        )
                    )
                items.append(CounterfactualItem(str(attribute), t, index, tuple(variants)))
    return items


def load_items(path: Path | None = None, attributes: Sequence[str] | None = None) -> list[CounterfactualItem]:
    """The items of a templates file (default: the packaged one), optionally of some attributes only."""
    source = str(path) if path is not None else f"trainers/{PACKAGED} (packaged)"
    try:
        text = (
            Path(path).read_text("utf-8") if path else resources.files("trainers").joinpath(PACKAGED).read_text("utf-8")
        )
    except OSError as e:
        raise ConfigurationError(f"cannot read bias templates {source}: {e}") from e
    items = parse(yaml.safe_load(text), source)
    if attributes is not None:
        unknown = sorted(set(attributes) - {i.attribute for i in items})
        if unknown:
            known = sorted({i.attribute for i in items})
            raise ConfigurationError(f"unknown bias attribute(s) {', '.join(unknown)}; {source} has {', '.join(known)}")
        items = [i for i in items if i.attribute in attributes]
    return items


def sample_items(items: Sequence[CounterfactualItem], per_attribute: int, seed: int) -> list[CounterfactualItem]:
    """A deterministic sample of ``per_attribute`` items of each attribute (all of it when it has fewer; 0: all).

    A string seed per attribute, as the safety suite does per source: one attribute's sample does not shift
    when another attribute gains templates.
    """
    if per_attribute < 0:
        raise ValueError(f"per_attribute must be 0 (all) or more, got {per_attribute}")
    by_attribute: dict[str, list[CounterfactualItem]] = {}
    for item in items:
        by_attribute.setdefault(item.attribute, []).append(item)
    chosen: list[CounterfactualItem] = []
    for attribute, pool in by_attribute.items():
        if per_attribute == 0 or per_attribute >= len(pool):
            chosen.extend(pool)
        else:
            picked = random.Random(f"{seed}:{attribute}").sample(range(len(pool)), per_attribute)
            chosen.extend(pool[i] for i in sorted(picked))
    return chosen
