"""The background chain's harness (tests/session_models.py): which stages a selection needs, the
order its users run in, and its results surviving the trip through JSON whole."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tests import session_models


@dataclass
class _Item:
    nodeid: str
    fixturenames: tuple[str, ...] = ()
    markers: dict = field(default_factory=dict)

    def get_closest_marker(self, name: str):
        return self.markers.get(name)


# What pytest puts in an item's fixturenames: every fixture it needs, through other fixtures too.
EMBEDDED = ("embedded_corpus", "ray_session")
TRAINED = ("trained_model", *EMBEDDED, "mlflow_server")
DECODED = ("decoded_model", *TRAINED)
STAGE2 = ("stage2_model", *TRAINED, "s3")  # made in the test process, from the chain's stage 1


def test_stages_needed_include_what_they_are_made_from():
    items = [_Item("a.py::t", STAGE2), _Item("b.py::t", ("tmp_path",))]
    assert session_models._wanted(items) == ("embedded_corpus", "trained_model")
    assert session_models._wanted([_Item("b.py::t", ("tmp_path",))]) == ()
    assert session_models._wanted([_Item("c.py::t", DECODED)]) == session_models.STAGES
    skipped = _Item("c.py::t", DECODED, {"skip": object()})
    assert session_models._wanted([skipped, _Item("d.py::t", EMBEDDED)]) == ("embedded_corpus",)


def test_users_run_last_by_depth_with_modules_kept_whole():
    items = [
        _Item("dec.py::a", DECODED),
        _Item("s2.py::a", STAGE2),
        _Item("s2.py::b"),
        _Item("plain1.py::a"),
        _Item("train.py::bad_args", EMBEDDED),  # its module also trains: moves whole
        _Item("train.py::learns", TRAINED),
        _Item("feat.py::a", EMBEDDED),
        _Item("plain2.py::a"),
    ]
    session_models.order_items(items)
    assert [i.nodeid for i in items] == [
        "plain1.py::a",
        "plain2.py::a",
        "feat.py::a",
        "s2.py::a",
        "s2.py::b",
        "train.py::bad_args",
        "train.py::learns",
        "dec.py::a",
    ]


def test_results_come_back_from_json_whole(tmp_path: Path):
    from pipelines.train import TrainConfig
    from pipelines.train.trainer import TrainResult
    from tests.trained_models import EmbeddedCorpus, TrainedModel

    embedded = EmbeddedCorpus(tmp_path / "c", tmp_path / "f", "tiny", 416, 104, 1.5)
    cfg = TrainConfig(
        data=str(tmp_path / "f"),
        stage="sft",
        init="models:/m/1",
        steps=240,
        warmup_steps=10,
        storage="s3://bucket/runs",
        question_weights={"has_colour": 3},
        y_lr_mult=0.0,
        fail_at_step=120,
        fail_marker=str(tmp_path / "marker"),
        tracking_uri="http://127.0.0.1:1",
    )
    result = TrainResult("run", "ckpt", "export", "2", {"val/x": 0.5}, {"step": 240}, "store")
    trained = TrainedModel(cfg, result, "http://127.0.0.1:1", 3.0)
    for name, obj in [
        ("embedded_corpus", embedded),
        ("trained_model", trained),
        ("decoded_model", {"model_version": "3"}),
    ]:
        session_models._emit(tmp_path, name, obj)
        back = session_models._load(name, json.loads((tmp_path / f"{name}.json").read_text()))
        assert back == obj, name
