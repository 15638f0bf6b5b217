"""Every command in README.md and docs/*.md works as written (issue 8, acceptance 3).

The ```bash blocks are extracted and each command is checked by what it needs:
- `vljepa ...`: parsed by that subcommand's own argparse parser (a renamed flag fails here);
  `submit`/`deploy` with `--k8s` or `--address` need a cluster, so they are run with `--dry-run`
  and must render a RayJob/RayService/Jobs API request; `model-info` is run; the flags of local
  commands must be exercised somewhere in the tests (or by the demo, which a test runs);
- `make T`: `make -n T` (the Makefile's dry run);
- `helm install|upgrade`: rendered with `helm template` and the same values;
- `kubectl ... svc/NAME`: NAME is a Service the chart renders;
- `mlflow ui|server ...`: parsed by MLflow's own click command;
- `curl ... /v1/...`: the path and form fields exist in the Serve app's OpenAPI schema;
- `python -c ...` is run on a real file; `python benchmarks/X.py`: the script exists;
- `docker build`: the Dockerfile exists and declares every `--build-arg`.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.cluster.test_helm import CHART, helm, render  # noqa: F401 - `helm` is a fixture

REPO = Path(__file__).resolve().parents[1]
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LOCAL_JOBS = {"synth", "embed", "train", "train-decoder", "eval", "serve", "demo", "model-info"}
SHELL_NOOPS = {"source", "export", "cd"}


def bash_commands(path: Path) -> list[str]:
    """Commands of the ```bash blocks: continuation lines joined, comments dropped."""
    out: list[str] = []
    in_block = False
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.rstrip()
        if line.strip().startswith("```"):
            in_block = line.strip() == "```bash" if not in_block else False
            continue
        if not in_block:
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        line = re.sub(r"\s+#\s.*$", "", line).strip()  # a trailing comment
        if line and not line.startswith("#"):
            out.append(line)
    return out


ALL = [(p.relative_to(REPO).as_posix(), c) for p in DOC_FILES for c in bash_commands(p)]
IDS = [f"{p}:{c[:60]}" for p, c in ALL]


def _argv(cmd: str) -> list[str]:
    return shlex.split(cmd.replace("$PWD", str(REPO)))


def test_docs_exist_and_have_commands():
    assert (REPO / "README.md").exists()
    for name in ("corpus-formats.md", "scaling.md", "troubleshooting.md"):
        assert (REPO / "docs" / name).exists(), name
    assert len(ALL) > 30
    readme = (REPO / "README.md").read_text()
    first = bash_commands(REPO / "README.md")[:2]
    assert first == ["make demo", "make test"], (
        f"the README must start with the two commands: {first}"
    )
    assert "```mermaid" in readme  # the architecture diagram


def test_relative_links_resolve():
    for doc in DOC_FILES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target:
                continue
            assert (doc.parent / target).exists(), f"{doc.name}: broken link {target}"


def test_every_command_is_of_a_known_kind():
    known = {
        "vljepa",
        "make",
        "helm",
        "kubectl",
        "mlflow",
        "curl",
        "python",
        "docker",
        *SHELL_NOOPS,
    }
    unknown = [c for _, c in ALL if _argv(c)[0] not in known]
    assert not unknown, f"add a check for these commands: {unknown}"


# ------------------------------------------------------------------------------------ vljepa

VLJEPA = [(p, c) for p, c in ALL if c.startswith("vljepa ")]


def _parse(argv: list[str]):
    from cluster import cli

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            return cli.build_parser(argv[0]).parse_args(argv)
        except SystemExit as e:
            pytest.fail(f"vljepa {' '.join(argv)} does not parse: {err.getvalue().strip()} ({e})")


def _coverage_text() -> str:
    texts = [p.read_text() for p in (REPO / "tests").rglob("*.py") if p.name != "test_docs.py"]
    texts.append((REPO / "cluster" / "demo.py").read_text())
    return "\n".join(texts)


@pytest.mark.parametrize("doc, cmd", VLJEPA, ids=[f"{p}:{c[:60]}" for p, c in VLJEPA])
def test_vljepa_command_parses_and_is_exercised(doc, cmd, capsys):
    argv = _argv(cmd)[1:]
    args = _parse(argv)
    sub = args.command
    if sub == "submit":
        from cluster.commands import submit

        job_args, merged = submit._split(args)
        submit.check_job_args(args.job, job_args)  # the job's own parser accepts its arguments
        if merged.k8s or merged.address:
            _dry_run(argv, "RayJob" if merged.k8s else "entrypoint: vljepa " + args.job)
        return
    if sub == "deploy":
        if args.k8s:
            _dry_run(argv, "RayService")
        return
    if sub == "model-info":
        from cluster import cli

        assert cli.main(argv) == 0
        assert "total (VL-JEPA)" in capsys.readouterr().out
        return
    if sub not in LOCAL_JOBS:
        return  # `jobs` needs a cluster: parsing it is what can be done without one
    if "--gpus" in argv or "paper" in argv:
        return  # needs a GPU (or hub weights): parsed above
    corpus = _coverage_text()
    for flag in (a.split("=")[0] for a in argv if a.startswith("--")):
        dest = flag[2:].replace("-", "_")
        assert flag in corpus or f"{dest}=" in corpus, (
            f"`{cmd}` ({doc}) uses {flag}, which no test (and not the demo) exercises"
        )


def test_readme_stage2_flags_are_the_suites(tmp_path):
    """The README's stage-2 command trains what the suite's stage-2 run trains: its flags and
    tests/stage2_models.py's `stage2_config` are two spellings of one config, and the figures the
    README quotes for those flags were measured with the second."""
    from cluster.commands.config_flags import config_kwargs
    from pipelines.train.config import TrainConfig
    from tests.stage2_models import stage2_config
    from tests.trained_models import EmbeddedCorpus

    (cmd,) = [c for p, c in ALL if p == "README.md" and c.startswith("vljepa train --stage sft")]
    argv = _argv(cmd)[1:]
    readme = TrainConfig(**config_kwargs(_parse(argv), list(TrainConfig.model_fields)))
    corpus = EmbeddedCorpus(tmp_path, tmp_path / "features", "tiny", 0, 0, 0.0)
    suite = stage2_config("models:/x/1", corpus, tmp_path, str(tmp_path), "sqlite:///x.db")
    given = {a[2:].replace("-", "_") for a in argv if a.startswith("--")} - {"data", "init"}
    assert {"steps", "lr", "warmup_steps", "question_weights", "y_lr_mult"} <= given
    differ = {
        k: (getattr(readme, k), getattr(suite, k))
        for k in sorted(given)
        if getattr(readme, k) != getattr(suite, k)
    }
    assert not differ, f"README flag vs the suite's stage-2 config: {differ}"


def _dry_run(argv: list[str], expect: str) -> None:
    from cluster import cli

    full = [*argv, "--dry-run"] if "--dry-run" not in argv else argv
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(full)
    assert rc == 0, f"vljepa {' '.join(full)} -> {rc}: {err.getvalue()}"
    assert expect in out.getvalue(), out.getvalue()[:2000]
    if expect in ("RayJob", "RayService"):
        docs = [d for d in yaml.safe_load_all(out.getvalue()) if d]
        assert any(d.get("kind") == expect for d in docs)


# ------------------------------------------------------------------------------ other tools


@pytest.mark.parametrize(
    "doc, cmd", [x for x in ALL if x[1].startswith("make ")], ids=lambda x: str(x)[:60]
)
def test_make_targets_dry_run(doc, cmd):
    argv = _argv(cmd)
    r = subprocess.run(
        ["make", "-n", *argv[1:]], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, f"{cmd} ({doc}): {r.stderr}"


def _helm_lines() -> list[tuple[str, str]]:
    return [(p, c) for p, c in ALL if c.startswith("helm ")]


@pytest.mark.parametrize("doc, cmd", _helm_lines(), ids=lambda x: str(x)[:60])
def test_helm_commands_render(doc, cmd, helm):  # noqa: F811 - the fixture
    argv = _argv(cmd)[1:]
    # helm install NAME CHART ... | helm upgrade --install NAME CHART ...
    rest = [a for a in argv if a not in ("install", "upgrade", "--install")]
    name, chart, *values = rest
    assert (REPO / chart).resolve() == CHART.resolve(), cmd
    values = [str(REPO / v) if v.endswith(".yaml") else v for v in values]
    objs = render(helm, *values)
    assert {"RayService"} <= {o["kind"] for o in objs}, cmd


@pytest.fixture(scope="module")
def default_render(helm) -> list[dict]:  # noqa: F811 - the fixture
    return render(helm)


@pytest.mark.parametrize(
    "doc, cmd", [x for x in ALL if x[1].startswith("kubectl ")], ids=lambda x: str(x)[:60]
)
def test_kubectl_names_resources_the_chart_renders(doc, cmd, default_render):
    names = {(o["kind"], o["metadata"]["name"]) for o in default_render}
    for svc in re.findall(r"svc/([\w.-]+)", cmd):
        assert ("Service", svc) in names, f"{cmd}: no Service {svc} in the chart"


@pytest.mark.parametrize(
    "doc, cmd", [x for x in ALL if x[1].startswith("mlflow ")], ids=lambda x: str(x)[:60]
)
def test_mlflow_commands_parse(doc, cmd):
    from mlflow.cli import cli as mlflow_cli

    argv = _argv(cmd)[1:]
    sub = mlflow_cli.get_command(None, argv[0])
    assert sub is not None, cmd
    sub.make_context(argv[0], argv[1:])  # raises on an unknown or malformed option


@pytest.mark.parametrize(
    "doc, cmd", [x for x in ALL if x[1].startswith("curl ")], ids=lambda x: str(x)[:60]
)
def test_curl_examples_match_the_api(doc, cmd):
    from serve.deployments import app

    schema = app.openapi()
    argv = _argv(cmd)
    url = next(a for a in argv if a.startswith("http"))
    path = "/" + url.split("/", 3)[3]
    patterns = {
        p: re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", p) + "$") for p in schema["paths"]
    }
    match = [p for p, rx in patterns.items() if rx.match(path)]
    assert match, f"{cmd}: {path} is not in the API"
    op = schema["paths"][match[0]]["post"]
    form = op["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    for i, a in enumerate(argv):
        if a == "-F":
            assert argv[i + 1].split("=")[0] in form, f"{cmd}: form field {argv[i + 1]}"
            value = argv[i + 1].split("=", 1)[1]
            if value.startswith("@"):
                assert value[1:].startswith("corpus/videos/"), "examples use the synth layout"


@pytest.mark.parametrize(
    "doc, cmd", [x for x in ALL if x[1].startswith("python ")], ids=lambda x: str(x)[:60]
)
def test_python_commands_run(doc, cmd, tmp_path):
    argv = _argv(cmd)
    if argv[1] != "-c":
        assert (REPO / argv[1]).is_file(), cmd
        return
    # The `_errors` one-liner, on a real error file written by the embed writer.
    from pipelines.embed.writer import errors_table

    target = tmp_path / argv[-1]
    target.mkdir(parents=True)
    rows = [
        {
            "shard": "00000",
            "seq": i,
            "clip_id": f"c{i}",
            "video": "v.mp4",
            "stage": "decode",
            "reason": r,
            "detail": "",
            "transient": False,
        }
        for i, r in enumerate(["too_short", "too_short", "not_a_video"])
    ]
    import pyarrow.parquet as pq

    pq.write_table(errors_table(rows), target / "part-00000.parquet")
    r = subprocess.run(
        [sys.executable, *argv[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert "too_short" in r.stdout and "not_a_video" in r.stdout


@pytest.mark.parametrize(
    "doc, cmd", [x for x in ALL if x[1].startswith("docker ")], ids=lambda x: str(x)[:60]
)
def test_docker_build_args_exist(doc, cmd):
    dockerfile = (REPO / "Dockerfile").read_text()
    argv = _argv(cmd)
    for i, a in enumerate(argv):
        if a == "--build-arg":
            assert f"ARG {argv[i + 1].split('=')[0]}" in dockerfile, cmd


# ------------------------------------------------------------------ figures come from results

RESULTS = REPO / "benchmarks" / "results"
_NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?")
FIGURE_COLUMNS = {"figure", "measured", "machine"}


def figure_rows(doc: Path) -> list[tuple[str, str, list[str]]]:
    """(row text, results file stem, the figure cells) for every table row citing a file in
    benchmarks/results: the figure/measured cell and the machine cell (which holds wall times)."""
    rows, header = [], None
    for line in doc.read_text().splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = [c.lower() for c in cells]
            continue
        if set(line) <= set("|-: "):
            continue
        cited = [m for m in re.findall(r"(\w+)\.md", line) if (RESULTS / f"{m}.md").exists()]
        if not cited:
            continue
        figs = [c for h, c in zip(header, cells, strict=False) if h in FIGURE_COLUMNS]
        rows.append((line, cited[0], figs))
    return rows


FIGURE_ROWS = [(d.name, *r) for d in DOC_FILES for r in figure_rows(d)]


def _numbers(text: str) -> list[float]:
    return [float(m.replace(",", "")) for m in _NUMBER.findall(text)]


def test_figure_rows_are_found():
    cited = {stem for _, _, stem, _ in FIGURE_ROWS}
    assert {"gpu_check", "synth", "embed", "train", "embedding_vs_tokens"} <= cited, cited


@pytest.mark.parametrize(
    "doc,row,stem,cells", FIGURE_ROWS, ids=[f"{d}:{s}:{r[2:40]}" for d, r, s, _ in FIGURE_ROWS]
)
def test_every_figure_is_in_its_results_file(doc, row, stem, cells):
    """Each number a figure cell quotes is in the results file it cites (its .md or .json),
    to the quoted precision, or as a fraction quoted in percent: a figure typed by hand or
    left behind by a rerun fails here."""
    text = (RESULTS / f"{stem}.md").read_text()
    if (RESULTS / f"{stem}.json").exists():
        text += (RESULTS / f"{stem}.json").read_text()
    have = _numbers(text)
    for cell in cells:
        for token in _NUMBER.findall(cell):
            v = float(token.replace(",", ""))
            tol = 0.5 * 10 ** -len(token.split(".")[1]) if "." in token else 0.5
            ok = any(abs(x - v) <= tol + 1e-9 or abs(100 * x - v) <= tol + 1e-9 for x in have)
            assert ok, f"{doc}: {token} in {cell!r} is not in benchmarks/results/{stem}.*"
