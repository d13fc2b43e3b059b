"""A run never fails because the page asked a question: the Edit preset, queued again and again after ComfyUI's
/free, its transformer file switched each time so that every run loads, while two threads keep asking the plan preview and the pack's other routes (memory, its history, the
last run, the settings schema, the presets and their thumbnails), as an open page does, on each server.

The preview sizes models from their headers by building them on the meta device; it once did that by patching
parameter creation for the whole process (accelerate's init_empty_weights), so a preview answered while the
loader built its model sent the loader's weights to the meta device: "Cannot copy out of meta tensor", blamed
on the user's files. Each preview here asks for settings not asked for recently (the route keeps the last
few answers), so every one of them builds its models again while the runs load, encode, denoise and decode.
"""

from __future__ import annotations

import itertools
import threading
import time

import requests
from conftest import PACK_LINK_NAME, REPO, load_json

from tools.presets import on_tiny_models

RUNS = 20
PRESET = REPO / "tests" / "workflows" / "qwenfit_edit_auto.api.json"
# Two tiny Edit files in the preset's layout: switching between them makes each run load (and fill) a model.
TRANSFORMERS = ("qwenfit_tiny_edit_2509_fp8_e4m3fn.safetensors", "qwenfit_tiny_edit_2509_bf16.safetensors")


def _edit_preset(run: int) -> dict:
    """The Edit preset on the tiny models, with this run's transformer file and seed (a new seed each time:
    ComfyUI must run the edit, not answer it from its cache)."""
    graph = on_tiny_models(load_json(PRESET))
    for node in graph.values():
        if node["class_type"] == "QwenFitOptimizedLoader":
            node["inputs"]["model"] = TRANSFORMERS[run % 2]
        if node["class_type"] == "QwenFitInstructEdit":
            node["inputs"].update(seed=1000 + run, width=64, height=64, steps=2)
    return graph


PREVIEW_THREADS = 2
DEADLINE_S = 600  # per run; generous on a loaded 2-core machine, only a hang reaches it


def _other_routes(comfy) -> list[tuple[str, dict[str, str]]]:
    """The pack's other read-only routes, with parameters a page sends."""
    presets = comfy.get("/workflow_templates").json()[PACK_LINK_NAME]
    assert presets, "the server lists no preset of the pack"
    return [
        ("/qwenfit/memory", {}),
        ("/qwenfit/memory/history", {"seconds": "60"}),
        ("/qwenfit/last_run", {}),
        ("/qwenfit/settings_schema", {}),
        ("/workflow_templates", {}),
        (f"/api/workflow_templates/{PACK_LINK_NAME}/{presets[0]}.json", {}),
        (f"/workflow_templates/{PACK_LINK_NAME}/{presets[0]}.jpg", {}),
    ]


def _preview_queries(comfy) -> list[dict[str, str]]:
    """Distinct preview questions, more of them than the route remembers, over the tiny models it lists."""
    loader = comfy.object_info()["QwenFitOptimizedLoader"]["input"]["required"]
    kind, spec = loader["model"][:2]
    listed = spec["options"] if kind == "COMBO" else kind  # the V3 schema's combo, or the classic list
    models = [m for m in listed if m.startswith("qwenfit_tiny") and m.endswith(".safetensors")]
    assert len(models) >= 2, models
    schema = comfy.get("/qwenfit/settings_schema").json()["groups"]
    precision = next(
        choice for group in schema for choice in group["choices"] if choice["query"] == "precision_transformer"
    )
    queries = [
        {"model": model, "precision_transformer": option, "width": "128", "height": "128"}
        for model, option in itertools.product(models, precision["options"])
    ]
    assert len(queries) > 8, "fewer distinct questions than the route remembers: the previews would stop building"
    return queries


class _Previews:
    """Threads that ask the plan preview, and after each the next of the other routes, without pause until
    stopped, recording every answer's status."""

    def __init__(self, comfy, queries: list[dict[str, str]], others: list[tuple[str, dict[str, str]]]) -> None:
        self.comfy, self.queries = comfy, queries
        self.requests = [
            pair
            for i, query in enumerate(queries)
            for pair in (("/qwenfit/plan_preview", query), others[i % len(others)])
        ]
        self.stop = threading.Event()
        self.answers: list[tuple[float, float, int, str]] = []  # asked, answered (monotonic), status, text
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._ask, args=(i,), daemon=True) for i in range(PREVIEW_THREADS)]

    def _ask(self, offset: int) -> None:
        for path, query in itertools.islice(itertools.cycle(self.requests), offset, None):
            if self.stop.is_set():
                return
            asked = time.monotonic()
            response = requests.get(f"{self.comfy.url}{path}", params=query, timeout=DEADLINE_S)
            with self._lock:
                self.answers.append((asked, time.monotonic(), response.status_code, f"{path}: {response.text[:300]}"))

    def overlapping(self, start: float, end: float) -> int:
        """How many previews were under way at some moment of [start, end]."""
        with self._lock:
            return sum(1 for asked, answered, _, _ in self.answers if asked <= end and answered >= start)

    def __enter__(self) -> "_Previews":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(DEADLINE_S)


def test_runs_after_free_with_previews_asked_throughout_all_succeed(any_comfy):
    comfy = any_comfy
    queries = _preview_queries(comfy)
    failures, runs = [], []
    with _Previews(comfy, queries, _other_routes(comfy)) as previews:
        for run in range(RUNS):
            answer = requests.post(f"{comfy.url}/free", json={"unload_models": True, "free_memory": True}, timeout=30)
            assert answer.status_code == 200
            start = time.monotonic()
            result = comfy.run(_edit_preset(run), timeout=DEADLINE_S)
            runs.append((start, time.monotonic()))
            if result.status != "success":
                failures.append((run, result.status, result.error.get("exception_message", result.error_text())[:400]))
    assert failures == [], f"{len(failures)} of {RUNS} runs failed: {failures}"
    broken = [answer[2:] for answer in previews.answers if answer[2] != 200]
    assert broken == [], broken[:5]
    # Previews were under way during every run (else this test could not catch the race).
    assert all(previews.overlapping(start, end) > 0 for start, end in runs), runs
