"""Ranks of test_sequence_parallel.py's torch.distributed test: ``python sequence_parallel_ranks.py
FOLDER WORLD`` runs the sharded blocks in WORLD processes over gloo and saves each rank's (image shard,
text) to FOLDER/rank<r>.safetensors (no pickles, even in tests)."""

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
    from safetensors.torch import save_file
    from test_sequence_parallel import distributed_case, rank_blocks

    from optim.execution.sequence_parallel import distributed_exchange

    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        with torch.inference_mode():
            engine, shards, streams = distributed_case(world)
            image, text = rank_blocks(engine, shards, rank, distributed_exchange(), *streams)
        save_file({"image": image.contiguous(), "text": text.contiguous()}, f"{folder}/rank{rank}.safetensors")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(rank_main, args=(int(sys.argv[2]), sys.argv[1]), nprocs=int(sys.argv[2]))
