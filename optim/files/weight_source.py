"""Where each module tensor comes from: one or more safetensors files plus a key mapping."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import QwenFitError
from .comfy_quant import ComfyQuantLayer, comfy_quant_layers
from .fp8_layouts import FP8_DTYPES, Fp8Layout, Fp8Weight, detect_layout, mixed_quantized_layers, scale_key_for
from .gguf_file import GgufFile, GgufTensor, is_gguf
from .safetensors_file import SafetensorsFile


def open_weight_file(path: Path) -> SafetensorsFile | GgufFile:
    """A safetensors or GGUF file, told apart by its first bytes (not its name)."""
    return GgufFile(path) if is_gguf(path) else SafetensorsFile(path)


class WeightSource:
    """Module key -> tensor, read on demand from safetensors or GGUF files (single file or shards).

    ``to_file_key`` maps a module's state-dict key to the name stored in the files.
    """

    def __init__(self, paths: list[Path], to_file_key: Callable[[str], str] = lambda k: k) -> None:
        self.files = [open_weight_file(p) for p in paths]
        self.to_file_key = to_file_key
        self._where: dict[str, SafetensorsFile] = {}
        for f in self.files:
            for key in f.tensors:
                self._where.setdefault(key, f)
        self._layouts = {id(f): detect_layout(f) for f in self.files}
        self._mixed_layers = {id(f): mixed_quantized_layers(f) for f in self.files}
        # Comfy-Org's int8 / mxfp8 / nvfp4 layers (by file layer name): never fp8 layers, whatever their dtype.
        self._comfy_layers: dict[str, ComfyQuantLayer] = {}
        for f in self.files:
            if isinstance(f, SafetensorsFile):
                layers = comfy_quant_layers(f)
                self._comfy_layers.update(layers)
                self._mixed_layers[id(f)] -= set(layers)
                if layers and not self._mixed_layers[id(f)] and not self._fp8_weights_outside(f, layers):
                    self._layouts[id(f)] = Fp8Layout.NONE

    @property
    def names(self) -> str:
        return ", ".join(f.path.name for f in self.files)

    @property
    def nbytes(self) -> int:
        return sum(f.nbytes for f in self.files)

    def file_keys(self) -> set[str]:
        return set(self._where)

    def has(self, key: str) -> bool:
        return self.to_file_key(key) in self._where

    def shape(self, key: str) -> tuple[int, ...]:
        file_key = self.to_file_key(key)
        return self._where[file_key].shape(file_key)

    def gguf_blocks(self, key: str) -> GgufTensor | None:
        """The GGUF tensor when ``key`` is stored as quantized GGML blocks (None otherwise)."""
        file_key = self.to_file_key(key)
        f = self._where.get(file_key)
        if not isinstance(f, GgufFile):
            return None
        info = f.tensors[file_key]
        return info if info.quantized else None

    @staticmethod
    def _fp8_weights_outside(file: SafetensorsFile, layers: dict[str, ComfyQuantLayer]) -> bool:
        stored = {key for spec in layers.values() for key in spec.stored_keys}
        return any(info.dtype in FP8_DTYPES for key, info in file.tensors.items() if key not in stored)

    def comfy_quant(self, key: str) -> ComfyQuantLayer | None:
        """The Comfy-Org quantized layer whose weight ``key`` (``<layer>.weight``) is (None otherwise)."""
        file_key = self.to_file_key(key)
        return self._comfy_layers.get(file_key.removesuffix(".weight")) if file_key.endswith(".weight") else None

    def holds_comfy_quant(self) -> bool:
        """True when the files store layers in Comfy-Org's int8 / mxfp8 / nvfp4 formats."""
        return bool(self._comfy_layers)

    def comfy_quant_formats(self) -> list[str]:
        """The formats of those layers, as plans name them (sorted, each once)."""
        return sorted({spec.format_name for spec in self._comfy_layers.values()})

    def comfy_quant_key(self, file_key: str) -> bool:
        """True for a tensor (as the files name it) that belongs to a Comfy-Org quantized layer's weight."""
        layer, _, _ = file_key.rpartition(".")
        spec = self._comfy_layers.get(layer)
        return spec is not None and file_key in spec.stored_keys

    def holds_gguf(self) -> bool:
        """True when the files are GGUF (ComfyUI-GGUF's)."""
        return any(isinstance(f, GgufFile) for f in self.files)

    def holds_gguf_blocks(self) -> bool:
        """True when the GGUF files hold quantized blocks (not only F32/F16/BF16 tensors)."""
        return any(isinstance(f, GgufFile) and any(t.quantized for t in f.tensors.values()) for f in self.files)

    def layout(self) -> Fp8Layout:
        """The fp8 layout of the files (the first non-trivial one)."""
        for f in self.files:
            if self._layouts[id(f)] is not Fp8Layout.NONE:
                return self._layouts[id(f)]
        return Fp8Layout.NONE

    def holds_fp8(self) -> bool:
        """True when the files store (some) weights in fp8."""
        return self.layout() is not Fp8Layout.NONE

    def is_fp8(self, key: str) -> bool:
        """True when the stored weight is fp8 (including uint8-stored mixed layers)."""
        return self.stores_fp8(self.to_file_key(key))

    def stores_fp8(self, file_key: str) -> bool:
        """``is_fp8`` for a name as the files spell it."""
        f = self._where[file_key]
        dtype = f.tensors[file_key].dtype
        if self.comfy_quant_key(file_key):
            return False
        if dtype in FP8_DTYPES:
            return True
        layer = file_key.removesuffix(".weight")
        return dtype == torch.uint8 and layer in self._mixed_layers[id(f)]

    def locate(self, key: str) -> tuple[SafetensorsFile, str]:
        """The file holding a module key, and the key's name in it."""
        file_key = self.to_file_key(key)
        if file_key not in self._where:
            raise QwenFitError(f"{self.names} has no tensor {file_key!r}; the file is incomplete or of another model.")
        return self._where[file_key], file_key

    def locate_scale(self, key: str) -> tuple[SafetensorsFile, str] | None:
        """Where the scale of an fp8 weight is stored (None: an unscaled fp8 file, scale 1)."""
        file, file_key = self.locate(key)
        scale_key = scale_key_for(file_key, self._layouts[id(file)])
        if scale_key is None or scale_key not in self._where:
            return None
        return self._where[scale_key], scale_key

    def layout_of_key(self, key: str) -> Fp8Layout:
        """The fp8 layout of the file holding ``key``."""
        return self._layouts[id(self.locate(key)[0])]

    def read(self, key: str) -> torch.Tensor:
        """The tensor as stored (a fresh CPU tensor)."""
        file_key = self.to_file_key(key)
        try:
            f = self._where[file_key]
        except KeyError:
            raise QwenFitError(
                f"{self.names} has no tensor {file_key!r}; the file is incomplete or of another model."
            ) from None
        return f.read(file_key)

    def read_fp8(self, key: str) -> Fp8Weight:
        """An fp8 weight with its scale (1 for plain fp8 files)."""
        file_key = self.to_file_key(key)
        f = self._where[file_key]
        layout = self._layouts[id(f)]
        data = f.read(file_key)
        if data.dtype == torch.uint8:
            data = data.view(torch.float8_e4m3fn)
        scale_key = scale_key_for(file_key, layout)
        if scale_key is not None and scale_key in self._where:
            scale = self._where[scale_key].read(scale_key).float().reshape(())
        else:
            scale, layout = torch.ones(()), Fp8Layout.PLAIN
        return Fp8Weight(data=data, scale=scale, layout=layout)
