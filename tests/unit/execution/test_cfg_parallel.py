"""CFG-parallel's computation on the CPU: a second streamer (another GPU's, fed from the same host arena)
computes the negative prompt, with its blocks resident or streamed through its own ring (the GPU
benchmark runs the same code on two H200s)."""

from __future__ import annotations

import pytest
import torch
from tiny_transformer import CPU, VARIANTS, inputs, reference, seven_block_transformer

from optim.execution.block_streamer import BlockStreamer
from optim.execution.cfg_pairing import TextInput
from optim.execution.modulation import ModulationTable
from optim.execution.transformer_engine import TransformerEngine
from optim.qwen.anatomy import is_modulation
from optim.qwen.variants import Variant


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.value)
def test_cfg_parallel_replica_computes_the_negative_prompt_exactly(variant: Variant) -> None:
    """The replica's sample equals a single call (same shapes); and it is the replica that computes it."""
    transformer = seven_block_transformer(variant)
    hidden, prompt, negative, shapes, extra = inputs(transformer, variant)
    t = torch.tensor([0.7])
    texts = [TextInput(prompt, None), TextInput(negative, None)]
    with torch.inference_mode():
        want = (
            reference(transformer, hidden, prompt, t, shapes, extra),
            reference(transformer, hidden, negative, t, shapes, extra),
        )
        streamer = BlockStreamer(transformer.transformer_blocks, CPU, skip=is_modulation, pin=False)
        streamer.configure(range(7), 2)
        replica = streamer.follower(CPU)
        replica.configure(range(7), 2)
        engine = TransformerEngine(transformer, CPU, streamer, ModulationTable(transformer, CPU, pin=False))
        engine.place({}, replica=replica)
        engine.begin_run()
        got = engine.run(hidden, texts, t, shapes, extra)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        # Spoil the replica's weights: only the negative prompt's sample changes.
        for tensor in replica._resident_views[3]:
            tensor.mul_(0.5)
        spoiled = engine.run(hidden, texts, t, shapes, extra)
        engine.end_run()
        # After the run every block is bound to its own weights again.
        assert torch.equal(reference(transformer, hidden, negative, t, shapes, extra), want[1])
    assert torch.equal(spoiled[0], want[0]) and not torch.equal(spoiled[1], want[1])
    replica.release()
    streamer.release()


def test_streaming_replicas_share_the_host_arena_and_compute_their_own_blocks() -> None:
    """Two small cards: each GPU keeps its first blocks resident and streams the rest through its own ring
    from the one host arena. Both samples equal single calls, over two steps (the rings wrap around), and
    the follower added no host memory."""
    variant = Variant.EDIT_2511
    transformer = seven_block_transformer(variant)
    hidden, prompt, negative, shapes, extra = inputs(transformer, variant)
    texts = [TextInput(prompt, None), TextInput(negative, None)]
    with torch.inference_mode():
        streamer = BlockStreamer(transformer.transformer_blocks, CPU, skip=is_modulation, pin=False)
        streamer.configure(range(2), 2)
        replica = streamer.follower(CPU)
        replica.configure(range(4), 3)
        assert replica._arena is streamer._arena and replica.streamed == (4, 5, 6) and streamer.streamed[0] == 2
        engine = TransformerEngine(transformer, CPU, streamer, ModulationTable(transformer, CPU, pin=False))
        engine.place({}, replica=replica)
        engine.begin_run()
        for t in (torch.tensor([0.7]), torch.tensor([0.4])):
            got = engine.run(hidden, texts, t, shapes, extra)
            assert torch.equal(got[0], reference(transformer, hidden, prompt, t, shapes, extra))
            assert torch.equal(got[1], reference(transformer, hidden, negative, t, shapes, extra))
        engine.end_run()
        replica.release()
        # Releasing a follower leaves its first streamer's arena alone: the blocks compute from it as before.
        assert torch.equal(reference(transformer, hidden, prompt, t, shapes, extra), got[0])
    streamer.release()
