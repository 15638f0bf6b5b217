"""`vljepa eval`'s selective-decoding flags take their defaults from EvalConfig (the paper's
protocol: plain segment mean, absolute rates, a bootstrap interval) and refuse bad rates."""

from __future__ import annotations

import contextlib
import io

import pytest

from cluster.cli import build_parser
from pipelines.evaluate import EvalConfig
from pipelines.selective_eval import DEFAULT_RATES_HZ


def _parse(*argv: str):
    return build_parser("eval").parse_args(["eval", "--model", "m", "--corpus", "c", *argv])


def test_defaults_are_the_papers_protocol_from_eval_config():
    args = _parse()
    assert args.segment_pool == EvalConfig.model_fields["segment_pool"].default == "mean"
    assert args.rates == EvalConfig(model="m").rates_hz == list(DEFAULT_RATES_HZ)
    assert DEFAULT_RATES_HZ == (2.0, 1.0, 0.5, 0.35, 0.2, 0.1)
    assert args.bootstrap == EvalConfig(model="m").bootstrap_resamples == 1000


def test_rates_and_pool_flags_parse():
    args = _parse("--rates", "1, 0.35,0.1", "--segment-pool", "trimmed", "--bootstrap", "0")
    assert args.rates == [1.0, 0.35, 0.1]
    assert args.segment_pool == "trimmed" and args.bootstrap == 0


@pytest.mark.parametrize("rates", ["", "fast", "1,0", "0.5,-1"])
def test_bad_rates_are_a_usage_error(rates: str):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as e:
        _parse("--rates", rates)
    assert e.value.code == 2 and "--rates" in err.getvalue()


def test_eval_config_refuses_non_positive_rates():
    with pytest.raises(ValueError, match="positive"):
        EvalConfig(model="m", rates_hz=[1.0, 0.0])
    with pytest.raises(ValueError):
        EvalConfig(model="m", rates_hz=[])
