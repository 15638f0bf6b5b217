"""The frozen X-encoder: V-JEPA 2 vision features from raw uint8 frames.

It owns its preprocessing (temporal resample, resize short side + centre crop, ImageNet
normalisation) so callers hand over decoded frames as they come out of decord, and pre-embed
workers, trainers and the server cannot disagree about pixel handling. It is frozen for good:
no gradients, eval mode that `train()` cannot undo, inference mode on every call.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jepa.config import XEncoderConfig

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def vjepa2_config(cfg: XEncoderConfig):
    """The transformers VJEPA2Config for an X-encoder config (the V-JEPA predictor kept minimal:
    it is dropped after construction because only the encoder's features are used)."""
    from transformers import VJEPA2Config

    return VJEPA2Config(
        patch_size=cfg.patch_size,
        crop_size=cfg.image_size,
        frames_per_clip=cfg.num_frames,
        tubelet_size=cfg.tubelet_size,
        hidden_size=cfg.hidden_size,
        num_attention_heads=cfg.num_heads,
        num_hidden_layers=cfg.num_layers,
        mlp_ratio=cfg.mlp_ratio,
        pred_hidden_size=64,
        pred_num_attention_heads=1,
        pred_num_hidden_layers=1,
    )


class XEncoder(nn.Module):
    """Frozen V-JEPA 2 encoder: uint8 frames (B,T,H,W,3) -> tokens (B, num_tokens, hidden)."""

    def __init__(self, cfg: XEncoderConfig, vjepa):
        super().__init__()
        self.cfg = cfg
        # Only the encoder is used (skip_predictor=True); the V-JEPA predictor would be dead weight.
        vjepa.predictor = None
        self.vjepa = vjepa
        self.register_buffer(
            "mean", torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1), persistent=False
        )
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    @classmethod
    def from_config(cls, cfg: XEncoderConfig, *, load_pretrained: bool = True) -> XEncoder:
        """Build the encoder.

        `name_or_path=None`: random weights drawn from `cfg.seed` in a forked RNG, so every process
        builds the identical frozen encoder without touching the caller's random state.
        `load_pretrained=False` builds the architecture only (for the meta device / counting).
        """
        from transformers import VJEPA2Model

        if cfg.name_or_path and load_pretrained:
            log.info("loading V-JEPA 2 weights from %s", cfg.name_or_path)
            path = cfg.name_or_path
            if os.path.isdir(path):
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
            # The attention's 3-D RoPE reads the token grid from crop_size (no learned position
            # table), so the grid must be the one this config samples, whatever size the
            # checkpoint was trained at. float32 whatever the checkpoint holds; `cfg.dtype` below.
            vjepa = VJEPA2Model.from_pretrained(
                path,
                dtype=torch.float32,
                crop_size=cfg.image_size,
                frames_per_clip=cfg.num_frames,
            )
            got = vjepa.config
            have = (
                got.hidden_size,
                got.num_hidden_layers,
                got.num_attention_heads,
                float(got.mlp_ratio),
                got.patch_size,
                got.tubelet_size,
            )
            want = (
                cfg.hidden_size,
                cfg.num_layers,
                cfg.num_heads,
                float(cfg.mlp_ratio),
                cfg.patch_size,
                cfg.tubelet_size,
            )
            if have != want:
                raise ValueError(
                    f"{path}: hidden/layers/heads/mlp_ratio/patch/tubelet {have} do not match the "
                    f"config's {want} (fill the config with jepa.pretrained.x_encoder_config)"
                )
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                vjepa = VJEPA2Model(vjepa2_config(cfg))
        enc = cls(cfg, vjepa)
        dtype = _DTYPES[cfg.dtype]
        if dtype != torch.float32:
            enc.vjepa.to(dtype)
        return enc

    # The encoder never trains: keep eval mode whatever the parent module asks for.
    def train(self, mode: bool = True) -> XEncoder:  # noqa: ARG002 - nn.Module API
        return super().train(False)

    @property
    def num_frames(self) -> int:
        return self.cfg.num_frames

    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    @property
    def hidden_size(self) -> int:
        return self.cfg.hidden_size

    @property
    def num_tokens(self) -> int:
        return self.cfg.num_tokens

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def preprocess(self, frames) -> torch.Tensor:
        """uint8 (T,H,W,3) or (B,T,H,W,3) array/tensor -> float (B,T,3,S,S), normalised.

        Clips with a different frame count are resampled uniformly to `num_frames`; frames are
        resized so the short side is S (antialiased), then centre-cropped to S x S.
        """
        x = torch.as_tensor(np.asarray(frames) if not torch.is_tensor(frames) else frames)
        if x.ndim == 4:
            x = x.unsqueeze(0)
        if x.ndim != 5 or x.shape[-1] != 3:
            raise ValueError(f"expected frames (B,T,H,W,3) or (T,H,W,3), got {tuple(x.shape)}")
        x = x.to(self.device)
        b, t, h, w, _ = x.shape
        if t != self.num_frames:
            idx = torch.linspace(0, t - 1, self.num_frames, device=x.device).round().long()
            x = x.index_select(1, idx)
            t = self.num_frames
        x = x.permute(0, 1, 4, 2, 3).reshape(b * t, 3, h, w).float().div_(255.0)
        s = self.image_size
        if (h, w) != (s, s):
            scale = s / min(h, w)
            nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
            x = F.interpolate(
                x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True
            )
            top, left = (nh - s) // 2, (nw - s) // 2
            x = x[:, :, top : top + s, left : left + s]
        x = x.reshape(b, t, 3, s, s)
        return (x - self.mean) / self.std

    def _pool(self, tokens: torch.Tensor) -> torch.Tensor:
        pt, ps = self.cfg.pool_temporal, self.cfg.pool_spatial
        if pt == 1 and ps == 1:
            return tokens
        t, s = self.cfg.grid()
        b, _, d = tokens.shape
        # Token order out of the Conv3d patch embedding is (t, h, w).
        grid = tokens.transpose(1, 2).reshape(b, d, t, s, s)
        grid = F.avg_pool3d(grid, kernel_size=(pt, ps, ps))
        # Contiguous: a transposed view stays one through clone() and numpy(), and Arrow's
        # FixedShapeTensorArray reads a non-C-ordered array as the transposed shape.
        return grid.flatten(2).transpose(1, 2).contiguous()

    def forward(self, frames) -> torch.Tensor:
        """uint8 frames -> visual tokens (B, num_tokens, hidden_size), in float32.

        Computed under inference mode, then cloned outside it: an inference tensor could not be
        fed to the trainable predictor (autograd refuses to save it for backward)."""
        with torch.inference_mode():
            pixels = self.preprocess(frames).to(self.vjepa.dtype)
            out = self.vjepa(pixel_values_videos=pixels, skip_predictor=True)
            tokens = self._pool(out.last_hidden_state.float())
        return tokens.clone()

    def encode_numpy(self, frames: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """uint8 (B,T,H,W,3) -> float16 (B, num_tokens, hidden_size): the stored Parquet form."""
        frames = np.asarray(frames)
        if frames.ndim == 4:
            frames = frames[None]
        outs = [
            self.forward(frames[i : i + batch_size]).to(torch.float16).cpu().numpy()
            for i in range(0, len(frames), batch_size)
        ]
        if not outs:
            return np.zeros((0, self.num_tokens, self.hidden_size), np.float16)
        return np.concatenate(outs, axis=0)
