"""models/blocks: batch-first transformer blocks that compute what PyTorch's pre-norm encoder computes, load its
checkpoints, and keep padded keys out of every real token's output."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st
from neurobridge.models.blocks import Stack
from neurobridge.models.config import HEAD_DIM, ModelConfig, default_heads
from torch import nn


def _torch_stack(d: int, heads: int, depth: int) -> nn.TransformerEncoder:
    """The encoder models were built from before: checkpoints hold its parameter names."""
    layer = nn.TransformerEncoderLayer(d, heads, 2 * d, 0.0, activation="gelu", batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


def _padded(batch: int, length: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(batch, length, d)
    pad = torch.zeros(batch, length, dtype=torch.bool)
    pad[1:, length - 7 :] = True  # ragged: the first row has no padding
    return x, pad


def test_stack_is_pytorchs_pre_norm_encoder_with_the_same_parameters_and_init():
    torch.manual_seed(0)
    ref = _torch_stack(32, 4, 2)
    torch.manual_seed(0)
    ours = Stack(32, 4, 2, 2, 0.0)
    assert list(ours.state_dict()) == list(ref.state_dict())  # old checkpoints load by name
    for name, value in ref.state_dict().items():
        assert torch.equal(value, ours.state_dict()[name]), name  # same draws in the same order
    x, pad = _padded(3, 20, 32)
    want = ref(x, src_key_padding_mask=pad)
    got = ours(x, pad)
    assert torch.allclose(got[~pad], want[~pad], atol=1e-5)
    no_pad = torch.zeros_like(pad)
    assert torch.allclose(ours(x, no_pad), ref(x, src_key_padding_mask=no_pad), atol=1e-5)


def test_padded_slots_never_reach_real_tokens_forward_or_backward():
    torch.manual_seed(1)
    stack = Stack(32, 2, 2, 2, 0.0)
    x, pad = _padded(3, 20, 32)
    x.requires_grad_(True)
    out = stack(x, pad)
    out[~pad].sum().backward()
    assert torch.count_nonzero(x.grad[pad]) == 0  # no gradient flows into padding from real outputs
    changed = torch.where(pad[..., None], torch.randn_like(x) * 100, x).detach()
    assert torch.allclose(stack(changed, pad)[~pad], out[~pad], atol=1e-5)


@given(st.integers(8, 1024))
def test_default_heads_are_the_most_that_divide_the_width_at_least_head_dim_wide(width: int):
    heads = default_heads(width)
    assert width % heads == 0
    assert heads == 1 or width // heads >= HEAD_DIM
    more = [h for h in range(heads + 1, width + 1) if width % h == 0 and width // h >= HEAD_DIM]
    assert not more  # the most heads that are still HEAD_DIM wide


def test_decoder_heads_default_by_width_and_explicit_values_are_kept():
    assert ModelConfig().decoder_heads == 1  # the default 48-wide decoder: one 48-dim head
    assert ModelConfig(decoder_d_model=128).decoder_heads == 4
    assert ModelConfig(decoder_heads=4).decoder_heads == 4  # a checkpoint's stored config is honoured
    assert ModelConfig.model_validate(ModelConfig().model_dump()).decoder_heads == 1


def test_under_bf16_autocast_on_a_cpu_attention_runs_in_fp32_and_the_blocks_still_train():
    """The CPU flash kernel runs bf16 at half its fp32 rate, so attention is cast around; the step it is part of
    still trains (gradients reach every parameter) and matches the fp32 block to bf16's precision."""
    from neurobridge.bench.attention import Recorder
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    stack = Stack(32, 4, 2, 2, 0.0)
    x, pad = _padded(3, 20, 32)
    recorder = Recorder()
    with FlopCounterMode(display=False, custom_mapping=recorder.mapping()):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = stack(x, pad)
        out[~pad].float().pow(2).sum().backward()
    assert sum(recorder.calls.values()) == 2  # one call per layer, each seen by the recorder
    assert {call.dtype for call in recorder.calls} == {torch.float32}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in stack.parameters())
    assert torch.allclose(out[~pad].float(), stack(x, pad)[~pad], atol=0.1)
