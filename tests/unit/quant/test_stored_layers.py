"""The registry of formats kept as stored (optim/quant/stored_layers.py) on the tiny files' real headers: each
Linear weight of a GGUF or Comfy-Org file belongs to exactly its family, no weight of a bf16 or fp8 file belongs
to any, and the file-key view the host plan uses agrees with the module-key view the loader uses."""

from __future__ import annotations

import pytest
from tiny_files import COMFY_QUANT_FILES, GGUF_FILES, split_files

from optim.files.sources import describe_split_files
from optim.quant.stored_layers import STORED_FORMATS, kept_as_stored, stored_format

CASES = [
    *[
        (name, variant, "GGUF blocks")
        for name, variant in GGUF_FILES
        if name.endswith(("2509_Q8_0.gguf", "every_type.gguf"))
    ],
    *[(name, variant, "Comfy-Org quantized layers") for name, variant, _ in COMFY_QUANT_FILES[:2]],
    ("qwenfit_tiny_edit_2509_bf16.safetensors", "edit-2509", None),
    ("qwenfit_tiny_edit_2511_fp8mixed.safetensors", "edit-2511", None),
]


@pytest.mark.parametrize(("name", "variant", "family"), CASES, ids=[c[0] for c in CASES])
def test_each_weight_belongs_to_its_family_only(name, variant, family):
    source = describe_split_files(split_files(name, variant)).transformer
    block_weights = [k for k in source.file_keys() if ".to_q." in k and k.endswith("weight")]
    assert block_weights, "no attention weight found: the key names changed"
    for file_key in block_weights:
        module_key = next(k for k in (file_key, file_key.removeprefix("model.diffusion_model.")) if source.has(k))
        file, stored_key = source.locate(module_key)
        info = file.tensors[stored_key]
        # A GGUF file keeps some small tensors as F16/BF16 (the converter's rules): those are plain weights.
        expected = None if family == "GGUF blocks" and not info.quantized else family
        found = stored_format(source, module_key)
        assert (found[0].name if found else None) == expected, file_key
        assert kept_as_stored(source, stored_key, info) == (expected is not None)
    if family == "GGUF blocks":  # every quantized tensor of the file is the family's
        quantized = [k for f in source.files for k, t in f.tensors.items() if t.quantized]
        assert quantized and all(kept_as_stored(source, k, source.files[0].tensors[k]) for k in quantized)


def test_one_registry_entry_per_family():
    names = [family.name for family in STORED_FORMATS]
    assert len(names) == len(set(names)) == 2
