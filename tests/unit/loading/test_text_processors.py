"""The tokenizer and processor are parsed once per set of files: a second load of the same model reuses them,
a replaced file is parsed again."""

from __future__ import annotations

import os
import shutil

from tiny_files import FOLDER, MODELS

from optim import DiffusersFolder, LoadRequest, load_pipeline
from optim.loading import text_processors

TINY_FOLDER = MODELS / "diffusers" / FOLDER["edit-2509"]


def test_a_second_load_of_a_folder_reuses_its_tokenizer_and_processor():
    first = load_pipeline(LoadRequest(DiffusersFolder(TINY_FOLDER))).pipeline
    tokenizer, processor = first.tokenizer, first.processor
    del first
    second = load_pipeline(LoadRequest(DiffusersFolder(TINY_FOLDER))).pipeline
    assert second.tokenizer is tokenizer
    assert second.processor is processor


def test_a_replaced_tokenizer_file_is_parsed_again(tmp_path):
    folder = shutil.copytree(TINY_FOLDER / "tokenizer", tmp_path / "tokenizer")
    first = text_processors.tokenizer(folder)
    assert text_processors.tokenizer(folder) is first
    config = folder / "tokenizer_config.json"
    stat = config.stat()
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # as a copy over it would leave it
    again = text_processors.tokenizer(folder)
    assert again is not first
    assert again("a red door").input_ids == first("a red door").input_ids
