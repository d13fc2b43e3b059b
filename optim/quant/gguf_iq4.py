"""GGUF's IQ4 types as one weight format: IQ4_NL (blocks of 32 weights) and IQ4_XS (super-blocks of 256 with
6-bit sub-block scales), 4-bit indices into llama.cpp's non-linear table of 16 values.

Sizes come from the ``gguf`` library's table and the expansion from diffusers' torch dequantizers, as for every
GGML type (optim/quant/gguf.py); tests/unit/quant/test_gguf_iq4.py checks both against the library's numpy
reference.
"""

from __future__ import annotations

from .gguf import GgufBlocks


class GgufIq4Blocks(GgufBlocks):
    """GGML IQ4_NL and IQ4_XS blocks in GGUF files, kept as stored and expanded where used."""

    name = "GGUF IQ4 blocks"
    type_names = ("IQ4_NL", "IQ4_XS")
