"""`vljepa synth`: a seeded synthetic video-caption corpus for testing what VL-JEPA claims.

Short clips of one event each (a big coloured ball moves, grows, vanishes, appears, changes colour;
a lamp turns the room dark or bright), captions with word-disjoint paraphrases, a class label per
clip for zero-shot classification, a balanced train/val split, and long streams for selective
decoding: events of varied length (one action each, spread over its duration), pauses between
some of them, and exact boundaries; for stage 2, questions with closed answer sets about each clip
(`questions.py`) and a WorldPrediction-style set (`worldprediction.py`). See `corpus.py` for the
output layout.
"""

from .corpus import OutputError, SynthConfig, SynthSummary, generate, plan_clips
from .events import BY_LABEL, CLASSES, EventClass

__all__ = [
    "BY_LABEL",
    "CLASSES",
    "EventClass",
    "OutputError",
    "SynthConfig",
    "SynthSummary",
    "generate",
    "plan_clips",
]
