"""The pack's read-only web routes, under /qwenfit/ (also /api/qwenfit/, as ComfyUI mirrors routes).

- GET /qwenfit/memory: per-GPU used/total, host RAM, this process's RSS, pinned bytes, the sampler state, and
  what the held pipeline keeps on the GPU as ComfyUI's memory manager sees it (and when it took it back).
- GET /qwenfit/memory/history?seconds=60: the sampled history and the runs' phase marks.
- GET /qwenfit/last_run: the last run's record (phases, peaks, s/step, the plan's prediction).
- GET /qwenfit/plan_preview?model=...&...: the plan a workflow will get (nodes/plan_preview.py, optim/jobs/plan_preview.py).
- GET /qwenfit/settings_schema: the settings nodes' choices and their preview parameter names (optim/settings.py).

Every parameter is checked: a wrong one gets HTTP 400 with ``{"error", "parameter"}``; a model file the
loader does not list (a preset naming a file not in place yet) is a normal state: 200 with
``{"ok": false, "status": "missing_file", "parameter", "error"}``. Answers carry
model names as the loader lists them and never a file path (messages are scrubbed of paths).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from ..optim import (
    QwenFitError,
    arena_bytes,
    last_run,
    lora_names,
    lora_stack_from_names,
    preview,
    same_pipeline,
    schema_json,
    text_encoder_names,
    vae_names,
)
from .comfy_glue import compute_device, model_roots
from .live_monitor import INTERVAL_S, live_monitor, mark_json, monitor_enabled, record_json, sample_json
from .loader import PIPELINES, build_source, model_choices
from .memory_manager import holdings_json
from .plan_preview import BadParameter, MissingFile, ModelChoices, parse_preview_query, preview_json

log = logging.getLogger("qwenfit")
PREFIX = "/qwenfit"
MAX_HISTORY_S = 600
# An absolute path (POSIX, or a Windows drive path); only its last part is kept.
_PATH = re.compile(r"(?<![\w.~-])(?:[A-Za-z]:)?[/\\](?:[^\s'\"/\\]+[/\\])+([^\s'\"/\\]*)")


def scrub_paths(text: str) -> str:
    """``text`` with every absolute path cut down to its last part (a file or folder name)."""
    return _PATH.sub(lambda m: m.group(1) or "(a folder)", text)


def _bad(error: BadParameter) -> web.Response:
    return web.json_response({"error": scrub_paths(error.reason), "parameter": error.name}, status=400)


def _refuse_unknown(query: Mapping[str, str], allowed: tuple[str, ...] = ()) -> None:
    for name in query:
        if name not in allowed:
            hint = f"this route takes {', '.join(allowed)}" if allowed else "this route takes no parameters"
            raise BadParameter(name, f"unknown parameter; {hint}")


def _single_values(request: web.Request) -> dict[str, str]:
    """The query as a plain dict; a parameter given twice is refused (which one would count?)."""
    values: dict[str, str] = {}
    for name, value in request.query.items():
        if name in values:
            raise BadParameter(name, "given more than once; give it once")
        values[name] = value
    return values


def model_choices_now() -> ModelChoices:
    """What the loader's dropdowns offer right now (ComfyUI's model folders only)."""
    return ModelChoices(
        models=tuple(model_choices()),
        text_encoders=tuple(text_encoder_names(model_roots)),
        vaes=tuple(vae_names(model_roots)),
        loras=tuple(lora_names(model_roots)),
    )


async def memory(request: web.Request) -> web.Response:
    try:
        _refuse_unknown(_single_values(request))
    except BadParameter as error:
        return _bad(error)
    monitor = live_monitor()
    return web.json_response(
        {
            **sample_json(monitor.current()),
            "source": monitor.sampler.source,
            "live": monitor.enabled and monitor.sampler.running,
            "interval_s": INTERVAL_S,
            "phase": monitor.phase,
            "arena_bytes": arena_bytes(),
            "comfy_memory_manager": holdings_json(),
        }
    )


async def memory_history(request: web.Request) -> web.Response:
    try:
        query = _single_values(request)
        _refuse_unknown(query, ("seconds",))
        raw = query.get("seconds", "60")
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 6) or not 1 <= int(raw) <= MAX_HISTORY_S:
            raise BadParameter("seconds", f"{raw!r} is not a whole number of seconds from 1 to {MAX_HISTORY_S}")
    except BadParameter as error:
        return _bad(error)
    sampler = live_monitor().sampler
    now = time.monotonic()  # the samples' clock
    since = now - int(raw)
    return web.json_response(
        {
            "now": round(now, 3),
            "live": monitor_enabled() and sampler.running,
            "interval_s": INTERVAL_S,
            "samples": [sample_json(s) for s in sampler.samples(since)],
            "marks": [mark_json(m) for m in sampler.marks(since)],
        }
    )


async def last_run_route(request: web.Request) -> web.Response:
    try:
        _refuse_unknown(_single_values(request))
    except BadParameter as error:
        return _bad(error)
    record = last_run()
    return web.json_response({"record": None if record is None else _scrubbed(record_json(record))})


def _scrubbed(value: Any) -> Any:
    if isinstance(value, str):
        return scrub_paths(value)
    if isinstance(value, dict):
        return {k: _scrubbed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrubbed(v) for v in value]
    return value


def _preview_now(params: dict[str, str]) -> dict[str, Any]:
    settings = parse_preview_query(params, model_choices_now())
    source = build_source(settings.model, settings.text_encoder, settings.vae)
    monitor = live_monitor()
    held = PIPELINES.peek()
    # The pipeline of these very settings is loaded: its budgets were fixed at load ("auto" read once).
    loaded_gpus = held.gpus if held is not None and same_pipeline(settings, source, held.request) else None
    device = compute_device()
    loras = lora_stack_from_names(model_roots, ((settings.lora, settings.lora_strength), *settings.loras))
    answer = preview(
        settings, source, device, last_run(), may_measure_speed=lambda: not monitor.run_active,
        loaded_gpus=loaded_gpus, loras=loras,
    )  # fmt: skip
    data = preview_json(settings, answer, str(device))
    # How long these very settings took to load, when they are what is loaded now.
    if loaded_gpus is not None:
        data["notes"] = [*data["notes"], *held.describe_load().splitlines()]
    return data


async def plan_preview(request: web.Request) -> web.Response:
    try:
        params = _single_values(request)
        # Headers and meta modules take up to a second or two: off the event loop.
        answer = await asyncio.get_running_loop().run_in_executor(None, _preview_now, params)
    except MissingFile as error:  # a preset naming a file the user has not put in place yet: a normal state
        return web.json_response(
            {"ok": False, "status": "missing_file", "parameter": error.name, "error": scrub_paths(error.reason)}
        )
    except BadParameter as error:
        return _bad(error)
    except QwenFitError as error:  # the settings are valid but no plan can be made: say why
        return web.json_response({"ok": False, "error": scrub_paths(str(error))})
    except Exception as error:
        log.exception("QwenFit plan preview failed")
        return web.json_response({"ok": False, "error": f"the preview failed: {type(error).__name__}"}, status=500)
    return web.json_response(_scrubbed(answer))


async def settings_schema(request: web.Request) -> web.Response:
    try:
        _refuse_unknown(_single_values(request))
    except BadParameter as error:
        return _bad(error)
    return web.json_response({"groups": schema_json()})


ROUTES: dict[str, Callable[[web.Request], Awaitable[web.Response]]] = {
    f"{PREFIX}/memory": memory,
    f"{PREFIX}/memory/history": memory_history,
    f"{PREFIX}/last_run": last_run_route,
    f"{PREFIX}/plan_preview": plan_preview,
    f"{PREFIX}/settings_schema": settings_schema,
}


# The presets' thumbnails. ComfyUI 0.3.75 serves the whole example_workflows folder; newer servers serve
# only its .json files there while the template browser still asks for <name>.jpg (app/custom_node_manager.py).
# The pack's folder name is the module name ComfyUI uses in that URL (not resolved: it may be a link).
PACK_FOLDER = Path(__file__).parent.parent
THUMBNAILS = PACK_FOLDER / "example_workflows"


async def thumbnail(request: web.Request) -> web.Response:
    """A preset's .jpg, by the preset's name only: anything else is not found."""
    names = {path.stem for path in THUMBNAILS.glob("*.jpg")}
    name = request.match_info["name"]
    if name not in names:
        raise web.HTTPNotFound()
    return web.FileResponse(THUMBNAILS / f"{name}.jpg", headers={"Content-Type": "image/jpeg"})


def register_routes(routes: web.RouteTableDef) -> None:
    """Add the pack's GET routes to ComfyUI's route table (before the server adds them to its app; the
    server also adds each under /api). The thumbnail route is registered before the server's own template
    routes, so it answers where a newer server would refuse the .jpg."""
    for path, handler in ROUTES.items():
        routes.get(path)(handler)
    routes.get(f"/workflow_templates/{PACK_FOLDER.name}/{{name}}.jpg")(thumbnail)
