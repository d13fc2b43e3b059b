"""Compiled block functions that never hold an image up: they build on a background thread while images run eager.

torch.compile takes 15 to 37 s for the block function on a GPU (issue 31's H100 runs). Compiled on the first call,
that time sat on the first image after every load. Here each compiled function is a :class:`CompiledSwitch` in the
engine's place of the method:

- A call whose shapes, strides, dtypes and devices were not seen before runs the eager method and hands a copy of its
  inputs (the example) to the build thread, which calls the compiled function on it once: dynamo traces and the
  backend generates its kernels then. Its output is thrown away.
- :meth:`BackgroundCompile.at_run_boundary` (the engine calls it as a run begins) switches every shape whose build
  has finished to the compiled function. Never in the middle of an image: within one image every call of one shape
  takes one path, so an image's numerics are one path's.
- A build that fails leaves its shape eager for good; the run report says why.

The example holds its own references, so a streamer that re-points the block's weights at another slot, or a release
that frees the host arenas, cannot pull anything from under the build: the block's tensors on the computing GPU are
aliased by new Parameters (the caching allocator keeps their memory until the build lets go); tensors in host memory
are copied (the host arena is freed explicitly on release); large ones on another device are replaced by meta tensors
(the modulation layers: the block function never reads them). On a GPU the build runs on the stream the run computes
on, so its kernels queue behind the run's and freed memory is reused in stream order. Dynamo guards on thread-local
state (grad and inference mode): the build thread takes the run's.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Hashable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

log = logging.getLogger("qwenfit")

Compiler = Callable[[Callable[..., Any]], Callable[..., Any]]
SMALL_BYTES = 2**20  # tensors on another device than the computing one up to this size are copied, not dropped


def compile_static(function: Callable[..., Any]) -> Callable[..., Any]:
    """torch.compile with static shapes: every block call of an image has the same shapes."""
    return torch.compile(function, dynamic=False)


def _tensor_signature(tensor: torch.Tensor) -> Hashable:
    return (tuple(tensor.shape), tensor.stride(), tensor.dtype, tensor.device, tensor.is_inference())


class Signatures:
    """What decides whether a compiled graph serves a call: tensors' sizes, strides, dtypes, devices and whether they
    are inference tensors, the values of plain Python arguments; for a module its type and one weight's signature.
    Every block of a model has the same layers, so one graph serves them all, but a resident block's weights may be
    plain tensors where a streamed block's are inference tensors (made during a run), or live on another GPU: dynamo
    guards on each weight, so those take another graph. The weight probed is the module's last (an MLP's, streamed
    with the block; the first is a modulation layer's, which stays where the modulation table keeps it)."""

    def __init__(self) -> None:
        self._probes: dict[int, tuple[nn.Module, torch.Tensor | None]] = {}

    def __call__(self, value: Any) -> Hashable:
        if isinstance(value, torch.Tensor):
            return _tensor_signature(value)
        if isinstance(value, nn.Module):
            known = self._probes.get(id(value))
            if known is None or known[0] is not value:
                known = (value, next(reversed(list(value.parameters())), None))
                self._probes[id(value)] = known
            probe = known[1]
            return (type(value), None if probe is None else _tensor_signature(probe))
        if isinstance(value, (list, tuple)):
            return (type(value), tuple(self(v) for v in value))
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        return type(value)


def _copied(tensor: torch.Tensor) -> torch.Tensor:
    """A copy with the same size and strides (an expanded view stays expanded) and, like the original, an inference
    tensor or not: dynamo guards on strides and on the dispatch keys inference mode leaves out."""
    with torch.inference_mode(tensor.is_inference()):
        tensor = tensor.detach()
        if tensor.numel() == 0:
            return torch.empty_strided(tensor.size(), tensor.stride(), dtype=tensor.dtype, device=tensor.device)
        extent = 1 + sum((n - 1) * s for n, s in zip(tensor.size(), tensor.stride(), strict=True))
        return tensor.as_strided((extent,), (1,)).clone().as_strided(tensor.size(), tensor.stride())


def _held(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A block tensor as the build holds it (see the module's docstring)."""
    if tensor.device == device and device.type != "cpu":
        with torch.inference_mode(tensor.is_inference()):
            return tensor.detach()  # an alias: the same keys as the original
    if tensor.device == device or tensor.numel() * tensor.element_size() <= SMALL_BYTES:
        return _copied(tensor)
    return torch.empty_like(tensor, device="meta")


def _shadow(module: nn.Module, device: torch.device) -> nn.Module:
    """A copy of ``module``'s tree with its own Parameter objects over the tensors :func:`_held` gives; plain
    attributes (flags, hooks) are shared."""
    twin = copy.copy(module)
    twin.__dict__["_parameters"] = {
        name: None if p is None else nn.Parameter(_held(p.data, device), requires_grad=p.requires_grad)
        for name, p in module._parameters.items()
    }
    twin.__dict__["_buffers"] = {name: None if b is None else _held(b, device) for name, b in module._buffers.items()}
    twin.__dict__["_modules"] = {name: None if m is None else _shadow(m, device) for name, m in module._modules.items()}
    return twin


def _device_of(args: tuple) -> torch.device:
    for value in args:
        if isinstance(value, torch.Tensor):
            return value.device
    return torch.device("cpu")


def _example(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return _copied(value)
    if isinstance(value, nn.Module):
        return _shadow(value, device)
    if isinstance(value, (list, tuple)):
        return type(value)(_example(v, device) for v in value)
    return value


@dataclass
class _Build:
    switch: CompiledSwitch
    key: Hashable
    example: tuple | None
    grad: bool
    inference: bool
    stream: torch.cuda.Stream | None

    def run(self) -> None:
        with ExitStack() as stack:
            stack.enter_context(torch.inference_mode(self.inference))
            stack.enter_context(torch.set_grad_enabled(self.grad))
            if self.stream is not None:
                stack.enter_context(torch.cuda.stream(self.stream))
            self.switch.compiled(*self.example)
            if self.stream is not None:
                self.stream.synchronize()  # nothing queued still reads the example when it is dropped


class CompiledSwitch:
    """Stands where an engine method was: runs the eager method, or its compiled form for shapes built already."""

    def __init__(self, name: str, eager: Callable[..., Any], builder: BackgroundCompile) -> None:
        self.name, self.eager, self.builder = name, eager, builder
        self.compiled: Callable[..., Any] | None = None  # the compiler's wrapper, made at the first build
        self.signature = Signatures()
        # Read and written by the calling thread only; the build thread reports through the builder's lock.
        self._seen: set[Hashable] = set()
        self._installed: set[Hashable] = set()
        self.eager_calls = 0  # in the current run
        self.compiled_calls = 0

    def __call__(self, *args: Any) -> Any:
        key = self.signature(args)
        if key in self._installed:
            self.compiled_calls += 1
            return self.compiled(*args)
        if key not in self._seen:
            self._seen.add(key)
            self.builder.submit(self, key, args)
        self.eager_calls += 1
        return self.eager(*args)


class BackgroundCompile:
    """The compiled switches of one engine and the thread that builds them (one build at a time, in call order)."""

    def __init__(self, compiler: Compiler = compile_static) -> None:
        self.compiler = compiler
        self.switches: list[CompiledSwitch] = []
        self._lock = threading.Condition()
        self._queue: list[_Build] = []
        self._worker: threading.Thread | None = None
        self._cancelled = threading.Event()
        # Written by the build thread under the lock, read by the caller's thread at run boundaries:
        self._built: list[tuple[CompiledSwitch, Hashable]] = []
        self.failures: dict[tuple[str, Hashable], str] = {}
        self.build_seconds = 0.0  # the builds' total so far

    def switch(self, name: str, eager: Callable[..., Any]) -> CompiledSwitch:
        """A switch for ``eager``, built by this builder."""
        switch = CompiledSwitch(name, eager, self)
        self.switches.append(switch)
        return switch

    def submit(self, switch: CompiledSwitch, key: Hashable, args: tuple) -> None:
        """Queue a build of ``switch`` for calls like ``args`` (copied now, in the caller's thread)."""
        if self._cancelled.is_set():
            return
        try:
            if switch.compiled is None:
                switch.compiled = self.compiler(switch.eager)
            device = _device_of(args)
            stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
            example = _example(args, device)
        except Exception as error:  # noqa: BLE001 - the calls stay eager; the report says why
            self._failed(switch, key, error)
            return
        build = _Build(switch, key, example, torch.is_grad_enabled(), torch.is_inference_mode_enabled(), stream)
        with self._lock:
            self._queue.append(build)
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="qwenfit-compile", daemon=True)
                self._worker.start()

    def _work(self) -> None:
        while True:
            with self._lock:
                if self._cancelled.is_set() or not self._queue:
                    self._queue.clear()
                    self._worker = None
                    self._lock.notify_all()
                    return
                build = self._queue.pop(0)
            start = time.perf_counter()
            error: BaseException | None = None
            try:
                build.run()
            except BaseException as failure:  # noqa: BLE001 - reported, and that shape stays eager
                error = failure
            build.example = None  # the copies go now, not when the next build replaces this one
            seconds = time.perf_counter() - start
            with self._lock:
                if self._cancelled.is_set():
                    continue  # released or switched off meanwhile: nothing to install
                if error is None:
                    self._built.append((build.switch, build.key))
                    self.build_seconds += seconds
                    log.info("QwenFit: %s compiled in the background in %.1f s", build.switch.name, seconds)
                else:
                    self._failed(build.switch, build.key, error)
                error = None  # its traceback holds the build's frames
                self._lock.notify_all()

    def _failed(self, switch: CompiledSwitch, key: Hashable, error: BaseException) -> None:
        message = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        with self._lock:
            self.failures[(switch.name, key)] = f"{type(error).__name__}: {message}"
        log.warning(
            "QwenFit: compiling %s failed (%s: %s); it runs uncompiled", switch.name, type(error).__name__, message
        )

    @property
    def building(self) -> bool:
        """A build is queued or under way."""
        with self._lock:
            return bool(self._queue) or self._worker is not None

    def wait_until_built(self, timeout: float | None = None) -> bool:
        """Return once no build is queued or under way (True), or after ``timeout`` seconds (False)."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._queue and self._worker is None, timeout)

    def at_run_boundary(self) -> None:
        """Before a run: every shape built since the last run switches to the compiled function; counts restart."""
        with self._lock:
            built, self._built = self._built, []
        for switch, key in built:
            switch._installed.add(key)
        for switch in self.switches:
            switch.eager_calls = switch.compiled_calls = 0

    def cancel(self) -> None:
        """Abandon the builds: queued ones are dropped, the one under way finishes and is thrown away (its thread,
        a daemon, then ends and lets go of the example and the engine)."""
        self._cancelled.set()
        with self._lock:
            self._queue.clear()
            self._lock.notify_all()

    def describe_run(self) -> str:
        """What the last run did, for its report ("" before any block call)."""
        eager = sum(s.eager_calls for s in self.switches)
        compiled = sum(s.compiled_calls for s in self.switches)
        with self._lock:
            failures = list(self.failures.values())
            pending = bool(self._queue) or self._worker is not None
            built_meanwhile = bool(self._built)
        built = f" (built in the background in {self.build_seconds:.1f} s)" if self.build_seconds else ""
        failed = f"compile failed: {failures[-1]}" if failures else ""
        if compiled and not eager:
            return f"compiled blocks in use{built}"
        if compiled:
            why = f"; {failed}: its calls ran uncompiled" if failed else "; a new shape ran uncompiled while it builds"
            return f"compiled blocks in use{built}{why}"
        if not eager:
            return ""
        if self._cancelled.is_set():
            return "compiled blocks: switched off before they were built (ran uncompiled)"
        if pending:
            return "compiled blocks: building in the background (this image ran uncompiled)"
        if built_meanwhile:
            return f"compiled blocks: built during this image{built} (it ran uncompiled; the next image uses them)"
        if failed:
            return f"{failed} (ran uncompiled)"
        return "compiled blocks: none built for this image's shapes (ran uncompiled)"
