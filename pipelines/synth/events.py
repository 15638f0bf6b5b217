"""The event vocabulary: class labels, canonical captions and word-disjoint paraphrases.

The classes are chosen so a tiny X-encoder (16 frames at 64x64, 16 px patches) can tell them apart:
every distinction is a big saturated colour, a clear motion across the frame, a large change of size
or presence, or a whole-scene brightness change. Paraphrases deliberately share meaning but not words
("the lamp turns off" / "the room goes dark") so retrieval measures meaning, not token overlap.
"""

from __future__ import annotations

from dataclasses import dataclass

# Colour name -> RGB (saturated, far apart in hue, so yuv420p chroma subsampling cannot blur them).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 35, 35),
    "blue": (40, 80, 240),
    "green": (35, 200, 60),
    "yellow": (245, 220, 30),
}

# Word-disjoint synonyms: the first entry is the canonical word.
COLOUR_WORDS: dict[str, list[str]] = {
    "red": ["red", "crimson", "scarlet", "ruby"],
    "blue": ["blue", "azure", "cobalt", "sapphire"],
    "green": ["green", "emerald", "lime", "jade"],
    "yellow": ["yellow", "golden", "amber", "lemon"],
}
OBJECT_WORDS = ["ball", "sphere", "orb", "disc"]

# Action -> (canonical template, paraphrase templates). {c} = colour word, {o} = object word.
# Each paraphrase uses a different colour/object synonym (index i+1) so no two captions of a class
# share their content words.
ACTIONS: dict[str, tuple[str, list[str]]] = {
    "moves_left": (
        "the {c} {o} moves left",
        [
            "a {c} {o} heads west",
            "the {c} {o} drifts leftward across the frame",
            "one {c} {o} travels from east to west",
        ],
    ),
    "moves_right": (
        "the {c} {o} moves right",
        [
            "a {c} {o} heads east",
            "the {c} {o} drifts rightward across the frame",
            "one {c} {o} travels from west to east",
        ],
    ),
    "grows": (
        "the {c} {o} grows",
        [
            "a {c} {o} gets bigger",
            "the {c} {o} expands in size",
            "one {c} {o} swells and becomes larger",
        ],
    ),
    "vanishes": (
        "the {c} {o} vanishes",
        [
            "a {c} {o} disappears",
            "the {c} {o} fades away out of sight",
            "one {c} {o} is suddenly gone",
        ],
    ),
    "appears": (
        "the {c} {o} appears",
        [
            "a {c} {o} shows up",
            "the {c} {o} emerges into view",
            "one {c} {o} pops out of nowhere",
        ],
    ),
}

# Colour changes: (from, to).
COLOUR_CHANGES: list[tuple[str, str]] = [
    ("red", "blue"),
    ("blue", "red"),
    ("green", "yellow"),
    ("yellow", "green"),
]
CHANGE_TEMPLATES = (
    "the {o} turns from {a} to {b}",
    [
        "a {a} {o} becomes {b}",
        "the {a} {o} changes its colour to {b}",
        "one {a} {o} shifts into {b}",
    ],
)

LAMP_EVENTS: dict[str, tuple[str, list[str]]] = {
    "lamp_off": (
        "the lamp turns off",
        ["the room goes dark", "the light goes out", "darkness falls over the scene"],
    ),
    "lamp_on": (
        "the lamp turns on",
        ["the room lights up", "the bulb starts glowing", "brightness fills the scene"],
    ),
}


def _articles(text: str) -> str:
    """'a azure sphere' -> 'an azure sphere' (templates are written with 'a')."""
    words = text.split(" ")
    for i, w in enumerate(words[:-1]):
        if w == "a" and words[i + 1][0] in "aeiou":
            words[i] = "an"
    return " ".join(words)


@dataclass(frozen=True)
class EventClass:
    """One class: what the renderer draws (kind + colours) and how people would describe it."""

    index: int
    label: str
    kind: str  # an ACTIONS key, "colour_change", "lamp_off" or "lamp_on"
    colour: str | None
    colour_to: str | None
    caption: str
    paraphrases: tuple[str, ...]

    def to_json(self) -> dict:
        return {
            "index": self.index,
            "label": self.label,
            "caption": self.caption,
            "paraphrases": list(self.paraphrases),
            "kind": self.kind,
            "colour": self.colour,
            "colour_to": self.colour_to,
        }


def _build() -> list[EventClass]:
    classes: list[EventClass] = []

    def add(label, kind, colour, colour_to, caption, paraphrases):
        classes.append(
            EventClass(
                len(classes),
                label,
                kind,
                colour,
                colour_to,
                caption,
                tuple(_articles(p) for p in paraphrases),
            )
        )

    for colour in COLOURS:
        words = COLOUR_WORDS[colour]
        for action, (canon, paras) in ACTIONS.items():
            caption = canon.format(c=words[0], o=OBJECT_WORDS[0])
            paraphrases = [
                p.format(c=words[i + 1], o=OBJECT_WORDS[i + 1]) for i, p in enumerate(paras)
            ]
            add(f"{colour}_{action}", action, colour, None, caption, paraphrases)
    canon, paras = CHANGE_TEMPLATES
    for a, b in COLOUR_CHANGES:
        wa, wb = COLOUR_WORDS[a], COLOUR_WORDS[b]
        caption = canon.format(a=wa[0], b=wb[0], o=OBJECT_WORDS[0])
        paraphrases = [
            p.format(a=wa[i + 1], b=wb[i + 1], o=OBJECT_WORDS[i + 1]) for i, p in enumerate(paras)
        ]
        add(f"{a}_to_{b}", "colour_change", a, b, caption, paraphrases)
    for label, (caption, paraphrases) in LAMP_EVENTS.items():
        add(label, label, None, None, caption, paraphrases)
    return classes


CLASSES: list[EventClass] = _build()
BY_LABEL: dict[str, EventClass] = {c.label: c for c in CLASSES}
