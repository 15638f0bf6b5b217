"""The loss ablation's regression losses: values on hand-made vectors, gradients against a
finite-difference reference, the InfoNCE-compatible signature, and the name lookup."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from jepa.loss import LOSSES, cosine_regression, get_loss, info_nce, l2_regression


def test_known_values_on_hand_made_vectors():
    # pairs at 0, 90 and 180 degrees; lengths differ, so only the direction may count
    pred = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    target = torch.tensor([[5.0, 0.0], [1.0, 0.0], [0.5, 0.0]])
    cos, _ = cosine_regression(pred, target, 1.0)
    l2, _ = l2_regression(pred, target, 1.0)
    # 1 - cos: 0, 1, 2 -> mean 1;  |p - t|^2 of unit vectors: 0, 2, 4 -> mean 2
    assert cos.item() == pytest.approx(1.0, abs=1e-6)
    assert l2.item() == pytest.approx(2.0, abs=1e-6)
    # 45 degrees: 1 - cos = 1 - 1/sqrt(2); |p - t|^2 = 2 - sqrt(2)
    p, t = torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 7.0]])
    assert cosine_regression(p, t, 1.0)[0].item() == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-6)
    assert l2_regression(p, t, 1.0)[0].item() == pytest.approx(2 - math.sqrt(2), abs=1e-6)


def test_zero_at_alignment_and_scale_invariant():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(5, 8, generator=g)
    for fn in (cosine_regression, l2_regression):
        assert fn(3.0 * t, t, 1.0)[0].item() == pytest.approx(0.0, abs=1e-6)
        p = torch.randn(5, 8, generator=g)
        assert fn(p, t, 1.0)[0].item() == pytest.approx(fn(7.0 * p, 0.5 * t, 1.0)[0].item())


def _numeric_grad(fn, pred, target, eps=1e-3):
    grad = torch.zeros_like(pred)
    for i in range(pred.shape[0]):
        for j in range(pred.shape[1]):
            up, down = pred.clone(), pred.clone()
            up[i, j] += eps
            down[i, j] -= eps
            grad[i, j] = (fn(up, target, 1.0)[0] - fn(down, target, 1.0)[0]) / (2 * eps)
    return grad


@pytest.mark.parametrize("fn", [cosine_regression, l2_regression])
def test_gradients_match_finite_differences_and_only_positives_count(fn):
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(4, 6, generator=g, dtype=torch.float64)
    target = torch.randn(4, 6, generator=g, dtype=torch.float64)
    p = pred.clone().requires_grad_(True)
    loss, _ = fn(p, target, 1.0)
    loss.backward()
    assert torch.allclose(
        p.grad.double(), _numeric_grad(fn, pred, target).double(), rtol=1e-2, atol=5e-4
    )
    # the gradient is tangent to the unit sphere at each prediction (no push along p itself)
    assert torch.allclose(
        (p.grad * F.normalize(pred, dim=-1)).sum(-1), torch.zeros(4, dtype=torch.float64), atol=1e-6
    )
    # no negatives: row i's gradient ignores every other row's target
    other = target.clone()
    other[1:] = torch.randn(3, 6, generator=g, dtype=torch.float64)
    q = pred.clone().requires_grad_(True)
    fn(q, other, 1.0)[0].backward()
    assert torch.allclose(q.grad[0], p.grad[0])


def test_l2_is_twice_cosine_on_unit_vectors():
    g = torch.Generator().manual_seed(2)
    pred, target = torch.randn(16, 32, generator=g), torch.randn(16, 32, generator=g)
    assert l2_regression(pred, target, 1.0)[0].item() == pytest.approx(
        2 * cosine_regression(pred, target, 1.0)[0].item(), rel=1e-5
    )


def test_same_signature_as_info_nce_with_gathered_rows():
    """The trainer calls every loss the same way; the diagnostic logits match InfoNCE's."""
    g = torch.Generator().manual_seed(3)
    world, b, d, rank = 2, 3, 8, 1
    all_pred, all_target = (
        torch.randn(world * b, d, generator=g),
        torch.randn(world * b, d, generator=g),
    )
    pred, target = all_pred[rank * b : (rank + 1) * b], all_target[rank * b : (rank + 1) * b]
    all_keys = torch.arange(world * b)
    kw = dict(
        all_target=all_target,
        all_pred=all_pred,
        offset=rank * b,
        keys=all_keys[rank * b : (rank + 1) * b],
        all_keys=all_keys,
    )
    _, ref_logits = info_nce(pred, target, 10.0, **kw)
    for name in ("cosine", "l2"):
        loss, logits = get_loss(name)(pred, target, 10.0, **kw)
        assert loss.ndim == 0 and logits.shape == (b, world * b)
        assert torch.allclose(logits, ref_logits, atol=1e-5)
        # the gathered rows change the diagnostics only, never the loss
        alone, _ = get_loss(name)(pred, target, 10.0)
        assert torch.allclose(loss, alone)


def test_loss_lookup():
    assert set(LOSSES) == {"infonce", "cosine", "l2"}
    assert get_loss("infonce") is info_nce
    with pytest.raises(ValueError, match="unknown loss"):
        get_loss("l1")
