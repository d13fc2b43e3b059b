"""A GGUF file (ComfyUI-GGUF's transformer files, llama.cpp's format), validated, its tensors read on demand.

The header is parsed by the ``gguf`` library (the format's own reader); the tensor data is then read with plain
file reads at the offsets it reports, like ``SafetensorsFile`` does, so mapped pages never count towards the
process's memory, and the library's memory map is dropped once the header is read. A quantized tensor is kept
as its raw blocks (uint8, one row of blocks per output row) with its GGML type and its logical shape, whatever
its block type: which types are read (and expanded where used) is the weight formats' to say
(optim/quant/format_registry.py), which refuse the others. Nothing is ever unpickled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import QwenFitError
from .parallel_reads import byte_pieces, read_tensor_bytes, run_reads

# The GGML types read as plain tensors, by the name llama.cpp gives them (gguf.GGMLQuantizationType's). Every
# other type a file may hold is a block type (more than one weight per block), kept as raw bytes.
PLAIN_TYPES: dict[str, torch.dtype] = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
QWEN_IMAGE_ARCH = "qwen_image"  # ComfyUI-GGUF's name for the whole family (Edit 2509/2511, Layered)
GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class GgufTensor:
    """One tensor of a GGUF file: its GGML type, shape as torch sees it, and where its bytes are."""

    name: str
    type_name: str  # "Q4_K", "BF16", ...
    shape: tuple[int, ...]  # logical (rows, columns), outermost first
    start: int  # absolute byte offset in the file
    nbytes: int

    @property
    def quantized(self) -> bool:
        """True for GGML blocks (any type but the plain ones: the reader refuses other element types)."""
        return self.type_name not in PLAIN_TYPES

    @property
    def dtype(self) -> torch.dtype:
        """The stored elements' dtype as torch reads them: uint8 bytes for quantized blocks."""
        return torch.uint8 if self.quantized else PLAIN_TYPES[self.type_name]

    @property
    def stored_shape(self) -> tuple[int, ...]:
        """The shape of what is stored: the blocks' for quantized types, the logical one otherwise."""
        return self.block_shape if self.quantized else self.shape

    @property
    def block_shape(self) -> tuple[int, ...]:
        """The stored bytes' shape as uint8: one row of blocks per logical row (quantized types)."""
        rows = math.prod(self.shape[:-1])
        return (rows, self.nbytes // max(rows, 1))


def is_gguf(path: Path) -> bool:
    """Whether ``path`` starts like a GGUF file (its name may say otherwise)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


class GgufFile:
    """The header of a GGUF file, validated, and tensors read on demand."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.size = self.path.stat().st_size
        self.architecture, self.tensors = self._read_header()
        self.metadata: dict[str, str] = {}  # no safetensors-style metadata (no fp8 layout markers)

    def _fail(self, why: str) -> QwenFitError:
        return QwenFitError(
            f"{self.path.name} is not a readable GGUF file ({why}). It may be truncated or corrupt: download it again."
        )

    def _read_header(self) -> tuple[str | None, dict[str, GgufTensor]]:
        if not is_gguf(self.path):
            raise self._fail("it does not start with GGUF")
        try:
            import gguf

            reader = gguf.GGUFReader(self.path, "r")
        except ImportError:
            raise QwenFitError(
                "reading GGUF files needs the gguf package: install the pack's requirements "
                "(pip install -r requirements.txt in ComfyUI's Python), then restart ComfyUI."
            ) from None
        except Exception as exc:  # the library raises ValueError, IndexError, struct errors... on bad headers
            raise self._fail(f"{type(exc).__name__} while reading its header") from None
        try:
            field = reader.get_field("general.architecture")
            architecture = str(field.contents()) if field is not None else None
            tensors: dict[str, GgufTensor] = {}
            for t in reader.tensors:
                type_name = gguf.GGMLQuantizationType(t.tensor_type).name
                shape = tuple(int(d) for d in reversed(t.shape.tolist()))  # GGML lists the innermost first
                start, nbytes = int(t.data_offset), int(t.n_bytes)
                if start + nbytes > self.size:
                    raise self._fail(f"tensor {t.name!r} runs past the end of the file")
                if type_name not in PLAIN_TYPES and gguf.GGML_QUANT_SIZES[t.tensor_type][0] == 1:
                    raise QwenFitError(  # integers or float64: no weight file of a diffusion model holds them
                        f"{self.path.name} stores {t.name!r} as {type_name}, a GGUF type QwenFit does not read "
                        f"({', '.join(PLAIN_TYPES)} or quantized blocks are read). Use a file of quantized types "
                        "(Q4_K_M, Q5_K_M, Q6_K, Q8_0 ...)."
                    )
                tensors[t.name] = GgufTensor(t.name, type_name, shape, start, nbytes)
        finally:
            del reader  # drop the memory map: only plain reads from here on
        return architecture, tensors

    # The SafetensorsFile surface the weight sources use.
    def keys(self) -> list[str]:
        return list(self.tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name].shape

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def check_architecture(self) -> None:
        """Refuse a GGUF of another model family, naming it."""
        if self.architecture not in (None, QWEN_IMAGE_ARCH):
            raise QwenFitError(
                f"{self.path.name} is a GGUF of {self.architecture!r}, not Qwen-Image. Pick a Qwen-Image-Edit or "
                "Qwen-Image-Layered GGUF (QuantStack's or unsloth's) from models/diffusion_models or models/unet."
            )

    def read_raw(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """The stored bytes of ``name``: a quantized tensor as uint8 blocks (``block_shape``), a plain one in its
        dtype and shape; into ``out`` (contiguous CPU, same bytes) or a new tensor."""
        info = self.tensors[name]
        if out is None:
            out = torch.empty(info.stored_shape, dtype=info.dtype)
        flat = out.reshape(-1).view(torch.uint8)
        if flat.numel() != info.nbytes or not out.is_contiguous() or out.device.type != "cpu":
            raise ValueError(f"read_raw({name!r}) needs a contiguous CPU buffer of {info.nbytes} bytes")
        run_reads(byte_pieces(lambda offset, piece: self.read_bytes(name, offset, piece), flat))
        return out

    read = read_raw  # the name SafetensorsFile gives it (weight sources, tensors left in the files)

    def read_bytes(self, name: str, offset: int, out: torch.Tensor) -> None:
        """Bytes ``offset`` .. ``offset + out.numel()`` of tensor ``name`` into ``out`` (contiguous CPU uint8)."""
        info = self.tensors[name]
        if read_tensor_bytes(self.path, info.start, info.nbytes, name, offset, out) != out.numel():
            raise self._fail(f"tensor {name!r} ends early")
