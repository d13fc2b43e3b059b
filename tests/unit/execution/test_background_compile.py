"""Compiled blocks build in the background: no image waits for the compile (issue 31, item 3).

A compiler slowed on purpose holds its build until the test lets it go: were the first image to wait for it, the
test would stop at the deadline with a message saying so. The engine switches to the compiled functions only at the
start of a run, once built, and a failed build keeps the eager ones and says why.
"""

from __future__ import annotations

import gc
import threading
import weakref

import pytest
import torch
from tiny_transformer import CPU, inputs, reference, seven_block_transformer

from optim.execution.block_streamer import BlockStreamer
from optim.execution.cfg_pairing import TextInput
from optim.execution.modulation import ModulationTable
from optim.execution.transformer_engine import TransformerEngine
from optim.quant.compressed_linear import enable_fast_blocks
from optim.quant.format_registry import quantize_linears
from optim.qwen.anatomy import is_modulation
from optim.qwen.variants import Variant
from optim.settings import INT8

DEADLINE_S = 120.0  # generous: only a first image that waited for the compile gets near it
BUILDING = "compiled blocks: building in the background (this image ran uncompiled)"


class HeldCompiler:
    """Wraps a function in one that waits until :attr:`go` is set, then runs it eagerly: a compile that takes as
    long as the test wants. Counts the wrapped calls made by the test's own thread (the runs)."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.building = threading.Event()  # the build thread reached the compile
        self.run_calls = 0

    def __call__(self, function):
        def compiled(*args):
            if threading.current_thread() is threading.main_thread():
                self.run_calls += 1
            else:
                self.building.set()
            if not self.go.wait(DEADLINE_S):
                raise AssertionError(f"a compile held for {DEADLINE_S:.0f} s: the first image waited for it")
            return function(*args)

        return compiled


def _engine(transformer, resident=(), fast: bool = False) -> TransformerEngine:
    if fast:
        for block in transformer.transformer_blocks:
            quantize_linears(block, INT8, lambda name: not is_modulation(name))
        enable_fast_blocks(transformer.transformer_blocks, "int8")
    modulation = ModulationTable(transformer, CPU, pin=False)
    streamer = BlockStreamer(transformer.transformer_blocks, CPU, skip=is_modulation, pin=False)
    streamer.configure(resident, 2)
    return TransformerEngine(transformer, CPU, streamer, modulation, cfg="batched")


def _image(engine: TransformerEngine, variant: Variant = Variant.EDIT_2509) -> list[torch.Tensor]:
    """One image's transformer calls: prompt and negative prompt at two timesteps; the outputs."""
    hidden, prompt, negative, shapes, extra = inputs(engine.transformer, variant)
    outputs = []
    with torch.inference_mode():
        engine.begin_run()
        for t in (0.9, 0.4):
            texts = [TextInput(prompt, None), TextInput(negative, None)]
            outputs += engine.run(hidden, texts, torch.tensor([t]), shapes, extra)
        engine.end_run()
    return outputs


def _close(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_the_first_image_runs_uncompiled_while_the_compile_is_held_and_the_next_uses_it() -> None:
    transformer = seven_block_transformer(Variant.EDIT_2509)
    engine = _engine(transformer, resident=(0, 3))
    compiler = HeldCompiler()
    engine.compile_blocks(True, compiler=compiler)
    first = _image(engine)  # would stop at the deadline, failing, if it waited for the held compile
    assert compiler.run_calls == 0 and engine.compile_note() == BUILDING
    assert compiler.building.wait(DEADLINE_S), "the build never started"
    assert engine.compiling.building

    compiler.go.set()
    assert engine.compiling.wait_until_built(DEADLINE_S), "the background build did not finish"
    assert engine.compiling.failures == {}
    second = _image(engine)
    # Every block of every call took the compiled function: 7 blocks, 2 timesteps, one batched CFG pass each.
    assert compiler.run_calls == 7 * 2
    assert engine.compile_note().startswith("compiled blocks in use (built in the background in ")
    _close(second, first)
    with torch.inference_mode():
        hidden, prompt, _, shapes, extra = inputs(transformer, Variant.EDIT_2509)
        want = reference(transformer, hidden, prompt, torch.tensor([0.9]), shapes, extra)
    torch.testing.assert_close(second[0], want, rtol=1e-5, atol=1e-5)


def test_a_build_that_ends_during_an_image_waits_for_the_next_one() -> None:
    # Numerics within one image stay one path: the switch happens at a run's start only.
    engine = _engine(seven_block_transformer(Variant.EDIT_2509))
    compiler = HeldCompiler()
    engine.compile_blocks(True, compiler=compiler)
    hidden, prompt, negative, shapes, extra = inputs(engine.transformer, Variant.EDIT_2509)
    texts = [TextInput(prompt, None), TextInput(negative, None)]
    with torch.inference_mode():
        engine.begin_run()
        engine.run(hidden, texts, torch.tensor([0.9]), shapes, extra)
        compiler.go.set()
        assert engine.compiling.wait_until_built(DEADLINE_S), "the background build did not finish"
        engine.run(hidden, texts, torch.tensor([0.4]), shapes, extra)
        engine.end_run()
    assert compiler.run_calls == 0
    assert "built during this image" in engine.compile_note()
    _image(engine)
    assert compiler.run_calls == 7 * 2


def test_a_failed_compile_keeps_the_images_running_uncompiled_and_says_why() -> None:
    def failing(function):
        def compiled(*args):
            raise RuntimeError("no C compiler found\nmore detail")

        return compiled

    engine = _engine(seven_block_transformer(Variant.EDIT_2511))
    eager = _image(engine, Variant.EDIT_2511)
    engine.compile_blocks(True, compiler=failing)
    _image(engine, Variant.EDIT_2511)
    assert engine.compiling.wait_until_built(DEADLINE_S), "the background build did not finish"
    again = _image(engine, Variant.EDIT_2511)
    assert engine.compile_note() == "compile failed: RuntimeError: no C compiler found (ran uncompiled)"
    assert all(torch.equal(a, b) for a, b in zip(again, eager, strict=True))


def test_a_compiler_that_refuses_the_function_keeps_it_eager() -> None:
    def refusing(function):
        raise RuntimeError("torch.compile is not supported on this Python")

    engine = _engine(seven_block_transformer(Variant.EDIT_2509))
    engine.compile_blocks(True, compiler=refusing)
    _image(engine)
    _image(engine)
    assert engine.compile_note().startswith("compile failed: RuntimeError: torch.compile is not supported")


def test_switching_off_or_releasing_during_a_build_abandons_it_and_lets_go_of_the_model() -> None:
    engine = _engine(seven_block_transformer(Variant.EDIT_2509))
    compiler = HeldCompiler()
    engine.compile_blocks(True, compiler=compiler)
    first = _image(engine)
    assert compiler.building.wait(DEADLINE_S), "the build never started"
    builder = engine.compiling
    engine.compile_blocks(False)  # what PipelineEngine.release() does, before the weights go
    engine.streamer.release()  # the host arena is freed: the build holds copies, not views of it
    compiler.go.set()
    assert builder.wait_until_built(DEADLINE_S), "the abandoned build did not end"
    assert builder.failures == {} and builder._built == []  # nothing to install
    assert builder.describe_run() == "compiled blocks: switched off before they were built (ran uncompiled)"
    assert "_block" not in engine.__dict__ and engine.compiling is None
    # The ended thread holds nothing: the engine and its model can go.
    gone = weakref.ref(engine.transformer)
    del engine, builder, first
    gc.collect()
    assert gone() is None, "the build thread kept the model alive"


@pytest.mark.parametrize("fast", [False, True], ids=["exact", "int8"])
def test_real_dynamo_builds_in_the_background_a_graph_the_runs_reuse(fast: bool, request) -> None:
    """TorchDynamo itself (``eager`` backend: its tracing and guards, no code generation) on the build thread: the
    graph built from the example (a copy of the block with its own Parameters) serves the runs' real blocks, so the
    run that switches compiles nothing more."""
    torch._dynamo.reset()
    frames = torch._dynamo.utils.counters["frames"]
    before = frames["total"]
    request.addfinalizer(torch._dynamo.utils.counters.clear)  # other tests count frames from a reset
    engine = _engine(seven_block_transformer(Variant.EDIT_2509), resident=(1,), fast=fast)
    engine.compile_blocks(True, compiler=lambda f: torch.compile(f, backend="eager", dynamic=False))
    first = _image(engine)
    assert engine.compiling.wait_until_built(DEADLINE_S), "the background build did not finish"
    assert engine.compiling.failures == {}
    built = frames["total"] - before
    # Two graphs: the streamed blocks' weights are inference tensors (their slots are made during a run), the
    # resident block's are not, and dynamo guards on that; the old compile on the first image made the second too.
    assert built == 2, f"the background build compiled {built} frames"
    second = _image(engine)
    assert engine.compile_note().startswith("compiled blocks in use")
    recompiled = frames["total"] - before - built
    assert recompiled == 0, f"the run recompiled {recompiled} times: the example's guards do not fit the real calls"
    _close(second, first)
