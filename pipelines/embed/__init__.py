"""Ray Data pre-embedding: video-caption corpus -> Parquet of X-encoder tokens + caption encodings.

Entry points: `EmbedConfig` (config.py) and `run_embed(cfg) -> summary dict` (run.py; raises
`EmbedError` when nothing was written); `vljepa embed` is the CLI. The output layout is described
in writer.py; `read_errors(out)` returns the `_errors/` rows.
"""

from pipelines.embed.config import EmbedConfig
from pipelines.embed.run import EmbedError, ResumeMismatch
from pipelines.embed.run import run as run_embed
from pipelines.embed.writer import read_errors

__all__ = ["EmbedConfig", "EmbedError", "ResumeMismatch", "read_errors", "run_embed"]
