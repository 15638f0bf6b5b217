"""Parameter counts per module for a preset, beside the paper's published sizes.

The model is built on the meta device from the architectures written in `jepa.presets`, so even
the 1.4B-parameter paper preset is counted in seconds with no download and no memory. Counts are
what the built modules hold; nothing is rounded up to meet the paper's figures.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from jepa.config import VLJEPAConfig
from jepa.saved import count_params

# Published sizes (VL-JEPA paper, arXiv 2512.10942). The total is given only as "1.6B".
PAPER_SIZES = {
    "x_encoder": 304e6,  # V-JEPA 2 ViT-L/16, frozen
    "predictor_layers": 490e6,  # last 8 layers of Llama-3.2-1B ("0.5B predictor")
    "y_backbone": 300e6,  # EmbeddingGemma-300M
}
PAPER_TOTAL = 1.6e9


@dataclass
class Row:
    module: str
    trainable: int
    frozen: int
    paper: float | None = None
    note: str = ""

    @property
    def total(self) -> int:
        return self.trainable + self.frozen


def build_meta(cfg: VLJEPAConfig, with_decoder: bool = True):
    """The model on the meta device: shapes only, no weights, no download."""
    from jepa.model import VLJEPA

    with torch.device("meta"):
        return VLJEPA.from_config(cfg, load_pretrained=False, with_decoder=with_decoder)


def model_info(preset: str) -> dict:
    cfg = VLJEPAConfig.preset(preset)
    model = build_meta(cfg, with_decoder=cfg.y_decoder is not None)
    is_paper = preset == "paper"
    pred = model.predictor
    n_layers = len(pred.llama.layers)
    layers_t, layers_f = count_params(pred.llama.layers)
    table_t, table_f = count_params(pred.llama.embed_tokens)
    pred_t, pred_f = count_params(pred)
    y_back = count_params(model.y_encoder.backbone)
    y_head = count_params(model.y_encoder.head)
    scale = (
        (int(model.logit_scale.numel()), 0)
        if isinstance(model.logit_scale, nn.Parameter)
        else (0, 0)
    )
    x_name = cfg.x_encoder.name_or_path or f"random V-JEPA 2 (seed {cfg.x_encoder.seed})"
    p_name = cfg.predictor.name_or_path or "random Llama"
    y_name = cfg.y_encoder.name_or_path or "random " + cfg.y_encoder.arch["model_type"]
    rows = [
        Row(
            "X-encoder",
            *count_params(model.x_encoder),
            PAPER_SIZES["x_encoder"] if is_paper else None,
            f"{x_name}; encoder only",
        ),
        Row(
            f"predictor: {n_layers} Llama layers",
            layers_t,
            layers_f,
            PAPER_SIZES["predictor_layers"] if is_paper else None,
            p_name
            + (
                f", last {cfg.predictor.keep_last_layers}" if cfg.predictor.keep_last_layers else ""
            ),
        ),
        Row(
            "predictor: token table",
            table_t,
            table_f,
            None,
            f"{pred.llama.config.vocab_size} x {pred.hidden_size}"
            + (" (paper: Llama's, size not stated)" if is_paper else ""),
        ),
        Row(
            "predictor: in-proj, norm, head",
            pred_t - layers_t - table_t,
            pred_f - layers_f - table_f,
            None,
            f"{model.x_encoder.hidden_size} -> {pred.hidden_size} -> {cfg.shared_dim}",
        ),
        Row(
            "Y-encoder backbone",
            *y_back,
            PAPER_SIZES["y_backbone"] if is_paper else None,
            y_name,
        ),
        Row("Y-encoder head", *y_head, None, f"{model.y_encoder.backbone_dim} -> {cfg.shared_dim}"),
    ]
    if scale[0]:
        rows.append(Row("logit scale", *scale, None, "learnable temperature"))
    total = Row("total (VL-JEPA)", sum(r.trainable for r in rows), sum(r.frozen for r in rows))
    if is_paper:
        total.paper = PAPER_TOTAL
    decoder = None
    if model.y_decoder is not None:
        decoder = Row(
            "Y-decoder (separate)", *count_params(model.y_decoder), None, "not in the total"
        )
    return {
        "preset": preset,
        "rows": [asdict(r) | {"total": r.total} for r in rows],
        "total": asdict(total) | {"total": total.total},
        "y_decoder": None if decoder is None else asdict(decoder) | {"total": decoder.total},
        "account": account(total.total) if is_paper else None,
    }


def account(total: int) -> str:
    """One line on how our total relates to the paper's unitemised 1.6B."""
    named = sum(PAPER_SIZES.values())
    diff = total - PAPER_TOTAL
    return (
        f"ours {total / 1e9:.2f}B vs paper 1.6B ({diff / 1e9:+.2f}B): the paper does not itemise "
        f"1.6B; its named parts (304M + 490M + 300M = {named / 1e9:.2f}B) plus the Llama token "
        f"table and heads we count still leave the gap; counts are as built, not padded."
    )


def _fmt(n: float | None) -> str:
    if n is None:
        return "-"
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}K"
    return str(int(n))


def format_table(info: dict) -> str:
    rows = info["rows"] + [info["total"]] + ([info["y_decoder"]] if info["y_decoder"] else [])
    header = ("module", "trainable", "frozen", "total", "paper", "note")
    lines = [
        (
            r["module"],
            _fmt(r["trainable"]),
            _fmt(r["frozen"]),
            _fmt(r["total"]),
            _fmt(r["paper"]),
            r["note"],
        )
        for r in rows
    ]
    widths = [max(len(str(x[i])) for x in [header, *lines]) for i in range(len(header))]
    out = [f"preset: {info['preset']}"]
    fmt = "  ".join(f"{{:{'<' if i in (0, 5) else '>'}{w}}}" for i, w in enumerate(widths))
    out.append(fmt.format(*header).rstrip())
    out.append("  ".join("-" * w for w in widths))
    for i, line in enumerate(lines):
        if i == len(info["rows"]):
            out.append("  ".join("-" * w for w in widths))
        out.append(fmt.format(*line).rstrip())
    if info["account"]:
        out.append(info["account"])
    return "\n".join(out)
