"""The training config's objective and loss choices, and a frozen Y-encoder (`--y-lr-mult 0`)
that really is frozen: no gradient, no update, no optimizer state. No Ray, a few seconds."""

from __future__ import annotations

import contextlib

import pytest
import torch

from jepa.config import VLJEPAConfig
from jepa.loss import get_loss
from pipelines.features import Features, IncompatibleFeatures, check_caption_tokenizer
from pipelines.train.config import TrainConfig
from pipelines.train.joint import JointEmbedding


def _step(model: JointEmbedding, loss_name: str = "infonce") -> torch.optim.Optimizer:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 128, 192, generator=g)
    ids = torch.randint(1000, 2000, (4, 6), generator=g)
    mask = torch.ones_like(ids)
    opt = torch.optim.AdamW(model.param_groups(1e-2, 0.05))
    pred, target, scale = model(x, ids, mask)
    loss, _ = get_loss(loss_name)(pred, target, scale)
    loss.backward()
    opt.step()
    return opt


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@contextlib.contextmanager
def _one_rank(tmp_path):
    """A 1-rank gloo process group, so FSDP2 can shard in this process (and is torn down)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdv'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _whole(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


@pytest.mark.parametrize("mult", [0.0, 0.05])
def test_y_lr_mult_zero_freezes_the_y_encoder(mult):
    cfg = VLJEPAConfig.preset("tiny-text")
    cfg.y_lr_mult = mult
    torch.manual_seed(0)
    model = JointEmbedding(cfg, load_pretrained=False)
    y_before, p_before = _snapshot(model.y_encoder), _snapshot(model.predictor)
    opt = _step(model)
    y_ids = {id(p) for p in model.y_encoder.parameters()}
    in_groups = {id(p) for g in opt.param_groups for p in g["params"]}
    with_state = {id(p) for p in opt.state}
    moved = [k for k, v in model.y_encoder.state_dict().items() if not torch.equal(v, y_before[k])]
    assert any(not torch.equal(v, p_before[k]) for k, v in model.predictor.state_dict().items())
    if mult == 0:
        assert not moved, moved
        assert not any(p.requires_grad for p in model.y_encoder.parameters())
        assert not (y_ids & in_groups) and not (y_ids & with_state)
        assert [g["name"] for g in opt.param_groups] == ["predictor.decay", "predictor.no_decay"]
    else:  # the control: at 0.05x the same step does move it and keeps its AdamW moments
        assert moved and (y_ids & with_state)
        assert {g["name"] for g in opt.param_groups} >= {"y_encoder.decay", "y_encoder.no_decay"}


@pytest.mark.parametrize("preset", ["tiny", "tiny-text"])
def test_query_training_trains_only_the_query_path_the_predictor_reads(preset):
    """Stage 2 trains the token table when queries come as ids (tiny-text, the paper's path) and
    the adapter when a query encoder reads them (tiny): the other one is never used, so it is
    frozen rather than all-gathered, reduce-scattered and weight-decayed for nothing."""
    cfg = VLJEPAConfig.preset(preset)
    sft = JointEmbedding(cfg, load_pretrained=False, train_query_embeddings=True)
    stage1 = JointEmbedding(cfg, load_pretrained=False)
    table, adapter = sft.predictor.llama.embed_tokens, sft.predictor.query_adapter
    assert not stage1.predictor.llama.embed_tokens.weight.requires_grad
    trainable = {id(p) for g in sft.param_groups(1e-3, 0.05) for p in g["params"]}
    if preset == "tiny":
        assert not table.weight.requires_grad and id(table.weight) not in trainable
        assert adapter.weight.requires_grad and id(adapter.weight) in trainable
        assert not stage1.predictor.query_adapter.weight.requires_grad
    else:
        assert adapter is None
        assert table.weight.requires_grad and id(table.weight) in trainable


def test_frozen_y_embeddings_stay_whole_on_every_rank_and_never_move(tmp_path):
    """`--freeze-y-embeddings`: the Y-encoder's token table gets no gradient, no optimizer
    state, no FSDP shard (every rank keeps it whole, like the predictor's unused token table,
    so no step all-gathers it), while the rest of the Y-encoder still trains."""
    from torch.distributed.tensor import DTensor

    from pipelines.train.parallelize import apply_fsdp, build_mesh, sharding_report

    cfg = VLJEPAConfig.preset("tiny-text")
    torch.manual_seed(0)
    model = JointEmbedding(cfg, load_pretrained=False, freeze_y_embeddings=True)
    table = model.y_encoder.backbone.get_input_embeddings().weight
    before, y_before = table.detach().clone(), _snapshot(model.y_encoder)
    with _one_rank(tmp_path):
        apply_fsdp(model, build_mesh(False))
        report = sharding_report(model)
        opt = _step(model)
    assert not isinstance(table, DTensor) and torch.equal(table, before)
    assert id(table) not in {id(p) for p in opt.state}
    # the predictor's token table (no queries in stage 1) and this one
    assert report["replicated_params"] == 2, report
    assert report["dtensor_params"] == report["params"] > 20, report
    moved = [
        k
        for k, v in model.y_encoder.state_dict().items()
        if not torch.equal(_whole(v), y_before[k])
    ]
    assert moved and not any("word_embeddings" in k for k in moved), moved


def test_resuming_with_a_table_unfrozen_starts_its_moments_and_resumes_the_rest(tmp_path):
    """A checkpoint written with `--freeze-y-embeddings` holds no optimizer state for the
    Y-encoder's token table; a run resumed without the flag starts that table's AdamW moments
    at zero and takes every weight and every other moment from the checkpoint."""
    import json

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from pipelines.train import checkpoint as ckpt
    from pipelines.train.parallelize import apply_fsdp, build_mesh

    cfg = VLJEPAConfig.preset("tiny-text")
    d = tmp_path / "checkpoint_0000001"
    with _one_rank(tmp_path):
        torch.manual_seed(0)
        frozen = apply_fsdp(
            JointEmbedding(cfg, load_pretrained=False, freeze_y_embeddings=True), build_mesh(False)
        )
        opt = _step(frozen)
        model_sd, optim_sd = get_state_dict(frozen, opt)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(d))
        (d / ckpt.STATE_FILE).write_text(json.dumps({"step": 1}))
        torch.manual_seed(1)
        thawed = apply_fsdp(JointEmbedding(cfg, load_pretrained=False), build_mesh(False))
        opt2 = torch.optim.AdamW(thawed.param_groups(1e-2, 0.05))
        state = ckpt.load_into(ckpt.as_checkpoint(str(d)), thawed, opt2)
        _, resumed = get_state_dict(thawed, opt2)
    assert state["step"] == 1
    for k, v in thawed.state_dict().items():
        assert torch.equal(_whole(v), _whole(model_sd[k])), k
    table = "y_encoder.backbone.embeddings.word_embeddings.weight"
    assert table not in optim_sd["state"] and table in resumed["state"]
    assert not _whole(resumed["state"][table]["exp_avg"]).any()
    for k, v in optim_sd["state"].items():
        assert torch.equal(_whole(resumed["state"][k]["exp_avg"]), _whole(v["exp_avg"])), k


def test_freeze_y_embeddings_names_the_objective_without_a_y_encoder():
    with pytest.raises(ValueError, match="freeze_y_embeddings"):
        TrainConfig(data="x", objective="tokens", freeze_y_embeddings=True)


@pytest.mark.parametrize("loss", ["cosine", "l2"])
def test_regression_losses_train_both_towers_through_the_joint_module(loss):
    cfg = VLJEPAConfig.preset("tiny-text")
    torch.manual_seed(0)
    model = JointEmbedding(cfg, load_pretrained=False)
    y_before = _snapshot(model.y_encoder)
    _step(model, loss)
    assert any(not torch.equal(v, y_before[k]) for k, v in model.y_encoder.state_dict().items())


def test_objective_and_loss_fields():
    cfg = TrainConfig(data="X")
    assert (cfg.objective, cfg.loss) == ("embedding", "infonce")
    assert TrainConfig(data="X", objective="tokens").objective == "tokens"
    assert TrainConfig(data="X", loss="l2").loss == "l2"
    with pytest.raises(ValueError, match="loss of the embedding objective"):
        TrainConfig(data="X", objective="tokens", loss="cosine")
    with pytest.raises(ValueError):
        TrainConfig(data="X", objective="words")


def _features(y_tokenizer: str) -> Features:
    cfg = VLJEPAConfig.preset("tiny")
    y = cfg.y_encoder.model_copy(update={"tokenizer": y_tokenizer})
    return Features("F", [], cfg.x_encoder, y, "tiny", {})


def test_token_objective_needs_captions_in_the_predictors_tokenizer():
    tiny = VLJEPAConfig.preset("tiny")
    check_caption_tokenizer(_features("minilm"), tiny.predictor)  # same tokenizer: fine
    paper = VLJEPAConfig.preset("paper")  # Llama's tokenizer vs MiniLM-tokenised captions
    with pytest.raises(IncompatibleFeatures, match="--objective tokens") as e:
        check_caption_tokenizer(_features("minilm"), paper.predictor)
    assert "meta-llama/Llama-3.2-1B" in str(e.value) and "\n" not in str(e.value)


def test_each_distinct_target_is_encoded_once_with_the_same_values_and_gradients():
    """A stage-2 batch repeats a few answers: the Y-encoder runs once per distinct target text,
    and the targets and the Y-encoder's gradients are those of encoding every row."""
    cfg = VLJEPAConfig.preset("tiny-text")
    torch.manual_seed(0)
    # float64, no dropout: the comparison is of the maths, not of float32 summation order (a
    # gradient summed over 3 rows vs over 6 differs by rounding that varies with the CPU's SIMD).
    model = JointEmbedding(cfg, load_pretrained=False).double().eval()
    g = torch.Generator().manual_seed(1)
    answers = torch.randint(1000, 2000, (3, 5), generator=g)
    ids = answers[[0, 1, 0, 2, 1, 0]]
    mask = torch.ones_like(ids)
    mask[3, 3:] = 0  # same ids, shorter text: a different target
    seen: list[int] = []
    model.y_encoder.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape[0]))

    target = model.encode_targets(ids, mask)
    assert seen == [3]
    weights = torch.randn(target.shape, generator=g, dtype=torch.float64)
    (target * weights).sum().backward()
    deduped = {n: p.grad for n, p in model.y_encoder.named_parameters() if p.grad is not None}
    assert deduped

    model.zero_grad(set_to_none=True)
    every_row = model.y_encoder(ids, mask)
    (every_row * weights).sum().backward()
    torch.testing.assert_close(target, every_row, atol=1e-10, rtol=1e-9)
    plain = {n: p.grad for n, p in model.y_encoder.named_parameters() if p.grad is not None}
    assert plain.keys() == deduped.keys()
    for name, grad in plain.items():
        torch.testing.assert_close(deduped[name], grad, atol=1e-10, rtol=1e-9, msg=name)
    # A batch with no repeats takes the plain path.
    model.encode_targets(answers, torch.ones_like(answers))
    assert seen[-1] == 3
