"""Sequence parallelism's arithmetic on the CPU (fp32): the image tokens cut over 2..4 emulated GPUs
(streamers on the CPU, each with its own copy of the weights), in equal and uneven shares, give
diffusers' own forward. The GPU benchmark runs the same code on two H200s."""

from __future__ import annotations

import pytest
import torch
from tiny_transformer import CPU, VARIANTS, inputs, reference

from optim.execution.block_streamer import BlockStreamer
from optim.execution.cfg_pairing import TextInput
from optim.execution.sequence_parallel import PeerCopies, heads_for_ranks, tokens_for_ranks
from optim.execution.transformer_engine import TransformerEngine
from optim.planning.work_split import head_shares, token_spans
from optim.qwen.architectures import Architecture
from optim.qwen.job_shape import JobShape
from optim.qwen.variants import Variant

HEADS = 12  # divides by 2, 3, 4 and 6 as the real model's 24 do


def twelve_head_transformer(variant: Variant) -> torch.nn.Module:
    """The tiny architecture with 12 heads of 16 and three blocks (fp32, random)."""
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(11)
    config = {**Architecture("qwenfit-tiny").transformer_config(variant), "num_layers": 3}
    config["num_attention_heads"] = HEADS
    return QwenImageTransformer2DModel.from_config(config).eval()


def test_real_size_split_of_edit_1024() -> None:
    """Edit 1024 with one reference: 2 x 4096 image tokens and 24 heads, cut by the GPUs' speeds."""
    tokens = JobShape("edit", 1024, 1024, references=1, cfg=False).image_tokens
    assert tokens == 2 * 4096
    assert head_shares(24, [1.0, 1.0]) == (12, 12) and token_spans(tokens, (12, 12)) == ((0, 4096), (4096, 8192))
    assert head_shares(24, [1.0, 0.5]) == (16, 8) and token_spans(tokens, (16, 8)) == ((0, 5461), (5461, 8192))
    assert head_shares(24, [1.0, 1.0, 1.0]) == (8, 8, 8)
    assert token_spans(tokens, (8, 8, 8)) == ((0, 2731), (2731, 5462), (5462, 8192))
    assert head_shares(24, [1.0, 0.01]) == (23, 1)  # every GPU attends with at least one head
    assert token_spans(5, (1, 1, 1, 1, 1, 1)) == ((0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 5))
    with pytest.raises(ValueError, match="cannot be split into 25 parts"):
        head_shares(24, [1.0] * 25)


@pytest.mark.parametrize("shares", [(6, 6), (8, 4), (4, 4, 4), (5, 4, 2, 1)])
def test_exchanges_give_every_gpu_all_tokens_of_its_heads_and_back(shares: tuple[int, ...]) -> None:
    """The two exchanges alone: heads scattered (text first), then each GPU's tokens gathered back."""
    tokens, text_tokens = 11, 3
    spans = token_spans(tokens, shares)
    image = torch.randn(1, tokens, HEADS, 4)
    text = torch.randn(1, text_tokens, HEADS, 4)
    copies = PeerCopies([CPU] * len(shares))
    joints = heads_for_ranks([image[:, a:b] for a, b in spans], text, shares, copies)
    first = 0
    for joint, share in zip(joints, shares, strict=True):
        heads = slice(first, first + share)
        assert torch.equal(joint, torch.cat([text[:, :, heads], image[:, :, heads]], dim=1))
        first += share
    back = tokens_for_ranks(joints, text_tokens, spans, copies)
    for r, ((text_back, image_back), (a, b)) in enumerate(zip(back, spans, strict=True)):
        assert torch.equal(image_back, image[:, a:b])
        # The text stream lives on the first GPU: only it gets the text's attention output back.
        assert torch.equal(text_back, text) if r == 0 else text_back.shape == (1, 0, HEADS, 4)


def _engine(transformer: torch.nn.Module, shares: tuple[int, ...], resident: int) -> TransformerEngine:
    """The engine with one streamer per emulated GPU, each keeping ``resident`` blocks and streaming the rest
    through its own ring (the modulation computed live: no table)."""
    first = BlockStreamer(transformer.transformer_blocks, CPU, pin=False)
    first.configure(range(resident), 2)
    others = [first.follower(CPU) for _ in shares[1:]]
    for other in others:
        other.configure(range(resident), 2)
    engine = TransformerEngine(transformer, CPU, first)
    engine.place({}, ranks=tuple(others), head_shares=shares)
    return engine


def _split_forward(transformer: torch.nn.Module, shares: tuple[int, ...], t: torch.Tensor, job: tuple) -> torch.Tensor:
    """One forward of ``job`` (what ``inputs`` gives) at timestep ``t`` over emulated GPUs of ``shares``."""
    hidden, prompt, _, shapes, extra = job
    with torch.inference_mode():
        engine = _engine(transformer, shares, resident=1)
        engine.begin_run()
        out = engine.run(hidden, [TextInput(prompt, None)], t, shapes, extra)[0]
        engine.end_run()
    return out


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.value)
@pytest.mark.parametrize("shares", [(6, 6), (8, 4), (3, 3, 3, 3)])
def test_sequence_parallel_forward_equals_the_single_gpu_forward(variant: Variant, shares: tuple) -> None:
    """Every block with the image tokens over the emulated GPUs gives diffusers' own forward in fp32: within
    1e-6 of the output's largest value (attention over a subset of heads is exact on the CPU; its GEMM sums
    a row in another order when a span is not a multiple of 8 rows, a few ulp). Two steps: the rings wrap."""
    transformer = twelve_head_transformer(variant)
    hidden, prompt, _, shapes, extra = inputs(transformer, variant)
    with torch.inference_mode():
        engine = _engine(transformer, shares, resident=1)
        engine.begin_run()
        for t in (torch.tensor([0.6]), torch.tensor([0.3])):
            want = reference(transformer, hidden, prompt, t, shapes, extra)
            got = engine.run(hidden, [TextInput(prompt, None)], t, shapes, extra)[0]
            assert (got - want).abs().max() <= 1e-6 * want.abs().max()
        engine.end_run()


@pytest.mark.parametrize(("stored", "kind"), [("int8", "int8"), ("fp8_e4m3fn_fast", "fp8")])
def test_sequence_parallel_forward_with_8_bit_products_equals_diffusers_on_the_same_layers(stored, kind) -> None:
    """The fast rung (W8A8: activations quantized per token) cut over GPUs: each GPU quantizes its own tokens'
    rows, which are the rows one GPU quantizes, so the forward is diffusers' own over the same 8-bit layers."""
    from optim.quant.compressed_linear import compressed_layers, enable_fast_blocks
    from optim.quant.format_registry import quantize_linears

    variant = Variant.EDIT_2511
    transformer = twelve_head_transformer(variant)
    quantize_linears(transformer.transformer_blocks, stored, lambda name: True)
    assert enable_fast_blocks(transformer.transformer_blocks, kind) > 0
    job = inputs(transformer, variant)
    hidden, prompt, _, shapes, extra = job
    t = torch.tensor([0.6])
    with torch.inference_mode():
        want = reference(transformer, hidden, prompt, t, shapes, extra)
    got = _split_forward(transformer, (8, 4), t, job)
    assert torch.isfinite(want).all()
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    for layer in compressed_layers(transformer):  # the same weights expanded: the 8-bit products ran above
        layer.fast = False
    with torch.inference_mode():
        expanded = reference(transformer, hidden, prompt, t, shapes, extra)
    assert (expanded - want).abs().max() > 1e-4 * want.abs().max()


def test_only_the_first_gpu_queues_the_text_stream() -> None:
    """The text lives on the first GPU: the others' blocks call no text module, not even on an empty text
    (one thread queues every GPU's kernels, and an empty call still costs that thread its dispatch)."""
    variant = Variant.EDIT_2509
    transformer = twelve_head_transformer(variant)
    job = inputs(transformer, variant)
    calls: list[int] = []
    text_modules = [
        module
        for block in transformer.transformer_blocks
        for module in (block.txt_norm1, block.txt_norm2, block.txt_mlp, block.attn.add_q_proj, block.attn.to_add_out)
    ]
    hooks = [m.register_forward_hook(lambda _m, args, _out: calls.append(args[0].shape[-2])) for m in text_modules]
    try:
        _split_forward(transformer, (4, 4, 4), torch.tensor([0.6]), job)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(calls) == len(text_modules)  # once per module: the first GPU's
    assert 0 not in calls


def test_each_gpu_computes_with_its_own_weights() -> None:
    """Spoiling the second GPU's resident copy of one block changes only the tokens the second GPU holds
    after that block's MLP... and, through attention, the rest: the output differs. The first GPU's
    weights (the modules' own) stay bound to every block after the run."""
    variant = Variant.EDIT_2509
    transformer = twelve_head_transformer(variant)
    hidden, prompt, _, shapes, extra = inputs(transformer, variant)
    t = torch.tensor([0.6])
    with torch.inference_mode():
        want = reference(transformer, hidden, prompt, t, shapes, extra)
        engine = _engine(transformer, (6, 6), resident=3)
        engine.begin_run()
        second = engine.ranks[0]
        for tensor in second._resident_views[1]:
            tensor.mul_(0.5)
        spoiled = engine.run(hidden, [TextInput(prompt, None)], t, shapes, extra)[0]
        engine.end_run()
        assert torch.equal(reference(transformer, hidden, prompt, t, shapes, extra), want)
    spans = token_spans(hidden.shape[1], (6, 6))
    assert not torch.allclose(spoiled[:, spans[1][0] :], want[:, spans[1][0] :], atol=1e-4)


def test_a_head_share_per_gpu_is_required() -> None:
    transformer = twelve_head_transformer(Variant.EDIT_2509)
    first = BlockStreamer(transformer.transformer_blocks, CPU, pin=False)
    engine = TransformerEngine(transformer, CPU, first)
    with pytest.raises(ValueError, match="2 GPUs need 2 head shares"):
        engine.place({}, ranks=(first.follower(CPU),), head_shares=(12,))
