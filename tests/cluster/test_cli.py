"""The `vljepa` dispatcher: help everywhere, exit code 2 with one line on bad input.

Subcommand modules land one by one (one per issue); every registered subcommand whose module
exists is checked, so a new command is covered the moment its module appears.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

from cluster import cli as cli_module
from cluster.cli import COMMANDS, main


def _present() -> list[str]:
    """Registered subcommands whose module file exists (found without importing it)."""
    return [name for name, (module, _) in COMMANDS.items() if importlib.util.find_spec(module)]


def test_help_lists_every_command(cli):
    r = cli("--help", timeout=60)
    assert r.returncode == 0, r.stderr
    assert "usage: vljepa" in r.stdout
    for name in COMMANDS:
        assert name in r.stdout


def test_no_command_prints_help_and_exits_2(cli):
    r = cli(timeout=60)
    assert r.returncode == 2
    assert "usage: vljepa" in r.stdout


def test_unknown_command_exits_2_with_one_line(cli):
    r = cli("frobnicate", "--fast", timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "frobnicate" in lines[0]


def test_unknown_option_exits_2_with_one_line(cli):
    r = cli("--no-such-flag", timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "--no-such-flag" in lines[0]


@pytest.mark.parametrize("name", _present())
def test_subcommand_help_exits_0(name, capsys):
    """`vljepa NAME --help` imports the module and shows its docstring and flags."""
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: vljepa {name}" in out
    module = cli_module._load(name)
    assert callable(module.add_arguments) and callable(module.run)
    doc = (module.__doc__ or "").strip()
    assert doc, f"{COMMANDS[name][0]} needs a module docstring (it is the --help text)"
    assert doc.splitlines()[0] in out


@pytest.mark.parametrize("name", _present())
def test_subcommand_unknown_option_exits_2_with_one_line(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([name, "--no-such-flag-xyz"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    # argparse names the unknown flag, or first the required arguments that are missing.
    assert err[0].startswith("vljepa") and "error:" in err[0]


def test_mlflow_telemetry_is_off_here_and_in_workers(monkeypatch):
    """MLflow 3 connects to config.mlflow-telemetry.io from every process that uses it: `vljepa`
    turns that off for itself and the workers and replicas it starts, unless the user's
    environment already decides."""
    from pipelines import tracking_store

    monkeypatch.delenv(tracking_store.TELEMETRY_VAR, raising=False)
    assert main(["no-such-command"]) == 2
    assert os.environ[tracking_store.TELEMETRY_VAR] == "true"
    assert tracking_store.worker_env("sqlite:///x.db")[tracking_store.TELEMETRY_VAR] == "true"
    monkeypatch.setenv(tracking_store.TELEMETRY_VAR, "false")  # the user's choice stands
    main(["no-such-command"])
    assert tracking_store.worker_env("sqlite:///x.db")[tracking_store.TELEMETRY_VAR] == "false"
