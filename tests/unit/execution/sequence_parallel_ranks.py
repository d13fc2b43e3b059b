"""Ranks of test_sequence_parallel.py's torch.distributed test: ``python sequence_parallel_ranks.py
FOLDER WORLD`` runs the sharded blocks in WORLD processes over gloo and saves each rank's (image shard,
text) to FOLDER/rank<r>.pt."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[2]), str(HERE.parents[1]), str(HERE)]  # the repository, tests/, this folder


def rank_main(rank: int, world: int, folder: str) -> None:
    """One rank: the same random model and inputs as the test, every block on this rank's tokens."""
    from test_sequence_parallel import _streams, rank_blocks, twelve_head_transformer
    from tiny_transformer import CPU, inputs

    from optim.execution.sequence_parallel import TokenShards, distributed_exchange
    from optim.execution.transformer_engine import TransformerEngine
    from optim.qwen.variants import Variant

    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        variant = Variant.EDIT_2509
        transformer = twelve_head_transformer(variant)
        hidden, prompt, _, shapes, extra = inputs(transformer, variant)
        with torch.inference_mode():
            engine = TransformerEngine(transformer, CPU)
            streams = _streams(engine, hidden, prompt, torch.tensor([0.6]), shapes, extra)
            shards = TokenShards(hidden.shape[1], world)
            out = rank_blocks(engine, shards, rank, distributed_exchange(), *streams)
        torch.save(out, f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(rank_main, args=(int(sys.argv[2]), sys.argv[1]), nprocs=int(sys.argv[2]))
