"""Named model presets: tiny (CPU default), tiny-text (fastest, unit tests), paper, bench.

Architectures of pretrained parts (V-JEPA 2 ViT-L, Llama-3.2-1B, EmbeddingGemma-300M,
all-MiniLM-L6-v2) are written out here from their published config.json files, so a preset can
be built on the meta device and counted without downloading anything.
"""

from __future__ import annotations

from typing import Any

from jepa.config import (
    PRESETS,
    PredictorConfig,
    VLJEPAConfig,
    XEncoderConfig,
    YDecoderConfig,
    YEncoderConfig,
)

MINILM_VOCAB = 30522

# all-MiniLM-L6-v2 (BertModel), as in its config.json.
MINILM_ARCH: dict[str, Any] = {
    "model_type": "bert",
    "vocab_size": MINILM_VOCAB,
    "hidden_size": 384,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
}

# A random BERT small enough that a forward pass is ~1 ms: unit tests only.
TINY_BERT_ARCH: dict[str, Any] = {
    "model_type": "bert",
    "vocab_size": MINILM_VOCAB,
    "hidden_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 256,
    "max_position_embeddings": 128,
    "type_vocab_size": 2,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
    "pad_token_id": 0,
}

# google/embeddinggemma-300m (Gemma3TextModel, bidirectional attention), as in its config.json.
# The sentence-transformers Dense layers (768->3072->768) sit outside the HF model and are not
# used: our own linear head maps 768 -> shared_dim instead.
EMBEDDINGGEMMA_ARCH: dict[str, Any] = {
    "model_type": "gemma3_text",
    "vocab_size": 262144,
    "hidden_size": 768,
    "intermediate_size": 1152,
    "num_hidden_layers": 24,
    "num_attention_heads": 3,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "max_position_embeddings": 2048,
    "query_pre_attn_scalar": 256,
    "rms_norm_eps": 1e-6,
    "hidden_activation": "gelu_pytorch_tanh",
    "sliding_window": 257,
    "use_bidirectional_attention": True,
    "pad_token_id": 0,
    "bos_token_id": 2,
    "eos_token_id": 1,
}

# meta-llama/Llama-3.2-1B with only the 8 layers the predictor keeps (of 16).
LLAMA_3_2_1B_LAST8_ARCH: dict[str, Any] = {
    "vocab_size": 128256,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 8,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
    "rope_parameters": {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    "tie_word_embeddings": True,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
}
LLAMA_3_2_1B_TOTAL_LAYERS = 16

TINY_LLAMA_ARCH: dict[str, Any] = {
    "vocab_size": MINILM_VOCAB,
    "hidden_size": 256,
    "intermediate_size": 1024,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "pad_token_id": 0,
}

BENCH_LLAMA_ARCH: dict[str, Any] = {
    "vocab_size": MINILM_VOCAB,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "pad_token_id": 0,
}


def _tiny() -> VLJEPAConfig:
    return VLJEPAConfig(
        preset_name="tiny",
        x_encoder=XEncoderConfig(),  # 64 px, 16 frames, 16 px patches, tubelet 2 -> 128 x 192
        # Random predictor layers know no words: MiniLM reads the query (jepa/query_encoder.py).
        predictor=PredictorConfig(
            arch=dict(TINY_LLAMA_ARCH), tokenizer="minilm", query_encoder="minilm"
        ),
        y_encoder=YEncoderConfig(name_or_path="minilm", arch=dict(MINILM_ARCH)),
        y_decoder=YDecoderConfig(),
        shared_dim=256,
    )


def _tiny_text() -> VLJEPAConfig:
    cfg = _tiny()
    cfg.preset_name = "tiny-text"
    # The predictor's own token table (the paper's path), so unit tests cover it.
    cfg.predictor.query_encoder = None
    cfg.y_encoder = YEncoderConfig(name_or_path=None, arch=dict(TINY_BERT_ARCH), max_length=32)
    return cfg


def _paper() -> VLJEPAConfig:
    return VLJEPAConfig(
        preset_name="paper",
        x_encoder=XEncoderConfig(
            name_or_path="facebook/vjepa2-vitl-fpc64-256",
            hidden_size=1024,
            num_layers=24,
            num_heads=16,
            image_size=256,
            num_frames=16,
        ),  # 8 x 16 x 16 = 2048 tokens x 1024
        predictor=PredictorConfig(
            name_or_path="meta-llama/Llama-3.2-1B",
            keep_last_layers=8,
            arch=dict(LLAMA_3_2_1B_LAST8_ARCH),
            tokenizer="meta-llama/Llama-3.2-1B",
            max_query_length=512,
        ),
        y_encoder=YEncoderConfig(
            name_or_path="google/embeddinggemma-300m",
            arch=dict(EMBEDDINGGEMMA_ARCH),
            tokenizer="google/embeddinggemma-300m",
            max_length=512,
        ),
        # The paper does not describe its decoder; ours is a small GPT-2 built in code.
        y_decoder=YDecoderConfig(n_layer=6, n_embd=512, n_head=8, n_prefix=8, max_len=64),
        shared_dim=1536,
    )


def _bench() -> VLJEPAConfig:
    """Paper proportions scaled down: frozen ViT > predictor > text model, GQA Llama blocks."""
    return VLJEPAConfig(
        preset_name="bench",
        x_encoder=XEncoderConfig(
            hidden_size=384, num_layers=6, num_heads=6, image_size=128, num_frames=16
        ),  # 8 x 8 x 8 = 512 tokens x 384
        predictor=PredictorConfig(
            arch=dict(BENCH_LLAMA_ARCH), tokenizer="minilm", max_query_length=64
        ),
        y_encoder=YEncoderConfig(name_or_path="minilm", arch=dict(MINILM_ARCH)),
        y_decoder=YDecoderConfig(),
        shared_dim=512,
    )


_BUILDERS = {"tiny": _tiny, "tiny-text": _tiny_text, "paper": _paper, "bench": _bench}
assert set(_BUILDERS) == set(PRESETS)


def build_preset(name: str) -> VLJEPAConfig:
    try:
        return _BUILDERS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}") from None
