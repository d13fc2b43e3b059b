"""Empty (meta) models are built on one thread without touching what other threads build at the same time."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from optim.errors import InternalError
from optim.qwen.architectures import Architecture, empty_text_encoder, empty_transformer, empty_vae
from optim.qwen.empty_modules import build_empty
from optim.qwen.variants import Variant

TINY = Architecture("qwenfit-tiny")
DEADLINE_S = 120  # generous: only a hang reaches it


class _PauseInsideEmptyBuild:
    """Holds the building thread in the middle of its model's construction (at its first submodule) until
    released, so another thread runs while an empty build is under way: the state a plan preview answered
    during a load is in."""

    def __init__(self) -> None:
        self.builder: int | None = None
        self.inside = threading.Event()
        self.release = threading.Event()
        self._handle = None

    def __enter__(self) -> "_PauseInsideEmptyBuild":
        def hook(module, name, submodule):
            if threading.get_ident() == self.builder and not self.inside.is_set():
                self.inside.set()
                assert self.release.wait(DEADLINE_S)
            return None

        self._handle = nn.modules.module.register_module_module_registration_hook(hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self._handle.remove()


def test_modules_built_on_another_thread_during_an_empty_build_hold_real_weights():
    """The loader fills real weights (new Linear layers, parameters) while a preview builds empty models: on the
    accelerate-based build of before, the loader's new parameters went to the meta device."""
    built = {}
    with _PauseInsideEmptyBuild() as pause:

        def preview() -> None:
            pause.builder = threading.get_ident()
            built["empty"] = empty_transformer(TINY, Variant.EDIT_2509)

        previewing = threading.Thread(target=preview)
        previewing.start()
        assert pause.inside.wait(DEADLINE_S), "the empty build never started"
        # Meanwhile, on this thread: what the loader and ComfyUI's own model loading do.
        linear = nn.Linear(8, 8)
        linear.weight = nn.Parameter(torch.ones(8, 8))
        linear.register_parameter("extra", nn.Parameter(torch.zeros(3)))
        made = torch.empty(4)
        pause.release.set()
        previewing.join(DEADLINE_S)
    assert not previewing.is_alive()
    assert [p.device.type for p in linear.parameters()] == ["cpu", "cpu", "cpu"]
    assert made.device.type == "cpu"
    assert torch.equal(linear.weight, torch.ones(8, 8))
    assert all(p.is_meta for p in built["empty"].parameters())


@pytest.mark.parametrize("variant", list(Variant), ids=lambda v: v.value)
def test_the_empty_transformer_has_its_rotary_tables_computed_as_a_real_build_has(variant):
    empty = empty_transformer(TINY, variant)
    from diffusers import QwenImageTransformer2DModel

    real = QwenImageTransformer2DModel.from_config(TINY.transformer_config(variant))
    assert all(p.is_meta for p in empty.parameters())
    for table in ("pos_freqs", "neg_freqs"):
        assert torch.equal(getattr(empty.pos_embed, table), getattr(real.pos_embed, table)), table
    assert not empty.training


def test_the_empty_text_encoder_has_real_rotary_buffers_and_meta_weights():
    empty = empty_text_encoder(TINY)
    buffers = dict(empty.named_buffers())
    assert {k.rsplit(".", 1)[-1] for k in buffers} == {"inv_freq", "original_inv_freq"}
    assert all(not b.is_meta and torch.isfinite(b).all() and (b > 0).all() for b in buffers.values())
    assert all(p.is_meta for p in empty.parameters())
    assert all(p.is_meta for p in empty_vae(TINY, 3).parameters())


class _TableNextToWeights(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(2))
        self.table = torch.arange(3.0)


def test_a_module_whose_computed_state_cannot_be_rebuilt_is_an_internal_error():
    with pytest.raises(InternalError, match="not a problem with your files"):
        build_empty(_TableNextToWeights)
