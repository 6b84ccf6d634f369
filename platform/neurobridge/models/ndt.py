"""Masked autoencoder over neuron-patch tokens with context tokens and mode prompts (NDT2 + MtM ideas).

Units differ between sessions (no correspondence, random loadings), so besides the shared patch read-in and
read-out every unit has its own rows in two tables keyed by (session, unit id): a read-in vector added to its patch
token in proportion to its value, and a read-out vector + bias that turn the decoder token into that unit's
log-rate. Both start at zero (the shared model) and are what a new session's fine-tuning mostly learns; units with
no row (unknown at training time) share the UNK row.

The encoder runs on the visible tokens only (gathered into a shorter sequence, so its cost scales with what is
visible); a lighter decoder sees encoder outputs scattered back to their positions plus a learned mask token
everywhere else, and predicts every unit of every token. The loss scores only target cells of real units.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from neurobridge.models.blocks import Stack
from neurobridge.models.config import ALL_PROMPTS, ModelConfig
from neurobridge.models.masking import MaskResult, no_mask, sample_mask
from neurobridge.models.patching import CONTEXT, Batch, unpatchify
from neurobridge.models.vocab import UNK, Vocabularies

N_CTX = len(CONTEXT) + 1  # session, subject, task, dataset, mode prompt
# Position codes start small next to the value projection: at unit scale they drown the sparse spike-count signal
# of each token and the model first spends hundreds of steps learning to amplify its input.
POS_SCALE = 0.2


@dataclass
class ModelOutput:
    loss: torch.Tensor  # scalar: Poisson NLL per target count cell + MSE per target MUA cell
    poisson_nll: torch.Tensor  # mean over target count cells (nats, includes log n!)
    mse: torch.Tensor  # mean over target MUA cells
    n_cells: torch.Tensor  # number of scored cells
    log_rate: torch.Tensor  # [B, N, k] clamped log expected count per bin
    mua: torch.Tensor  # [B, N, k]
    mask: MaskResult
    nll_sum: torch.Tensor  # the sums behind the means, so parts of one step combine into one mean
    se_sum: torch.Tensor
    n_counts: torch.Tensor
    n_mua: torch.Tensor


@dataclass
class Latents:
    context: torch.Tensor  # [B, N_CTX, d] encoder outputs of the context tokens
    tokens: torch.Tensor  # [B, N, d] encoder outputs scattered to token positions (0 where not visible)
    token_valid: torch.Tensor  # [B, N] tokens that were visible

    def pooled(self) -> torch.Tensor:
        """Mean over visible tokens [B, d] (what alignment projects)."""
        w = self.token_valid.unsqueeze(-1).to(self.tokens.dtype)
        return (self.tokens * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)


def _grow(table: nn.Embedding, n: int) -> None:
    """Append ``n`` rows copied from the UNK row (as ``Vocab.extend`` does for the table it is given)."""
    if n:
        old = table.weight.data
        table.weight = nn.Parameter(
            torch.cat([old, old[UNK : UNK + 1].expand(n, -1).clone()]), requires_grad=table.weight.requires_grad
        )
        table.num_embeddings = old.shape[0] + n


def bin_means(values: torch.Tensor, times: torch.Tensor, keep: torch.Tensor, n_bins: int) -> torch.Tensor:
    """[B, T, d]: the mean of ``values`` [B, N, d] over the tokens of each time bin (``times`` [B, N]) that ``keep``
    [B, N] marks; bins without such a token get zeros."""
    B, _, d = values.shape
    w = keep.to(values.dtype).unsqueeze(-1)
    sums = torch.zeros(B, n_bins, d, dtype=values.dtype, device=values.device)
    sums.scatter_add_(1, times[..., None].expand(-1, -1, d), values * w)
    n = torch.zeros(B, n_bins, 1, dtype=values.dtype, device=values.device).scatter_add_(1, times[..., None], w)
    return sums / n.clamp_min(1.0)


def smooth_in_time(x: torch.Tensor, batch: Batch, sigma: float) -> torch.Tensor:
    """Gaussian smoothing of per-token outputs [B, P*T, k] along each patch's time axis, over real bins only.

    A smoothness prior on the predicted rates: per-bin predictions from a small recording are noisy where true rates
    are smooth. Each output mixes predictions (never targets) of the same unit at nearby bins, so no masked value
    reaches it. Padding bins get zero weight, and the kernel is renormalised at window edges.
    """
    B, P, T = batch.shape
    k = x.shape[-1]
    half = min(int(3 * sigma + 0.5), T - 1)
    offsets = torch.arange(-half, half + 1, device=x.device, dtype=x.dtype)
    w = torch.exp(-0.5 * (offsets / sigma) ** 2).view(1, 1, -1)
    m = batch.bin_mask.to(x.dtype)  # [B, T]
    den = nn.functional.conv1d(m[:, None], w, padding=half)  # [B, 1, T]
    g = (x.view(B, P, T, k) * m[:, None, :, None]).permute(0, 1, 3, 2).reshape(B, P * k, T)
    num = nn.functional.conv1d(g.reshape(B * P * k, 1, T), w, padding=half).view(B, P, k, T)
    out = num / den.clamp_min(1e-6)[:, :, None]
    return out.permute(0, 1, 3, 2).reshape(B, P * T, k)


def patch_units(batch: Batch) -> torch.Tensor:
    """[B, P, k] unit-vocabulary index of each patch's slots (the same at every bin of the patch)."""
    B, P, T = batch.shape
    return batch.token_unit.reshape(B, P, T, -1)[:, :, 0]


def _compact(valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(order [B, M], pad [B, M]): positions of each row's ``valid`` tokens first, in order, padded to the row with
    the most; ``pad`` marks slots past a row's count."""
    n = valid.sum(dim=1)
    m = int(n.max()) if n.numel() else 0
    order = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices[:, :m]
    return order, torch.arange(m, device=order.device)[None, :] >= n[:, None]


def _sincos(n: int, d: int) -> torch.Tensor:
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(-torch.arange(0, d, 2, dtype=torch.float32) * (torch.log(torch.tensor(1e4)) / d))
    out = torch.zeros(n, d)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq)[:, : d // 2]
    return out


# The parts of the model that belong to sessions, units and output slots rather than to the shared backbone: what a
# frozen backbone still trains in a fine-tune, and what keeps the full learning rate when the backbone's is scaled.
SESSION_PARTS = ("ctx_emb", "count_head", "mua_head", "region_emb", "unit_embed_in", "unit_embed_out")


class MaskedNeuralModel(nn.Module):
    def __init__(self, cfg: ModelConfig, vocabs: Vocabularies):
        super().__init__()
        self.cfg = cfg
        k, d, dd = cfg.neurons_per_token, cfg.d_model, cfg.decoder_d_model
        self.in_proj = nn.Linear(2 * k, d)  # values and the slot-is-a-real-unit flags (zero padding ≠ zero count)
        self.time_emb = nn.Embedding(cfg.max_bins, d)
        self.patch_emb = nn.Embedding(cfg.max_patches, d)
        self.region_emb = nn.Embedding(len(vocabs.region), d)
        self.ctx_emb = nn.ModuleDict({f: nn.Embedding(len(vocabs[f]), d) for f in CONTEXT})
        self.prompt_emb = nn.Embedding(len(ALL_PROMPTS), d)
        self.ctx_slot = nn.Parameter(torch.zeros(N_CTX, d))
        self.encoder = Stack(d, cfg.heads, cfg.depth, cfg.ff_mult, cfg.dropout)
        self.enc_norm = nn.LayerNorm(d)
        self.enc_to_dec = nn.Linear(d, dd)
        self.dec_pos = nn.Linear(d, dd)  # decoder positions reuse the encoder's tables (one table per vocabulary)
        self.mask_token = nn.Parameter(torch.zeros(dd))
        self.decoder = Stack(dd, cfg.decoder_heads, cfg.decoder_depth, cfg.ff_mult, cfg.dropout)
        self.dec_norm = nn.LayerNorm(dd)
        self.bin_proj = nn.Linear(dd, dd) if cfg.bin_summary else nn.Identity()
        self.count_head = nn.Linear(dd, k)
        self.mua_head = nn.Linear(dd, k)
        n_units = len(vocabs.unit) if cfg.unit_embedding else 0
        self.unit_embed_in = nn.Embedding(n_units, d)
        self.unit_embed_out = nn.Embedding(n_units, dd + 1)  # read-out weights and bias
        for p in (self.ctx_slot, self.mask_token):
            nn.init.normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
        for t in (self.unit_embed_in, self.unit_embed_out):
            nn.init.zeros_(t.weight)
        # Positions start informative (sin-cos time, unit-scale patch codes) so attention can find same-time and
        # same-patch tokens from the first steps; they stay learnable.
        with torch.no_grad():
            self.time_emb.weight.copy_(POS_SCALE * _sincos(cfg.max_bins, d))
            nn.init.normal_(self.patch_emb.weight, std=POS_SCALE)

    # ---------------------------------------------------------------- pieces

    def extend_vocab(self, vocabs: Vocabularies, name: str, keys) -> list[str]:
        """Add new context keys (e.g. a fine-tuning session or its units) growing the matching tables; old rows
        kept."""
        if name == "unit":
            if not self.cfg.unit_embedding:
                return vocabs.unit.add(keys)
            added = vocabs.unit.extend(keys, table=self.unit_embed_in)
            _grow(self.unit_embed_out, len(added))
            return added
        table = self.region_emb if name == "region" else self.ctx_emb[name]
        return vocabs[name].extend(keys, table=table)

    def _check(self, batch: Batch) -> None:
        _, n_patch, n_bin = batch.shape
        k = self.cfg.neurons_per_token
        if batch.tokens.shape[-1] != k:
            raise ValueError(f"batch was patched with {batch.tokens.shape[-1]} units per token, model expects {k}")
        if n_bin > self.cfg.max_bins or n_patch > self.cfg.max_patches:
            raise ValueError(
                f"batch has {n_bin} bins and {n_patch} patches; model allows max_bins={self.cfg.max_bins}, "
                f"max_patches={self.cfg.max_patches}"
            )

    def _positions(self, batch: Batch) -> torch.Tensor:
        return self.time_emb(batch.token_time) + self.patch_emb(batch.token_patch) + self.region_emb(batch.token_region)

    def _values(self, batch: Batch) -> torch.Tensor:
        """[B, N, k] the model's view of the cells: log1p(counts) or MUA; padding slots and bins exactly zero."""
        x = batch.tokens
        if self.cfg.count_input == "log1p":
            x = torch.where(batch.is_counts[:, None, None], torch.log1p(x.clamp_min(0)), x)
        return x * batch.token_cells

    def _embed(self, batch: Batch) -> torch.Tensor:
        """[B, N, d] embeddings of ``batch``'s tokens: values with their slot flags, and positions."""
        x = self._values(batch)
        return self.in_proj(torch.cat([x, batch.token_cells.to(x.dtype)], dim=-1)) + self._positions(batch)

    def _unit_read_in(self, batch: Batch, visible: torch.Tensor) -> torch.Tensor:
        """[B, N, d] Σ_k x_k · E[unit_k] of the visible tokens (zero elsewhere: hidden values are replaced, not
        multiplied away). Every bin of a patch holds the same units, so E is gathered once per patch and applied to
        all bins in one matmul ([T, k] @ [k, d]) instead of gathering [B, N, k, d] rows."""
        B, P, T = batch.shape
        x = torch.where(visible[..., None], self._values(batch), 0.0)
        E = self.unit_embed_in(patch_units(batch))  # [B, P, k, d]
        if self.training and self.cfg.unit_row_dropout > 0:
            E = E * (torch.rand(E.shape[:-1], device=E.device) >= self.cfg.unit_row_dropout)[..., None].to(E.dtype)
        return (x.view(B, P, T, -1).to(E.dtype) @ E).view(B, P * T, -1)

    def _context(self, batch: Batch, mode_ids: torch.Tensor) -> torch.Tensor:
        parts = [self.ctx_emb[f](batch.context[f]) for f in CONTEXT] + [self.prompt_emb(mode_ids)]
        return torch.stack(parts, dim=1) + self.ctx_slot

    def encode_visible(self, batch: Batch, mask: MaskResult) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encoder on context + visible tokens only. Returns (outputs [B, N_CTX+V, d], order [B, V], pad [B, V]).

        ``order[b, j]`` is the token position of the j-th encoder slot; ``pad`` marks slots beyond a row's count.
        Non-visible tokens are never gathered, so their values cannot reach the encoder.
        """
        self._check(batch)
        order, pad = _compact(mask.visible & batch.token_valid)
        tokens = self._embed_gathered(batch, order, pad)
        seq = torch.cat([self._context(batch, mask.mode_ids), tokens], dim=1)
        kpm = torch.cat([pad.new_zeros(pad.shape[0], N_CTX), pad], dim=1)
        return self.enc_norm(self.encoder(seq, kpm)), order, pad

    def _embed_gathered(self, batch: Batch, order: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """Embed only the gathered visible tokens; slots past a row's count get zero values (not a hidden token)."""

        def g(t: torch.Tensor) -> torch.Tensor:
            idx = order if t.dim() == 2 else order[..., None].expand(-1, -1, t.shape[-1])
            return t.gather(1, idx)

        sub = Batch.__new__(Batch)
        sub.__dict__.update(batch.__dict__)
        for name in ("tokens", "token_cells", "token_time", "token_patch", "token_region"):
            setattr(sub, name, g(getattr(batch, name)))
        sub.tokens = sub.tokens.masked_fill(pad[..., None], 0.0)
        sub.token_cells = sub.token_cells & ~pad[..., None]
        h = self._embed(sub)
        if self.cfg.unit_embedding:
            visible = torch.zeros_like(batch.token_valid).scatter(1, order, ~pad)
            h = h + g(self._unit_read_in(batch, visible)).masked_fill(pad[..., None], 0.0).to(h.dtype)
        return h

    # ---------------------------------------------------------------- public

    def forward(
        self, batch: Batch, mode: str = "all", mask: MaskResult | None = None, generator: torch.Generator | None = None
    ) -> ModelOutput:
        """Loss and per-token predictions for ``batch`` under ``mask`` (sampled from ``mode`` when not given)."""
        if mask is None:
            mask = sample_mask(batch, mode, self.cfg.mask, self.cfg.modes, generator, self.cfg.mode_weights)
        h, order, pad = self.encode_visible(batch, mask)
        proj = self.enc_to_dec(h)
        # The decoder runs on real tokens only (padding of short windows and narrow sessions costs nothing): its
        # input is the encoder's output where a token was visible and the mask token elsewhere, plus positions.
        vorder, vpad = _compact(batch.token_valid)
        dec = self._decoder_input(batch, proj, order, pad, vorder, vpad)
        seq = torch.cat([proj[:, :N_CTX], dec], dim=1)
        kpm = torch.cat([vpad.new_zeros(vpad.shape[0], N_CTX), vpad], dim=1)
        compact = self.dec_norm(self.decoder(seq, kpm))[:, N_CTX:]
        B, N = batch.token_valid.shape
        out = compact.new_zeros(B, N + 1, compact.shape[-1])  # column N: where padding slots land, dropped
        out = out.scatter(1, vorder.masked_fill(vpad, N)[..., None].expand(-1, -1, compact.shape[-1]), compact)
        log_rate, mua = self._heads(batch, out[:, :N])
        if self.cfg.output_smoothing > 0:  # both heads in one pass (one kernel normaliser, one convolution)
            both = smooth_in_time(torch.cat([log_rate, mua], dim=-1), batch, self.cfg.output_smoothing)
            log_rate, mua = both.split(log_rate.shape[-1], dim=-1)
        log_rate = log_rate.clamp(-self.cfg.max_log_rate, self.cfg.max_log_rate)  # exp link with clamps
        return self._loss(batch, mask, log_rate, mua)

    def _heads(self, batch: Batch, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-unit log-rates and MUA values [B, N, k]: the shared heads plus each unit's own read-out row and bias
        (zero for a new unit until fine-tuning learns it), gathered once per patch and applied to all its bins."""
        log_rate, mua = self.count_head(out), self.mua_head(out)
        if self.cfg.unit_embedding:
            B, P, T = batch.shape
            dd = self.cfg.decoder_d_model
            w = self.unit_embed_out(patch_units(batch))  # [B, P, k, dd + 1]
            per_unit = out.view(B, P, T, dd).to(w.dtype) @ w[..., :dd].transpose(-1, -2) + w[..., None, :, dd]
            per_unit = per_unit.reshape(log_rate.shape)
            log_rate, mua = log_rate + per_unit.to(log_rate.dtype), mua + per_unit.to(mua.dtype)
        return log_rate, mua

    def _decoder_input(self, batch: Batch, proj, order, pad, vorder, vpad) -> torch.Tensor:
        """[B, Nv, dd]: for each real token (compact order ``vorder``), its encoder output if it was visible, else
        the mask token; plus its position (and its bin's visible summary)."""
        B, N = batch.token_valid.shape
        dd = self.cfg.decoder_d_model
        Nv = vorder.shape[1]
        slot = torch.full((B, N + 1), Nv, dtype=torch.long, device=vorder.device)  # token → compact slot
        slot.scatter_(1, vorder.masked_fill(vpad, N), torch.arange(Nv, device=vorder.device).expand(B, -1))
        enc_slot = slot.gather(1, order.masked_fill(pad, N))  # encoder slot → compact slot (Nv: none)
        dec = self.mask_token.to(proj.dtype).expand(B, Nv + 1, dd).clone()
        dec = dec.scatter(1, enc_slot[..., None].expand(-1, -1, dd), proj[:, N_CTX:])[:, :Nv]
        positions = self._positions_at(batch, vorder)
        dec = dec + self.dec_pos(positions)
        if self.cfg.bin_summary:
            t = batch.token_time.gather(1, order).masked_fill(pad, 0)
            mean = self.bin_proj(bin_means(proj[:, N_CTX:], t, ~pad, batch.shape[2]))
            dec = dec + mean.gather(1, batch.token_time.gather(1, vorder)[..., None].expand(-1, -1, dd))
        return dec

    def _positions_at(self, batch: Batch, idx: torch.Tensor) -> torch.Tensor:
        return (
            self.time_emb(batch.token_time.gather(1, idx))
            + self.patch_emb(batch.token_patch.gather(1, idx))
            + self.region_emb(batch.token_region.gather(1, idx))
        )

    def _loss(self, batch: Batch, mask: MaskResult, log_rate: torch.Tensor, mua: torch.Tensor) -> ModelOutput:
        cells = (mask.target & batch.token_valid)[:, :, None] & batch.token_cells
        counts = cells & batch.is_counts[:, None, None]
        conts = cells & ~batch.is_counts[:, None, None]
        y = batch.tokens
        nll = torch.exp(log_rate) - y * log_rate + torch.lgamma(y + 1.0)
        n_c, n_m = counts.sum(), conts.sum()
        nll_sum, se_sum = (nll * counts).sum(), (((mua - y) ** 2) * conts).sum()
        poisson, mse = nll_sum / n_c.clamp_min(1), se_sum / n_m.clamp_min(1)
        return ModelOutput(poisson + mse, poisson, mse, n_c + n_m, log_rate, mua, mask, nll_sum, se_sum, n_c, n_m)

    @torch.no_grad()
    def predict(self, batch: Batch, mask: MaskResult) -> torch.Tensor:
        """Per-unit predictions [B, U, T] for a given mask: expected counts per bin (counts rows) or MUA values."""
        out = self.forward(batch, mask=mask)
        per_token = torch.where(batch.is_counts[:, None, None], torch.exp(out.log_rate), out.mua)
        return unpatchify(per_token, batch)

    def encode(self, batch: Batch) -> Latents:
        """Latents of every token with nothing masked (the 'none' prompt), for alignment and decoding heads."""
        mask = no_mask(batch)
        h, order, pad = self.encode_visible(batch, mask)
        B, N = batch.token_valid.shape
        tokens = torch.zeros(B, N, h.shape[-1], dtype=h.dtype, device=h.device)
        bi, j = torch.nonzero(~pad, as_tuple=True)
        tokens[bi, order[bi, j]] = h[:, N_CTX:][bi, j]
        return Latents(context=h[:, :N_CTX], tokens=tokens, token_valid=batch.token_valid)
