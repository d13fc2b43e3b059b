"""Sequence parallelism's arithmetic on the CPU (fp32): the image tokens split over 2, 3, 4 and 6
emulated ranks give the single-GPU forward exactly. The GPU session runs the same code over NCCL."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_transformer import CPU, VARIANTS, inputs, reference

from optim.errors import QwenFitError
from optim.execution.cfg_pairing import TextInput
from optim.execution.sequence_parallel import (
    EmulatedGroup,
    ShardedAttention,
    TokenShards,
    check_heads,
    heads_to_tokens,
    merge_tokens,
    split_tokens,
    tokens_to_heads,
)
from optim.execution.transformer_engine import TransformerEngine
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
    """Edit 1024 with one reference: 2 x 4096 image tokens, cut evenly over 2, 4 and 8 GPUs, with a
    padded last shard over 3 and 6; 24 heads refuse 5 and 7 GPUs naming the counts that work."""
    tokens = JobShape("edit", 1024, 1024, references=1, cfg=False).image_tokens
    assert tokens == 2 * 4096
    for world, shard, padding in ((2, 4096, 0), (3, 2731, 1), (4, 2048, 0), (6, 1366, 4), (8, 1024, 0)):
        shards = TokenShards(tokens, world)
        assert (shards.shard, shards.padding) == (shard, padding)
        assert sum(shards.real(r) for r in range(world)) == tokens
        check_heads(24, world)
    assert TokenShards(tokens, 3).span(2) == (5462, 8192)
    for world in (5, 7, 9):
        with pytest.raises(QwenFitError, match=r"24 attention heads.*use 2, 3, 4, 6, 8, 12, 24 GPUs"):
            check_heads(24, world)


def test_split_and_merge_round_trip_with_a_shard_of_padding_only() -> None:
    """5 tokens over 4 ranks: shards of 2, the last all padding; merging gives the tokens back exactly."""
    shards = TokenShards(5, 4)
    x = torch.randn(2, 5, 3)
    parts = split_tokens(x, shards)
    assert [p.shape[1] for p in parts] == [2, 2, 2, 2] and shards.real(3) == 0 and shards.span(3) == (5, 5)
    assert torch.equal(parts[2][:, 1], torch.zeros(2, 3)) and torch.equal(parts[3], torch.zeros(2, 2, 3))
    assert torch.equal(merge_tokens(parts, shards), x)
    complex_freqs = torch.polar(torch.ones(5, 4), torch.randn(5, 4))  # RoPE tables split the same way
    assert torch.equal(merge_tokens(split_tokens(complex_freqs, shards, dim=0), shards, dim=0), complex_freqs)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_all_to_all_gives_every_rank_all_tokens_of_its_heads_and_back(world: int) -> None:
    """The two exchanges alone: heads scattered, tokens gathered (padding cut), then the inverse."""
    tokens, text_tokens = 10, 3
    shards = TokenShards(tokens, world)
    image = torch.randn(1, tokens, HEADS, 4)
    text = torch.randn(1, text_tokens, HEADS, 4)
    parts = split_tokens(image, shards)
    local = HEADS // world

    def work(rank, exchange):
        joint = tokens_to_heads(parts[rank], text, shards, rank, exchange)
        heads = slice(rank * local, (rank + 1) * local)
        assert torch.equal(joint, torch.cat([text[:, :, heads], image[:, :, heads]], dim=1))
        return heads_to_tokens(joint, text_tokens, shards, exchange)

    back = EmulatedGroup(world).run(work)
    for text_back, _ in back:
        assert torch.equal(text_back, text)
    assert torch.equal(merge_tokens([image_back for _, image_back in back], shards), image)


def _streams(engine: TransformerEngine, hidden, prompt, t, shapes, extra):
    """The engine's single-sample inputs of the blocks (as ``_run_per_sample`` builds them)."""
    tr = engine.transformer
    image, temb, index = engine._image_stream(hidden, t, shapes, extra, 1)
    text, lengths = engine._text_streams([TextInput(prompt, None)])
    img_freqs, txt_freqs = tr.pos_embed(shapes, max_txt_seq_len=lengths[0], device=image.device)
    return image, text, lengths, temb, index, img_freqs, txt_freqs[: lengths[0]]


def rank_blocks(engine, shards, rank, exchange, image, text, lengths, temb, index, img_freqs, txt_freqs):
    """Every block on rank ``rank`` of ``shards.world``: its share of the image tokens and the whole text
    through the engine's per-token block code with this rank's attention; (image shard, text)."""
    ranked = copy.copy(engine)
    ranked._attention = ShardedAttention(shards, rank, exchange, engine._attend, engine._rotary)
    mine = split_tokens(image, shards)[rank]
    freqs = split_tokens(img_freqs, shards, dim=0)[rank]
    ids = split_tokens(index, shards)[rank] if index is not None else None
    for block in engine.transformer.transformer_blocks:
        img_mod, txt_mod = engine._live_modulation(block, temb, 1)
        mine, text = ranked._block(block, mine, text, lengths, img_mod, txt_mod, freqs, txt_freqs, ids)
    return mine, text


def _sharded_forward(engine, world, *streams):
    """Every block on ``world`` emulated ranks; the output merged and projected as the engine does."""
    image, temb = streams[0], streams[3]
    shards = TokenShards(image.shape[1], world)
    out = EmulatedGroup(world).run(lambda rank, exchange: rank_blocks(engine, shards, rank, exchange, *streams))
    for _, txt in out[1:]:
        assert torch.equal(txt, out[0][1])  # the replicated text stream stays identical on every rank
    return engine._project_out(merge_tokens([mine for mine, _ in out], shards), temb)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.value)
@pytest.mark.parametrize("world", [2, 3, 4, 6])
def test_sharded_forward_equals_the_single_gpu_forward(variant: Variant, world: int) -> None:
    """Every block with the image tokens over ``world`` ranks (padding when they do not divide) gives
    diffusers' own forward in fp32: within 1e-6 of the output's largest value, and bit for bit when each
    shard is a multiple of 8 rows. Attention of a subset of heads is exact on the CPU (each head
    runs over the same whole sequence); the CPU's GEMM sums a row in another order when the row count
    is not a multiple of its 8-row blocks (32 tokens over 3 ranks: 11 rows), a few ulp."""
    transformer = twelve_head_transformer(variant)
    hidden, prompt, _, shapes, extra = inputs(transformer, variant)
    t = torch.tensor([0.6])
    with torch.inference_mode():
        want = reference(transformer, hidden, prompt, t, shapes, extra)
        engine = TransformerEngine(transformer, CPU)
        streams = _streams(engine, hidden, prompt, t, shapes, extra)
        got = _sharded_forward(engine, world, *streams)
    assert (got - want).abs().max() <= 1e-6 * want.abs().max()
    if TokenShards(hidden.shape[1], world).shard % 8 == 0:
        assert torch.equal(got, want)


def test_padding_is_kept_out_of_attention() -> None:
    """Garbage in the padding row changes no real token: it is cut off before the kernel runs."""
    variant = Variant.EDIT_2509
    transformer = twelve_head_transformer(variant)
    hidden, prompt, _, shapes, extra = inputs(transformer, variant)
    t = torch.tensor([0.6])
    world = 3  # 32 image tokens: shards of 11, one padding row
    with torch.inference_mode():
        engine = TransformerEngine(transformer, CPU)
        image, text, lengths, temb, _, img_freqs, txt_freqs = _streams(engine, hidden, prompt, t, shapes, extra)
        shards = TokenShards(image.shape[1], world)
        assert shards.padding == 1
        block = transformer.transformer_blocks[0]
        img_mod, txt_mod = engine._live_modulation(block, temb, 1)
        freq_parts = split_tokens(img_freqs, shards, dim=0)

        def one_block(parts):
            def work(rank, exchange):
                ranked = copy.copy(engine)
                ranked._attention = ShardedAttention(shards, rank, exchange, engine._attend, engine._rotary)
                return ranked._block(
                    block, parts[rank], text, lengths, img_mod, txt_mod, freq_parts[rank], txt_freqs, None
                )

            out = EmulatedGroup(world).run(work)
            return merge_tokens([img for img, _ in out], shards), out[0][1]

        clean = one_block(split_tokens(image, shards))
        spoiled_parts = split_tokens(image, shards)
        # The padding row; not a constant, which LayerNorm would turn into the zeros it replaces.
        spoiled_parts[-1][:, -1] = 1e3 * torch.randn(image.shape[-1])
        spoiled = one_block(spoiled_parts)
    assert torch.equal(spoiled[0], clean[0]) and torch.equal(spoiled[1], clean[1])


def test_cfg_batches_and_indivisible_heads_are_refused() -> None:
    shards = TokenShards(4, 5)
    with pytest.raises(QwenFitError, match="12 attention heads.*use 2, 3, 4, 6, 12 GPUs"):
        EmulatedGroup(5).run(
            lambda rank, ex: tokens_to_heads(torch.zeros(1, 1, HEADS, 2), torch.zeros(1, 1, HEADS, 2), shards, rank, ex)
        )
    attention = ShardedAttention(TokenShards(4, 2), 0, lambda c: c, None, None)
    with pytest.raises(QwenFitError, match="one sample"):
        attention(None, None, None, [3, 4], None, None)


def test_torch_distributed_all_to_all_drives_the_same_code(tmp_path) -> None:
    """Two processes over gloo (torch.distributed's all_to_all_single, as NCCL will on GPUs) give the
    emulated ranks' result bit for bit."""
    world = 2
    script = Path(__file__).with_name("sequence_parallel_ranks.py")
    subprocess.run([sys.executable, str(script), str(tmp_path), str(world)], check=True, timeout=300)
    with torch.inference_mode():
        engine, shards, streams = distributed_case(world)
        emulated = EmulatedGroup(world).run(lambda rank, ex: rank_blocks(engine, shards, rank, ex, *streams))
    for rank in range(world):
        saved = load_file(str(tmp_path / f"rank{rank}.safetensors"))
        assert torch.equal(saved["image"], emulated[rank][0]) and torch.equal(saved["text"], emulated[rank][1])


def distributed_case(world: int):
    """(engine, shards, streams) of the torch.distributed test: the same model and inputs in every process
    (call inside inference mode)."""
    variant = Variant.EDIT_2509
    transformer = twelve_head_transformer(variant)
    hidden, prompt, _, shapes, extra = inputs(transformer, variant)
    engine = TransformerEngine(transformer, CPU)
    streams = _streams(engine, hidden, prompt, torch.tensor([0.6]), shapes, extra)
    return engine, TokenShards(hidden.shape[1], world), streams
