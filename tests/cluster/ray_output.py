"""What Ray itself prints, recognised in a command's output (tests/cluster/test_quiet_output.py,
test_serve_signals.py): at default verbosity a `vljepa` command prints none of it."""

from __future__ import annotations

import re

# One pattern per kind of Ray output; each names what it catches when it fails.
RAY_INTERNALS = {
    "forwarded worker/actor line": re.compile(r"\((?:[\w:.,()\- ]+ )?pid=\d+(?:, ip=[\d.]+)?\)"),
    "raylet/autoscaler note": re.compile(r"\((?:raylet|autoscaler[^)]*)\) "),
    "Ray Python logger line": re.compile(r"\b(INFO|WARNING|ERROR|DEBUG)\s+[\w.]+\.py:\d+ -- "),
    "Ray Serve logger line": re.compile(
        r"^(INFO|WARNING|DEBUG) \d{4}-\d\d-\d\d [\d:,]+ \S+ \S+ -- "
    ),
    "native Ray log line": re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+ [DIWEF] \d+ \d+\] \S+:\d+:"),
    "Ray Train report dump": re.compile(r"TrainingReport\("),
    "Ray actor name": re.compile(r"PlacementGroupCleaner|TrainController|SplitCoordinator"),
    "Ray dedup note": re.compile(r"\[repeated \d+x across cluster\]"),
}


def ray_internal_lines(text: str) -> list[str]:
    """`kind: line` for every line of `text` that came from Ray's internals."""
    out = []
    for line in text.splitlines():
        clean = re.sub(r"\x1b\[[0-9;]*m", "", line)  # Ray colours its prefixes
        out += [f"{kind}: {clean}" for kind, pat in RAY_INTERNALS.items() if pat.search(clean)]
    return out
