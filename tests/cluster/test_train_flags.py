"""`vljepa train --help` shows every tunable of the run's config with the config's own default:
the flags are generated from TrainConfig, so no default is written twice."""

from __future__ import annotations

import argparse

from cluster.cli import build_parser
from cluster.commands.config_flags import field_default, flag_name
from pipelines.train.config import TrainConfig

HIDDEN = {"fail_at_step", "fail_rank", "fail_marker"}


def _train_parser() -> argparse.ArgumentParser:
    parser = build_parser("train")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def test_every_config_field_is_a_flag_with_the_config_default():
    # -v/--verbose is every command's own flag, not a config field
    actions = {a.dest: a for a in _train_parser()._actions if a.dest not in ("help", "verbose")}
    assert set(actions) == set(TrainConfig.model_fields)
    for name, info in TrainConfig.model_fields.items():
        action = actions[name]
        assert flag_name(name) in action.option_strings, name
        if info.is_required():
            assert action.required, name
        else:
            assert action.default == field_default(TrainConfig, name), name


def test_help_lists_every_tunable_with_its_default(capsys):
    parser = _train_parser()
    help_text = parser.format_help()
    for name in TrainConfig.model_fields:
        if name in HIDDEN:
            assert flag_name(name) not in help_text
            continue
        assert flag_name(name) in help_text, name
    for tunable in ("--max-text-len", "--y-lr-mult", "--learnable-temperature", "--temperature"):
        assert tunable in help_text
    # what --help says the default is, is what the config uses when the flag is left out
    args = parser.parse_args(["--data", "X"])
    from cluster.commands.config_flags import config_kwargs

    cfg = TrainConfig(**config_kwargs(args, list(TrainConfig.model_fields)))
    assert cfg.max_text_len == TrainConfig.model_fields["max_text_len"].default
    assert f"(default: {cfg.max_text_len})" in " ".join(help_text.split())


def test_paper_preset_trains_at_the_papers_stage1_defaults():
    """METHOD.md stage 1: constant lr 5e-5, the Y-encoder at 0.05x."""
    from jepa.config import VLJEPAConfig

    cfg = TrainConfig(data="X", preset="paper")
    assert (cfg.lr, cfg.schedule) == (5e-5, "constant")
    assert VLJEPAConfig.preset("paper").y_lr_mult == 0.05
    tiny = TrainConfig(data="X")
    assert (tiny.lr, tiny.schedule) == (1e-3, "cosine")
    assert TrainConfig(data="X", preset="paper", lr=1e-4).lr == 1e-4  # a flag still wins


def test_relative_local_paths_become_the_callers(tmp_path, monkeypatch):
    """`--resume-from rz/a/checkpoint_0000002` is opened by Ray workers whose working directory
    is not the caller's; URIs and registry names are left as given."""
    monkeypatch.chdir(tmp_path)
    cfg = TrainConfig(
        data="f", resume_from="runs/a/checkpoint_0000002", init="models/s1", export_dir="out"
    )
    assert cfg.resume_from == str(tmp_path / "runs/a/checkpoint_0000002")
    assert cfg.init == str(tmp_path / "models/s1") and cfg.export_dir == str(tmp_path / "out")
    for uri in ("models:/vljepa/1", "runs:/abc/model", "s3://b/runs/a/checkpoint_0000002"):
        assert TrainConfig(data="f", init=uri, resume_from=uri).init == uri
