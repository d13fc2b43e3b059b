"""Start ComfyUI's own server on an emulated card (the way ``bench/comfy_native.py`` emulates one), so that a
real server run of a workflow sees the memory of an 8 or 24 GB card on the lent GPU.

    python bench/capped_comfy.py --card 8 [--tiny] [--stage-log FILE] COMFYUI/main.py [main.py's arguments...]

Before torch is imported: ComfyUI's argument parsing on (main.py's arguments), its ``cuda_malloc`` module
(the allocator main.py would pick), the PyAV stand-in where PyAV is absent; then ``emulate_card``; then
main.py runs as ``__main__``, in this process. ComfyUI warns that torch was imported before it: expected.

``--tiny``: ComfyUI's fixed Qwen-Image sizes patched to the tiny models' (``comfy_native.patch_tiny_sizes``), for
a CPU dry run of ComfyUI's own Qwen nodes on tiny files. ``--stage-log FILE``: every node the server executes
appends one JSON line to FILE (``install_stage_probe``): torch's allocated/reserved bytes and ComfyUI's view
before and after it, so that a workflow's stages can be told apart inside one prompt.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import json
import runpy
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _after_import(name: str, patch) -> None:
    """Call ``patch(module)`` once the module ``name`` has been imported (main.py imports ``execution`` only after
    its own set-up, which an early import here would skip)."""

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            if fullname != name:
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(fullname)
            if spec is None or spec.loader is None:
                return spec
            exec_module = spec.loader.exec_module

            def run(module):
                exec_module(module)
                patch(module)

            spec.loader.exec_module = run
            return spec

    sys.meta_path.insert(0, Finder())


def memory_snapshot() -> dict:
    """This process's GPU memory as torch and ComfyUI see it now, and what QwenFit holds (if it is loaded)."""
    import comfy.model_management as mm
    import torch

    out: dict = {"t": time.time()}
    if torch.cuda.is_available():
        out["torch_allocated_bytes"] = torch.cuda.memory_allocated()
        out["torch_reserved_bytes"] = torch.cuda.memory_reserved()
        out["torch_peak_allocated_bytes"] = torch.cuda.max_memory_allocated()
        out["torch_peak_reserved_bytes"] = torch.cuda.max_memory_reserved()
    try:
        device = mm.get_torch_device()
        out["comfy_free_bytes"] = int(mm.get_free_memory(device))
        out["comfy_total_bytes"] = int(mm.get_total_memory(device))
    except Exception as error:  # a CPU server: the numbers are host RAM's
        out["comfy_free_error"] = repr(error)
    models = []
    for entry in list(mm.current_loaded_models):
        patcher = entry.model
        inner = getattr(patcher, "model", None)
        try:
            loaded = int(patcher.loaded_size())
        except Exception:
            loaded = None
        try:
            size = int(patcher.model_size())
        except Exception:
            size = None
        name = type(patcher).__name__ if type(patcher).__name__ == "QwenFitHold" else type(inner).__name__
        models.append({"model": name, "loaded_bytes": loaded, "size_bytes": size})
    out["comfy_loaded_models"] = models
    for module in list(sys.modules.values()):  # the pack's memory manager, under whatever name ComfyUI gave it
        holdings = getattr(module, "holdings_json", None)
        if callable(holdings) and getattr(module, "__name__", "").endswith("memory_manager"):
            try:
                out["qwenfit"] = holdings()
            except Exception as error:
                out["qwenfit"] = {"error": repr(error)}
            break
    return out


def install_stage_probe(path: Path) -> None:
    """Wrap ``execution.execute`` (one call per node; ``execute_async`` calls it by its module name): a JSON line
    per node with ``memory_snapshot()`` before and after it, the peaks reset at its start."""
    lock = threading.Lock()

    def write(record: dict) -> None:
        with lock, open(path, "a") as file:
            file.write(json.dumps(record, default=str) + "\n")

    def patch(execution) -> None:
        original = execution.execute

        async def execute(server, dynprompt, caches, current_item, *args, **kwargs):
            import torch

            node = dynprompt.get_node(current_item)
            record = {
                "prompt_id": getattr(server, "last_prompt_id", None),
                "node": current_item,
                "class_type": node.get("class_type"),
                "title": (node.get("_meta") or {}).get("title"),
            }
            try:
                record["cached"] = caches.outputs.get(current_item) is not None
            except Exception:
                record["cached"] = None
            record["before"] = memory_snapshot()
            if torch.cuda.is_available():
                try:
                    torch.cuda.reset_peak_memory_stats()
                except RuntimeError:  # an allocator without peak counters: the peaks then cover the whole run
                    pass
            start = time.perf_counter()
            result = await original(server, dynprompt, caches, current_item, *args, **kwargs)
            record["seconds"] = time.perf_counter() - start
            record["after"] = memory_snapshot()
            record["result"] = str(result[0]) if isinstance(result, tuple) and result else str(result)
            if isinstance(result, tuple) and len(result) > 1 and result[1] is not None:
                record["error"] = str(result[1])[:2000]
            write(record)
            return result

        execution.execute = execute

    _after_import("execution", patch)


def main() -> None:
    argv = sys.argv[1:]
    if len(argv) < 3 or argv[0] != "--card":
        raise SystemExit(__doc__)
    card, argv = argv[1], argv[2:]
    tiny = stage_log = None
    while argv and argv[0] in ("--tiny", "--stage-log"):
        if argv[0] == "--tiny":
            tiny, argv = True, argv[1:]
        else:
            stage_log, argv = Path(argv[1]).resolve(), argv[2:]
    if not argv:
        raise SystemExit(__doc__)
    main_py, rest = Path(argv[0]).resolve(), argv[1:]
    sys.argv = [str(main_py), *rest]
    sys.path.insert(0, str(REPO))
    from bench.comfy_native import CARDS, _stub_av  # imports no torch

    if card not in CARDS:
        raise SystemExit(f"--card {card}: one of {', '.join(CARDS)}")
    sys.path.remove(str(REPO))  # ComfyUI's own ``nodes`` and ``utils`` must win over this repo's folders
    sys.path.insert(0, str(main_py.parent))
    import comfy.options

    comfy.options.enable_args_parsing()
    import cuda_malloc  # noqa: F401  (sets PYTORCH_CUDA_ALLOC_CONF as main.py would, before torch)

    _stub_av()
    from bench.comfy_native import emulate_card

    print(f"capped_comfy: card {card}: {emulate_card(card)}", flush=True)
    if tiny:
        from bench.comfy_native import patch_tiny_sizes

        patch_tiny_sizes()
        print("capped_comfy: ComfyUI's Qwen-Image sizes patched to the tiny models'", flush=True)
    if stage_log is not None:
        install_stage_probe(stage_log)
        print(f"capped_comfy: per-node memory to {stage_log}", flush=True)
    runpy.run_path(str(main_py), run_name="__main__")


if __name__ == "__main__":
    main()
