"""Small helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import json


def cli_json(stdout: str) -> dict:
    """The JSON summary a command prints: the first JSON document on stdout. Ray may print
    warnings after it (a raylet's worker-count notice), so the rest of stdout is ignored."""
    return json.JSONDecoder().raw_decode(stdout, stdout.index("{"))[0]
