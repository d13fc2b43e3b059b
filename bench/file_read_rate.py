"""How fast the pack reads model files: from the page cache, and with the file's pages dropped from it.

    python bench/file_read_rate.py --file MODELS/diffusion_models/X.safetensors --gib 8 --out F.json

Reads the first ``--gib`` GiB of the file with the loader's reader threads (optim/files/parallel_reads.py) into
one page-locked buffer, twice while the file sits in the page cache, then again after asking the kernel to drop
the file's cached pages (``posix_fadvise(DONTNEED)``, no root needed; tmpfs and /dev/shm cannot drop them, and
the result says whether the drop happened: it did when the cached read was several times faster).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

GIB = 1024**3


def _read(path: Path, buffer) -> float:
    from optim.files.parallel_reads import READERS, byte_pieces, run_reads

    def piece(offset: int, out) -> None:
        with open(path, "rb", buffering=0) as f:
            f.seek(offset)
            f.readinto(memoryview(out.numpy()))

    start = time.perf_counter()
    run_reads(byte_pieces(piece, buffer))
    seconds = time.perf_counter() - start
    print(f"{buffer.numel() / GIB:.1f} GiB in {seconds:.2f} s with {READERS} readers")
    return seconds


def _drop_cached_pages(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def measure(path: Path, gib: float) -> dict:
    import torch

    nbytes = min(int(gib * GIB), path.stat().st_size)
    buffer = torch.empty(nbytes, dtype=torch.uint8, pin_memory=torch.cuda.is_available())
    warm = [_read(path, buffer) for _ in range(2)]
    _drop_cached_pages(path)
    cold = _read(path, buffer)
    best_warm = min(warm)
    return {
        "file": str(path),
        "filesystem": os.statvfs(path).f_fsid if hasattr(os, "statvfs") else None,
        "bytes": nbytes,
        "page_cache_bytes_per_s": nbytes / best_warm,
        "after_drop_bytes_per_s": nbytes / cold,
        # A real drop reads at disk speed: clearly slower than the page cache.
        "drop_took_effect": cold > 1.5 * best_warm,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, required=True)
    parser.add_argument("--gib", type=float, default=8.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = measure(args.file, args.gib)
    from bench.report import print_and_write

    print_and_write(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
