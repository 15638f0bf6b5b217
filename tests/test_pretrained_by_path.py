"""Pretrained backbones by name or path: the code that loads `facebook/vjepa2-vitl-fpc64-256`,
`meta-llama/Llama-3.2-1B` and `google/embeddinggemma-300m`, run on local folders.

Nothing can be downloaded here, so each test writes a tiny random model of the very class the
paper preset names (V-JEPA 2 `VJEPA2Model`; Llama-3.2 as its hub checkpoint is laid out,
`LlamaForCausalLM`, whose `LlamaModel` layers the predictor keeps; EmbeddingGemma's
`Gemma3TextModel`, model_type gemma3_text, bidirectional attention) with `save_pretrained`,
together with a small real tokenizer of that family (bos/eos/pad as Llama and Gemma have them),
and passes the folder where a hub name would go. The folders stand in for the hub only by path:
every line that runs after that (`jepa.pretrained`, `XEncoder.from_config`, `build_llama`,
`build_text_backbone`, `vljepa embed`, `vljepa train`, `VLJEPA.save_pretrained` /
`from_pretrained`, the Serve app) is the one a hub name goes through. The CLI run on these folders
(embed, train, export, Serve) is tests/test_fresh_folder.py's.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

# Tiny stand-ins, shaped unlike the tiny preset's own modules so that a field left at the
# preset's value (instead of read from the folder) fails.
VJEPA_KW = dict(
    crop_size=64,
    frames_per_clip=16,
    patch_size=16,
    tubelet_size=2,
    hidden_size=96,
    num_attention_heads=3,
    num_hidden_layers=2,
    mlp_ratio=2.0,
    pred_hidden_size=32,
    pred_num_attention_heads=1,
    pred_num_hidden_layers=1,
)
LLAMA_LAYERS, LLAMA_KEEP = 4, 2
GEMMA_HIDDEN = 64

LLAMA_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<unk>")
GEMMA_SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>")  # ids 0..3, as in Gemma's vocabulary

# Text for the unit tests' tokenizers (tests/test_fresh_folder.py adds its corpus's captions).
SAMPLE_TEXT = [
    "a red ball moves to the left",
    "the blue ball grows",
    "the room turns dark",
    "what colour is the ball?",
]


@dataclass(frozen=True)
class Folders:
    vjepa: str
    llama: str
    gemma: str


def _tokenizer(texts: list[str], specials: tuple[str, ...], bos: str, eos: str | None, **named):
    """A word-level fast tokenizer trained on `texts`, wrapped the way hub tokenizers load
    (`AutoTokenizer` reads it back from tokenizer.json)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=list(specials)))
    marks = [t for t in (bos, eos) if t]
    tk.post_processor = processors.TemplateProcessing(
        single=" ".join([bos, "$A"] + ([eos] if eos else [])),
        special_tokens=[(t, tk.token_to_id(t)) for t in marks],
    )
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token=bos, **named)


def _vocab(tok) -> int:
    return (len(tok) + 7) // 8 * 8  # a model's table may be larger than its tokenizer


def write_folders(root: Path, texts: list[str]) -> Folders:
    """The three checkpoints, each with its tokenizer, as `save_pretrained` writes them."""
    from transformers import (
        Gemma3TextConfig,
        Gemma3TextModel,
        LlamaConfig,
        LlamaForCausalLM,
        VJEPA2Config,
        VJEPA2Model,
    )

    torch.manual_seed(123)
    vjepa = root / "vjepa2-tiny"
    VJEPA2Model(VJEPA2Config(**VJEPA_KW)).save_pretrained(vjepa)

    llama = root / "llama-tiny"
    ltok = _tokenizer(texts, LLAMA_SPECIALS, "<|begin_of_text|>", None, eos_token="<|end_of_text|>")
    assert ltok.pad_token is None  # as Llama's: the predictor has to supply one
    lcfg = LlamaConfig(
        vocab_size=_vocab(ltok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=LLAMA_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=ltok.bos_token_id,
        eos_token_id=ltok.eos_token_id,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
    )
    LlamaForCausalLM(lcfg).save_pretrained(llama)  # Llama-3.2-1B's hub layout ("model." keys)
    ltok.save_pretrained(llama)

    gemma = root / "embeddinggemma-tiny"
    gtok = _tokenizer(texts, GEMMA_SPECIALS, "<bos>", "<eos>", eos_token="<eos>", pad_token="<pad>")
    gcfg = Gemma3TextConfig(
        vocab_size=_vocab(gtok),
        hidden_size=GEMMA_HIDDEN,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        query_pre_attn_scalar=32,
        max_position_embeddings=512,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention"],
        use_bidirectional_attention=True,
        pad_token_id=gtok.pad_token_id,
        bos_token_id=gtok.bos_token_id,
        eos_token_id=gtok.eos_token_id,
    )
    Gemma3TextModel(gcfg).save_pretrained(gemma)
    gtok.save_pretrained(gemma)
    return Folders(str(vjepa), str(llama), str(gemma))


def saved_weights(folder: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(os.path.join(folder, "model.safetensors"))


def _same_shapes(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Folders:
    return write_folders(tmp_path_factory.mktemp("hub-by-path"), SAMPLE_TEXT)


# ----------------------------------------------------------------------------- fast unit tests


def test_x_encoder_config_and_weights_from_folder(folders):
    from jepa.config import VLJEPAConfig
    from jepa.pretrained import x_encoder_config
    from jepa.x_encoder import XEncoder

    base = VLJEPAConfig.preset("tiny").x_encoder.model_copy(update={"fps": 4.0, "pad": True})
    cfg = x_encoder_config(folders.vjepa, base)
    assert cfg.name_or_path == folders.vjepa
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.mlp_ratio) == (96, 2, 3, 2.0)
    assert (cfg.patch_size, cfg.tubelet_size) == (16, 2)
    # the user's sampling, pooling, seed and dtype stay
    for k in ("image_size", "num_frames", "fps", "pad", "pool_temporal", "pool_spatial", "dtype"):
        assert getattr(cfg, k) == getattr(base, k), k

    enc = XEncoder.from_config(cfg)
    assert type(enc.vjepa).__name__ == "VJEPA2Model"
    want = saved_weights(folders.vjepa)
    got = enc.vjepa.state_dict()
    key = "encoder.layer.1.attention.query.weight"
    assert torch.equal(got[key], want[key])
    assert torch.equal(got["encoder.embeddings.patch_embeddings.proj.weight"],
                       want["encoder.embeddings.patch_embeddings.proj.weight"])  # fmt: skip
    frames = np.random.default_rng(0).integers(0, 256, (1, 16, 64, 64, 3), dtype=np.uint8)
    assert enc(frames).shape == (1, cfg.num_tokens, 96) == (1, 128, 96)
    # the random (meta-device) build of that config is the same architecture
    assert _same_shapes(XEncoder.from_config(cfg, load_pretrained=False), enc)
    # a config that does not describe the folder is refused, not silently used
    with pytest.raises(ValueError, match="do not match"):
        XEncoder.from_config(cfg.model_copy(update={"num_layers": 3}))


def test_predictor_config_keeps_last_layers_of_folder(folders):
    from jepa.config import VLJEPAConfig
    from jepa.predictor import Predictor, build_llama
    from jepa.pretrained import predictor_config

    base = VLJEPAConfig.preset("tiny").predictor
    cfg = predictor_config(folders.llama, base, keep_last_layers=LLAMA_KEEP)
    assert cfg.name_or_path == cfg.tokenizer == folders.llama
    assert cfg.keep_last_layers == LLAMA_KEEP
    assert cfg.arch["num_hidden_layers"] == LLAMA_KEEP and cfg.arch["hidden_size"] == 64
    assert cfg.arch["num_key_value_heads"] == 2 and cfg.arch["vocab_size"] >= 8
    assert (cfg.max_query_length, cfg.seed) == (base.max_query_length, base.seed)
    assert predictor_config(folders.llama, base).arch["num_hidden_layers"] == LLAMA_LAYERS
    with pytest.raises(ValueError, match="cannot keep"):
        predictor_config(folders.llama, base, keep_last_layers=LLAMA_LAYERS + 1)

    llama = build_llama(cfg)
    assert type(llama).__name__ == "LlamaModel" and len(llama.layers) == LLAMA_KEEP
    want = saved_weights(folders.llama)
    first_kept = LLAMA_LAYERS - LLAMA_KEEP
    for i in range(LLAMA_KEEP):  # the LAST layers, in order, renumbered from 0
        src = f"model.layers.{first_kept + i}.self_attn.q_proj.weight"
        assert torch.equal(llama.layers[i].self_attn.q_proj.weight, want[src])
        assert llama.layers[i].self_attn.layer_idx == i
    assert torch.equal(llama.embed_tokens.weight, want["model.embed_tokens.weight"])
    assert torch.equal(llama.norm.weight, want["model.norm.weight"])
    assert _same_shapes(build_llama(cfg, load_pretrained=False), llama)

    pred = Predictor(cfg, llama, x_dim=96, shared_dim=32)
    assert all(not layer.self_attn.is_causal for layer in pred.llama.layers)
    # Llama's tokenizer has no pad token: the predictor pads with end-of-text, the cached
    # tokenizer stays as loaded
    q = pred.tokenize(["what colour is the ball?", "the ball"], batch_size=2)
    assert pred.tokenizer.pad_token == "<|end_of_text|>"
    from jepa.text import load_tokenizer

    assert load_tokenizer(folders.llama).pad_token is None
    assert q["attention_mask"].sum(1).tolist() == [6, 2]  # no bos: queries add no specials
    out = pred(torch.randn(2, 128, 96), q["input_ids"], q["attention_mask"])
    assert out.shape == (2, 32) and torch.isfinite(out).all()


def test_y_encoder_config_gemma3_text_from_folder(folders):
    from jepa.config import VLJEPAConfig
    from jepa.pretrained import y_encoder_config
    from jepa.y_encoder import YEncoder, build_text_backbone

    base = VLJEPAConfig.preset("tiny").y_encoder
    cfg = y_encoder_config(folders.gemma, base)
    assert cfg.name_or_path == cfg.tokenizer == folders.gemma
    assert cfg.arch["model_type"] == "gemma3_text" and cfg.hidden_size == GEMMA_HIDDEN
    assert cfg.arch["use_bidirectional_attention"] is True
    assert (cfg.max_length, cfg.seed) == (base.max_length, base.seed)

    backbone = build_text_backbone(cfg)
    assert type(backbone).__name__ == "Gemma3TextModel"
    want = saved_weights(folders.gemma)
    for key in ("layers.1.self_attn.q_proj.weight", "embed_tokens.weight"):
        assert torch.equal(backbone.state_dict()[key], want[key]), key
    assert _same_shapes(build_text_backbone(cfg, load_pretrained=False), backbone)

    y = YEncoder(cfg, backbone, shared_dim=32).eval()
    enc = y.tokenize(["the red ball grows", "the red ball moves"])
    ids = enc["input_ids"]
    assert ids[0, 0] == y.tokenizer.bos_token_id and y.tokenizer.pad_token_id == 0
    # bidirectional: the first token's state depends on the last word
    with torch.no_grad():
        h = backbone(**enc).last_hidden_state
    assert not torch.allclose(h[0, 1], h[1, 1])
    assert y.encode(["a", "the blue ball grows"]).shape == (2, 32)


def test_offline_hub_names_fall_back_to_written_out_architecture():
    """Hub names that are not cached resolve to the architectures the paper preset writes out."""
    from jepa.config import VLJEPAConfig
    from jepa.pretrained import predictor_config, x_encoder_config, y_encoder_config

    paper, tiny = VLJEPAConfig.preset("paper"), VLJEPAConfig.preset("tiny")
    x = x_encoder_config(paper.x_encoder.name_or_path, tiny.x_encoder)
    assert (x.hidden_size, x.num_layers, x.image_size) == (1024, 24, tiny.x_encoder.image_size)
    # (fields a cached hub config would give too, so the test holds on a machine that has one)
    p = predictor_config(paper.predictor.name_or_path, tiny.predictor, keep_last_layers=8)
    assert p.keep_last_layers == p.arch["num_hidden_layers"] == 8
    for k in ("hidden_size", "vocab_size", "num_key_value_heads", "head_dim"):
        assert p.arch[k] == paper.predictor.arch[k], k
    assert p.tokenizer == paper.predictor.name_or_path
    y = y_encoder_config(paper.y_encoder.name_or_path, tiny.y_encoder)
    for k in ("model_type", "hidden_size", "use_bidirectional_attention", "num_hidden_layers"):
        assert y.arch[k] == paper.y_encoder.arch[k], k
    assert y.max_length == tiny.y_encoder.max_length
    # the MiniLM aliases keep meaning the packaged MiniLM
    assert y_encoder_config("minilm", tiny.y_encoder) == tiny.y_encoder


def test_embed_config_reads_the_folders(folders, tmp_path):
    from pipelines.embed.config import EmbedConfig

    cfg = EmbedConfig(
        manifest=str(tmp_path / "m.jsonl"),
        out=str(tmp_path / "out"),
        x_encoder=folders.vjepa,
        y_encoder=folders.gemma,
        frames=8,
    ).model()
    assert cfg.x_encoder.name_or_path == folders.vjepa and cfg.x_encoder.hidden_size == 96
    assert cfg.x_encoder.num_frames == 8  # the flags still win over the preset's sampling
    assert cfg.y_encoder.arch["model_type"] == "gemma3_text"
    assert cfg.y_encoder.tokenizer == folders.gemma
    random = EmbedConfig(manifest="m.jsonl", out="o", x_encoder="random").model()
    assert random.x_encoder.name_or_path is None and random.x_encoder.hidden_size == 192


def test_saved_model_carries_its_tokenizers(folders, tmp_path):
    """A model built from folders saves both tokenizers and loads, with the same answers, on a
    machine that has neither the Llama nor the Gemma folder (the X-encoder stays a reference)."""
    from jepa import pretrained
    from jepa.config import VLJEPAConfig
    from jepa.model import VLJEPA

    llama, gemma = tmp_path / "llama", tmp_path / "gemma"
    shutil.copytree(folders.llama, llama)
    shutil.copytree(folders.gemma, gemma)
    cfg = VLJEPAConfig.preset("tiny")
    cfg.x_encoder = pretrained.x_encoder_config(folders.vjepa, cfg.x_encoder)
    cfg.predictor = pretrained.predictor_config(str(llama), cfg.predictor, LLAMA_KEEP)
    cfg.y_encoder = pretrained.y_encoder_config(str(gemma), cfg.y_encoder)
    model = VLJEPA.from_config(cfg).eval()
    frames = np.random.default_rng(1).integers(0, 256, (2, 16, 64, 64, 3), dtype=np.uint8)
    queries = ["what colour is the ball?", "the room"]
    texts = ["the blue ball grows", "the room turns dark"]
    before = (model.embed_video(frames, queries), model.embed_text(texts))
    out = model.save_pretrained(tmp_path / "model")
    assert os.path.isfile(os.path.join(out, "predictor_tokenizer", "tokenizer.json"))
    assert os.path.isfile(os.path.join(out, "y_encoder_tokenizer", "tokenizer.json"))
    shutil.rmtree(llama)
    shutil.rmtree(gemma)

    from jepa.text import load_tokenizer

    load_tokenizer.cache_clear()
    loaded = VLJEPA.from_pretrained(out)
    assert type(loaded.x_encoder.vjepa).__name__ == "VJEPA2Model"
    assert len(loaded.predictor.llama.layers) == LLAMA_KEEP
    assert type(loaded.y_encoder.backbone).__name__ == "Gemma3TextModel"
    assert loaded.predictor.tokenizer.pad_token == "<|end_of_text|>"
    after = (loaded.embed_video(frames, queries), loaded.embed_text(texts))
    for a, b in zip(before, after, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- acceptance
# `vljepa embed --x-encoder DIR --y-encoder DIR`, `vljepa train --predictor DIR
# --predictor-layers 2 --y-encoder DIR` (3 steps), the export loaded back and the Serve app
# answering POST /v1/embed with that model: tests/test_fresh_folder.py, whose fresh-folder run
# (synth, embed, train, serve with no MLflow settings) uses these folders, so one embed/train/serve
# chain serves both (it uses `write_folders` and `saved_weights` from here).
