"""The tokenizer and the Qwen2-VL processor of a model, parsed once per process.

Qwen's tokenizer.json holds 151k entries: parsing it takes a second or more on a fast CPU (several on a small
one), at every load, and twice for a diffusers folder (its tokenizer/ and processor/ each hold a copy). The
files never change between two loads of the same model, so the parsed objects are kept, keyed by the folder
and its files' sizes and modification times: a replaced file is parsed again.

The objects are shared by the pipelines loaded from the same files. They are only read while a prompt is
encoded, and ComfyUI encodes one prompt at a time; a script that encodes with two pipelines of the same model
on two threads at once should load the second one's tokenizer itself.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

# A few models' worth (a process switching between Edit and Layered keeps both).
_KEPT = 4


def _signature(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """What identifies the folder's files: name, size and modification time of each."""
    return tuple(
        sorted((entry.name, stat.st_size, stat.st_mtime_ns) for entry in folder.iterdir() for stat in [entry.stat()])
    )


def tokenizer(folder: Path) -> Any:
    """The Qwen2 tokenizer in ``folder`` (tokenizer.json or vocab.json and merges.txt)."""
    folder = folder.resolve()
    return _tokenizer(folder, _signature(folder))


def folder_processor(folder: Path) -> Any:
    """The Qwen2-VL processor saved in ``folder`` (a diffusers folder's processor/)."""
    folder = folder.resolve()
    return _processor(folder, _signature(folder))


@lru_cache(maxsize=_KEPT)
def _tokenizer(folder: Path, signature: tuple) -> Any:
    from transformers import Qwen2Tokenizer

    return Qwen2Tokenizer.from_pretrained(str(folder), local_files_only=True)


@lru_cache(maxsize=_KEPT)
def _processor(folder: Path, signature: tuple) -> Any:
    from transformers import Qwen2VLProcessor

    return Qwen2VLProcessor.from_pretrained(str(folder), local_files_only=True)
