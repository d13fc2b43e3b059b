"""A safetensors reader that reads one tensor at a time with plain file reads.

Why not memory-map: mapped pages count towards the process's resident memory for as long
as the file stays mapped, so a 20 GB file would show as 20 GB of RSS on top of the copy
being built. Reading each tensor into its destination keeps the host's peak at what the
plan keeps plus one tensor. The format is JSON + raw bytes: nothing is ever unpickled.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import QwenFitError
from .parallel_reads import byte_pieces, read_tensor_bytes, run_reads

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "F8_E8M0": torch.float8_e8m0fnu,  # mxfp8 block scales (Comfy-Org's mxfp8 files)
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_HEADER_LIMIT = 100 * 1024 * 1024  # a larger header is a corrupt or hostile file
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


class SafetensorsFile:
    """The header of a safetensors file, validated, and tensors read on demand."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() in PICKLE_SUFFIXES:
            raise QwenFitError(
                f"{self.path.name} is a pickle file ({self.path.suffix}); QwenFit never loads pickles because "
                "they can run code. Use the .safetensors release of this model."
            )
        self.tensors, self.metadata = self._read_header()
        self.size = self.path.stat().st_size

    def _fail(self, why: str) -> QwenFitError:
        return QwenFitError(
            f"{self.path.name} is not a readable safetensors file ({why}). It may be truncated or corrupt: "
            "download it again."
        )

    def _read_header(self) -> tuple[dict[str, TensorInfo], dict[str, str]]:
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                prefix = f.read(8)
                if len(prefix) < 8:
                    raise self._fail("shorter than a header")
                (header_len,) = struct.unpack("<Q", prefix)
                if header_len > min(_HEADER_LIMIT, size - 8):
                    raise self._fail("header length beyond the file")
                raw = f.read(header_len)
        except OSError as exc:
            raise QwenFitError(f"{self.path.name} could not be read: {exc}") from None
        try:
            header = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
            raise self._fail("header is not JSON") from None
        if not isinstance(header, dict):
            raise self._fail("header is not a table")
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise self._fail("metadata is not a table of strings")
        data_start = 8 + header_len
        tensors = {}
        for name, entry in header.items():
            try:
                dtype = DTYPES[entry["dtype"]]
                shape = tuple(int(d) for d in entry["shape"])
                begin, end = (int(x) for x in entry["data_offsets"])
                if any(d < 0 or d > size for d in shape):
                    raise ValueError("dimension out of range")
                expected = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            except (KeyError, TypeError, ValueError, OverflowError):
                raise self._fail(f"bad entry for {name!r}") from None
            if end - begin != expected or begin < 0 or data_start + end > size:
                raise self._fail(f"tensor {name!r} runs past the end of the file")
            tensors[name] = TensorInfo(name, dtype, shape, data_start + begin, data_start + end)
        return tensors, dict(metadata)

    def keys(self) -> list[str]:
        return list(self.tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name].shape

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def read(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """Read one tensor into ``out`` (a CPU tensor of its dtype and shape) or a new tensor."""
        info = self.tensors[name]
        if out is None:
            out = torch.empty(info.shape, dtype=info.dtype)
        flat = out.reshape(-1).view(torch.uint8)
        # A large tensor (an embedding table, a bf16 MLP weight) is read by every reader thread at once.
        run_reads(byte_pieces(lambda offset, piece: self.read_bytes(name, offset, piece), flat))
        return out

    def read_bytes(self, name: str, offset: int, out: torch.Tensor) -> None:
        """Bytes ``offset`` .. ``offset + out.numel()`` of tensor ``name`` into ``out`` (contiguous CPU uint8)."""
        info = self.tensors[name]
        if read_tensor_bytes(self.path, info.start, info.nbytes, name, offset, out) != out.numel():
            raise self._fail(f"tensor {name!r} ends early")


def metadata_json(metadata: dict[str, str], key: str) -> Any:
    """A JSON value stored as a string in the safetensors metadata, or None."""
    raw = metadata.get(key)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except (ValueError, TypeError, RecursionError):
        return None
