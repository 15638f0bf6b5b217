"""InfoNCE against an independent cross_entropy reference, gathered negatives, diagnostics."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from jepa.loss import alignment, collapse_diagnostics, effective_rank, info_nce, uniformity


def _reference(pred, target, scale, all_target=None, all_pred=None, offset=0):
    """Written from the definition: softmax over candidates in both directions, averaged."""
    p, t = F.normalize(pred, dim=-1), F.normalize(target, dim=-1)
    at = t if all_target is None else F.normalize(all_target, dim=-1)
    ap = p if all_pred is None else F.normalize(all_pred, dim=-1)
    labels = torch.arange(pred.shape[0]) + offset
    return 0.5 * (
        F.cross_entropy(scale * p @ at.T, labels) + F.cross_entropy(scale * t @ ap.T, labels)
    )


def test_info_nce_matches_cross_entropy_reference_both_directions():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(6, 12, generator=g), torch.randn(6, 12, generator=g)
    loss, logits = info_nce(pred, target, 1 / 0.07)
    assert torch.allclose(loss, _reference(pred, target, 1 / 0.07), atol=1e-6)
    assert logits.shape == (6, 6)
    # Both directions count: swapping the roles gives the same symmetric loss...
    swapped, _ = info_nce(target, pred, 1 / 0.07)
    assert torch.allclose(loss, swapped, atol=1e-6)
    # ...and a one-directional loss differs from it in general.
    one_way = F.cross_entropy(logits, torch.arange(6))
    assert not torch.allclose(loss, one_way, atol=1e-4)


def test_info_nce_lower_for_aligned_pairs():
    g = torch.Generator().manual_seed(1)
    target = torch.randn(8, 16, generator=g)
    aligned = target + 0.05 * torch.randn(8, 16, generator=g)
    shuffled = aligned[torch.roll(torch.arange(8), 1)]
    assert info_nce(aligned, target, 10.0)[0] < info_nce(shuffled, target, 10.0)[0]
    assert (
        info_nce(aligned, target, 10.0)[0]
        < info_nce(torch.randn(8, 16, generator=g), target, 10.0)[0]
    )


def test_info_nce_with_gathered_negatives():
    g = torch.Generator().manual_seed(2)
    world, b, d, rank = 3, 4, 8, 1
    all_pred, all_target = (
        torch.randn(world * b, d, generator=g),
        torch.randn(world * b, d, generator=g),
    )
    pred = all_pred[rank * b : (rank + 1) * b].clone().requires_grad_(True)
    target = all_target[rank * b : (rank + 1) * b].clone()
    loss, logits = info_nce(
        pred, target, 5.0, all_target=all_target, all_pred=all_pred, offset=rank * b
    )
    ref = _reference(pred.detach(), target, 5.0, all_target, all_pred, rank * b)
    assert logits.shape == (b, world * b)
    assert torch.allclose(loss, ref, atol=1e-6)
    # The local block of the gathered logits is exactly the local-batch logits.
    local = info_nce(pred, target, 5.0)[1]
    assert torch.allclose(logits[:, rank * b : (rank + 1) * b], local, atol=1e-6)
    loss.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0


def test_collapse_diagnostics_separate_collapsed_from_spread():
    g = torch.Generator().manual_seed(3)
    spread = torch.randn(64, 16, generator=g)
    collapsed = torch.ones(64, 16) + 1e-4 * torch.randn(64, 16, generator=g)
    s, c = collapse_diagnostics(spread, spread), collapse_diagnostics(collapsed)
    assert set(s) == {"std", "effective_rank", "uniformity", "alignment"}
    assert s["std"] > 100 * c["std"]
    assert s["effective_rank"] > 10 and c["effective_rank"] < 1.1
    assert s["uniformity"] < -2 and abs(c["uniformity"]) < 1e-3
    assert s["alignment"] < 1e-6
    assert alignment(spread, -spread) > 3.9
    assert uniformity(spread) == s["uniformity"]
    assert abs(effective_rank(torch.eye(5)) - 5) < 1e-4


def test_rows_sharing_a_caption_are_not_negatives():
    """Clips with one caption (keys equal) drop out of each other's softmax in both directions,
    so the loss equals the reference over only the distinct-key candidates."""
    g = torch.Generator().manual_seed(3)
    pred, target = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    keys = torch.tensor([7, 7, 3, 9, 3])
    masked, _ = info_nce(pred, target, 4.0, keys=keys)
    assert not torch.allclose(masked, info_nce(pred, target, 4.0)[0])
    p, t = F.normalize(pred, dim=-1), F.normalize(target, dim=-1)
    terms = []
    for i in range(5):
        cand = [j for j in range(5) if j == i or keys[j] != keys[i]]
        pos = cand.index(i)
        for a, b in ((p, t), (t, p)):
            row = 4.0 * a[i] @ b[cand].T
            terms.append(-torch.log_softmax(row, 0)[pos])
    assert torch.allclose(masked, torch.stack(terms).sum() / 10, atol=1e-6)
    # Distinct keys mask nothing.
    distinct, _ = info_nce(pred, target, 4.0, keys=torch.arange(5))
    assert torch.allclose(distinct, info_nce(pred, target, 4.0)[0])


def test_duplicate_mask_uses_gathered_keys_and_offset():
    g = torch.Generator().manual_seed(4)
    all_pred, all_target = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    all_keys = torch.tensor([1, 2, 3, 1, 5, 2])  # rank 1 (rows 3..5) shares 1 and 2 with rank 0
    rank_rows = slice(3, 6)
    loss, _ = info_nce(
        all_pred[rank_rows],
        all_target[rank_rows],
        2.0,
        all_target=all_target,
        all_pred=all_pred,
        offset=3,
        keys=all_keys[rank_rows],
        all_keys=all_keys,
    )
    full, _ = info_nce(all_pred, all_target, 2.0, keys=all_keys)
    other, _ = info_nce(
        all_pred[:3],
        all_target[:3],
        2.0,
        all_target=all_target,
        all_pred=all_pred,
        offset=0,
        keys=all_keys[:3],
        all_keys=all_keys,
    )
    # The two ranks' local losses average to the loss over the whole gathered batch.
    assert torch.allclose((loss + other) / 2, full, atol=1e-6)


def test_groups_make_one_infonce_per_kind_of_row():
    """Stage 2's caption rows and question rows: each row's negatives are its own kind only, so
    the loss is the row-weighted mean of the two groups' own InfoNCE, on one rank or gathered."""
    g = torch.Generator().manual_seed(7)
    pred, target = torch.randn(7, 8, generator=g), torch.randn(7, 8, generator=g)
    groups = torch.tensor([0, 1, 1, 0, 1, 1, 1])
    mixed, _ = info_nce(pred, target, 3.0, groups=groups)
    per_group = [
        info_nce(pred[groups == k], target[groups == k], 3.0)[0] * int((groups == k).sum())
        for k in (0, 1)
    ]
    assert torch.allclose(mixed, sum(per_group) / 7, atol=1e-6)
    assert not torch.allclose(mixed, info_nce(pred, target, 3.0)[0])
    # Gathered: rank 1's rows 4..6 against every rank's columns, same groups.
    ranked, _ = info_nce(
        pred[4:],
        target[4:],
        3.0,
        all_target=target,
        all_pred=pred,
        offset=4,
        groups=groups[4:],
        all_groups=groups,
    )
    first, _ = info_nce(
        pred[:4],
        target[:4],
        3.0,
        all_target=target,
        all_pred=pred,
        offset=0,
        groups=groups[:4],
        all_groups=groups,
    )
    assert torch.allclose((4 * first + 3 * ranked) / 7, mixed, atol=1e-6)
