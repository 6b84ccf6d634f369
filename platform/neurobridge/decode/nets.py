"""Volume decoders: a session's voxel vector scattered back into its grid, then a small 3-D CNN or a 3-D ViT.

The grid is the bounding box of the session's selected voxels (their ``units`` coordinates) plus a margin, rounded
up to whole ViT patches; voxels outside the selection are zero. The ViT embeds patches with a strided ``Conv3d``
(kernel = stride = patch), prepends a CLS token, adds learned positions, and reads the output from the CLS token;
its last block keeps the CLS token's attention, which ``attention_shares`` turns into the share of attention that
falls on each ROI (a patch counts for an ROI in proportion to the ROI's voxels in it). Both nets take ``forward(x,
session)`` like the alignment projector, with one net per session (subjects have different grids).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from neurobridge.decode.config import VolumeConfig


class VolumeLayout:
    """Where each feature of a session lands in its cropped grid, and which region each feature belongs to."""

    def __init__(self, coords: np.ndarray, regions: np.ndarray, cfg: VolumeConfig):
        coords = np.asarray(coords, dtype=np.int64)
        lo = coords.min(axis=0) - cfg.margin
        size = coords.max(axis=0) - lo + 1 + cfg.margin
        size = np.maximum(-(-size // cfg.patch) * cfg.patch, cfg.patch)
        self.shape = tuple(int(s) for s in size)
        self.flat = torch.as_tensor(np.ravel_multi_index(tuple((coords - lo).T), self.shape))
        self.regions = np.asarray(regions).astype(str)

    def volumes(self, x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros(len(x), int(np.prod(self.shape)))
        out[:, self.flat.to(x.device)] = x
        return out.view(len(x), 1, *self.shape)

    def patch_regions(self, patch: int) -> tuple[list[str], np.ndarray]:
        """(region names, [patches, regions] share of each patch's selected voxels in each region)."""
        names = sorted(set(self.regions.tolist()))
        idx = np.stack(np.unravel_index(self.flat.numpy(), self.shape), axis=1) // patch
        grid = np.asarray(self.shape) // patch
        p = np.ravel_multi_index(tuple(idx.T), tuple(grid))
        counts = np.zeros((int(np.prod(grid)), len(names)))
        np.add.at(counts, (p, np.searchsorted(names, self.regions)), 1.0)
        return names, counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)


class CNN3D(nn.Module):
    def __init__(self, channels: list[int], out_dim: int, dropout: float):
        super().__init__()
        layers: list[nn.Module] = []
        prev = 1
        for c in channels:
            layers += [nn.Conv3d(prev, c, 3, padding=1), nn.GELU(), nn.MaxPool3d(2, ceil_mode=True)]
            prev = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(  # coarse layout kept: a decoder needs where, not only what
            nn.AdaptiveAvgPool3d(2), nn.Flatten(), nn.Dropout(dropout), nn.Linear(prev * 8, out_dim)
        )

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(v))


class _Block(nn.Module):
    def __init__(self, d: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        hidden = int(d * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, d))
        self.weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, keep: bool = False) -> torch.Tensor:
        h = self.n1(x)
        a, w = self.attn(h, h, h, need_weights=keep, average_attn_weights=True)
        self.weights = w.detach() if keep else None
        x = x + a
        return x + self.mlp(self.n2(x))


class ViT3D(nn.Module):
    def __init__(self, shape: tuple[int, int, int], cfg: VolumeConfig, out_dim: int):
        super().__init__()
        d, p = cfg.embed_dim, cfg.patch
        self.embed = nn.Conv3d(1, d, kernel_size=p, stride=p)
        n = int(np.prod(np.asarray(shape) // p))
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, n + 1, d) * 0.02)
        self.blocks = nn.ModuleList([_Block(d, cfg.heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, out_dim)
        self.keep_attention = False

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        x = self.embed(v).flatten(2).transpose(1, 2)  # [B, patches, d]
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], dim=1) + self.pos
        for i, block in enumerate(self.blocks):
            x = block(x, keep=self.keep_attention and i == len(self.blocks) - 1)
        return self.head(self.norm(x[:, 0]))

    def cls_attention(self) -> torch.Tensor | None:
        """[B, patches]: the last block's attention of the CLS token to each patch (from the last forward)."""
        w = self.blocks[-1].weights
        return None if w is None else w[:, 0, 1:]


class VolumeDecoder(nn.Module):
    """``forward(x, session)``: standardise the session's voxel vector, scatter it into its grid, run its net."""

    def __init__(self, layouts: dict[str, VolumeLayout], arch: str, cfg: VolumeConfig, out_dim: int):
        super().__init__()
        self.keys = sorted(layouts)
        self.layouts, self.arch, self.cfg = layouts, arch, cfg
        make = (
            (lambda s: ViT3D(s, cfg, out_dim))
            if arch == "vit3d"
            else (lambda s: CNN3D(cfg.cnn_channels, out_dim, cfg.dropout))
        )
        self.nets = nn.ModuleList([make(layouts[k].shape) for k in self.keys])
        for i, k in enumerate(self.keys):
            n = len(layouts[k].flat)
            self.register_buffer(f"mean_{i}", torch.zeros(n))
            self.register_buffer(f"std_{i}", torch.ones(n))

    def set_normalizer(self, session: str, mean: np.ndarray, std: np.ndarray) -> None:
        i = self.keys.index(session)
        getattr(self, f"mean_{i}").copy_(torch.as_tensor(mean, dtype=torch.float32))
        getattr(self, f"std_{i}").copy_(torch.as_tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor, session: str) -> torch.Tensor:
        i = self.keys.index(session)
        x = (x - getattr(self, f"mean_{i}")) / getattr(self, f"std_{i}")
        return self.nets[i](self.layouts[session].volumes(x))

    @torch.no_grad()
    def attention_shares(self, x: torch.Tensor, session: str) -> dict[str, float]:
        """Mean share of the CLS token's last-block attention that lands on each ROI (ViT only)."""
        net = self.nets[self.keys.index(session)]
        if not isinstance(net, ViT3D):
            return {}
        net.keep_attention = True
        try:
            self.eval()
            self(x, session)
            att = net.cls_attention().mean(dim=0).cpu().numpy()  # [patches]
        finally:
            net.keep_attention = False
        names, share = self.layouts[session].patch_regions(self.cfg.patch)
        per = att @ share
        return dict(zip(names, (per / max(per.sum(), 1e-12)).tolist(), strict=True))
