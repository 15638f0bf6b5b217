"""The pipeline tests' session fixtures (`embedded_corpus`, `trained_model`, `decoded_model`) live
in tests/trained_models.py, registered in tests/conftest.py so tests/serve shares the same runs;
the names below stay importable from here."""

from __future__ import annotations

from tests.trained_models import (  # noqa: F401
    EMBED_CLIPS,
    EMBED_STREAMS,
    EMBED_VAL_FRACTION,
    REGISTER_NAME,
    EmbeddedCorpus,
    TrainedModel,
    embed_in_process,
)
