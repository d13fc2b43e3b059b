"""A real ComfyUI server for tests and the demo: start, run API workflows, collect, stop.

Two servers can be hosted (``SERVERS``): ComfyUI 0.3.75, which provisioning always builds, and ComfyUI 0.8.0,
built only where ``../shared/comfyui-0.8.0`` is next to the repository (its own venv: other frontend and
template pins, comfy-kitchen). The host runs ``main.py --cpu --listen 127.0.0.1`` (``--cpu`` unless asked for the GPU) on a free port with its own base
directory (models, input, output, user, custom_nodes) and the pack linked into
``custom_nodes/`` under any name. Workflows go to ``POST /prompt``; the websocket is
followed until the prompt ends; outputs come from ``/history`` and the output folder.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import websocket

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 240
MODEL_KINDS = ("diffusers", "diffusion_models", "text_encoders", "vae", "loras")
# Each server's (python, ComfyUI tree) keys in the env.sh tools/provision.sh writes.
SERVERS = {
    "0.3.75": ("QWENFIT_PYTHON", "QWENFIT_COMFYUI"),
    "0.8.0": ("QWENFIT_PYTHON_080", "QWENFIT_COMFYUI_080"),
}
DEFAULT_SERVER = "0.3.75"


def read_env(cache: Path | None = None) -> dict[str, str]:
    """The paths tools/provision.sh wrote (python, ComfyUI, models)."""
    cache = cache or Path(os.environ.get("QWENFIT_CACHE", REPO / ".cache"))
    env_file = cache / "env.sh"
    if not env_file.is_file():
        raise RuntimeError(f"{env_file} is missing: run `make setup` (tools/provision.sh) first.")
    values = {}
    for line in env_file.read_text().splitlines():
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip().strip('"')
    return values


def server_provisioned(server: str) -> bool:
    """Whether provisioning built ``server`` (0.8.0 only exists where ../shared/comfyui-0.8.0 was found)."""
    python_key, comfy_key = SERVERS[server]
    env = read_env()
    return bool(env.get(python_key)) and (Path(env.get(comfy_key, "")) / "main.py").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PromptResult:
    """How one prompt ended, and what it produced."""

    prompt_id: str | None
    status: str  # "success", "error", "interrupted", "invalid" (refused by validation)
    error: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    def error_text(self) -> str:
        return json.dumps(self.error)

    def progress_events(self, node_id: str) -> list[dict[str, Any]]:
        return [e["data"] for e in self.events if e["type"] == "progress" and e["data"].get("node") == node_id]


class ComfyHost:
    """One ComfyUI server process. Use as a context manager; it always shuts down."""

    def __init__(
        self,
        base_dir: Path,
        pack_link_name: str = "ComfyUI-QwenFit",
        extra_args: tuple[str, ...] = (),
        cpu: bool = True,
        front_end: str | None = None,
        server: str = DEFAULT_SERVER,
    ) -> None:
        """``front_end``: another frontend's static folder to serve (``--front-end-root``; None: the host's own).
        ``server``: which provisioned ComfyUI runs (a key of ``SERVERS``)."""
        env = read_env()
        python_key, comfy_key = SERVERS[server]
        if python_key not in env:
            raise RuntimeError(f"ComfyUI {server} is not provisioned (no {python_key} in .cache/env.sh)")
        self.server = server
        self.python = env[python_key]
        self.comfy = Path(env[comfy_key])
        self.models = Path(env["QWENFIT_MODELS"])
        self.base = base_dir
        self.pack_link_name = pack_link_name
        self.extra_args = extra_args
        self.cpu = cpu
        self.front_end = front_end
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base_dir / "server.log"
        self.process: subprocess.Popen | None = None

    # ---- layout -------------------------------------------------------------------------
    def prepare(self) -> None:
        """Create the base directory: pack link, model links, input/output folders."""
        for sub in ("custom_nodes", "input", "output", "user", "temp", *(f"models/{k}" for k in MODEL_KINDS)):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        link = self.base / "custom_nodes" / self.pack_link_name
        if not link.exists():
            link.symlink_to(REPO, target_is_directory=True)
        for kind in MODEL_KINDS:  # the tiny models, in each folder ComfyUI users have
            source = self.models / kind
            for model in sorted(source.iterdir()) if source.is_dir() else []:
                target = self.base / "models" / kind / model.name
                if not model.name.startswith(".") and not target.exists():
                    target.symlink_to(model, target_is_directory=model.is_dir())

    @property
    def output_dir(self) -> Path:
        return self.base / "output"

    @property
    def input_dir(self) -> Path:
        return self.base / "input"

    def add_input(self, source: Path, name: str | None = None) -> str:
        """Copy a file into ComfyUI's input folder; returns the name LoadImage takes."""
        name = name or source.name
        shutil.copyfile(source, self.input_dir / name)
        return name

    # ---- life cycle ---------------------------------------------------------------------
    def start(self) -> "ComfyHost":
        self.prepare()
        front_end = self.front_end
        args = [
            self.python,
            str(self.comfy / "main.py"),
            *(["--cpu"] if self.cpu else []),
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--base-directory",
            str(self.base),
            "--disable-auto-launch",
            "--database-url",
            "sqlite:///:memory:",
            *(["--front-end-root", front_end] if front_end else []),
            *self.extra_args,
        ]
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
        log = open(self.log_path, "wb")  # noqa: SIM115 (kept open for the process's life)
        self.process = subprocess.Popen(args, cwd=self.comfy, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode} during start-up:\n{self.log()}")
            try:
                if requests.get(f"{self.url}/system_stats", timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {START_TIMEOUT_S} s:\n{self.log()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=20)

    def __enter__(self) -> "ComfyHost":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def pack_import_failures(self) -> list[str]:
        """Lines of the server log that report this pack failing to import."""
        return [
            line
            for line in self.log().splitlines()
            if self.pack_link_name in line and ("IMPORT FAILED" in line or "Cannot import" in line)
        ]

    # ---- API ----------------------------------------------------------------------------
    def get(self, path: str, **params: Any) -> requests.Response:
        return requests.get(f"{self.url}{path}", params=params, timeout=30)

    def object_info(self) -> dict[str, Any]:
        return self.get("/object_info").json()

    def interrupt(self) -> None:
        requests.post(f"{self.url}/interrupt", timeout=10)

    def run(
        self, workflow: dict[str, Any], timeout: float = 600, on_event: Callable[[dict[str, Any]], None] | None = None
    ) -> PromptResult:
        """Queue an API-format workflow and follow it to its end (``on_event`` sees each message)."""
        client_id = uuid.uuid4().hex
        ws = websocket.create_connection(f"ws://127.0.0.1:{self.port}/ws?clientId={client_id}", timeout=timeout)
        try:
            response = requests.post(
                f"{self.url}/prompt", json={"prompt": workflow, "client_id": client_id}, timeout=30
            )
            if response.status_code != 200:
                return PromptResult(None, "invalid", error=response.json())
            prompt_id = response.json()["prompt_id"]
            status, error, events = self._follow(ws, prompt_id, timeout, on_event)
        finally:
            ws.close()
        result = PromptResult(prompt_id, status, error=error, events=events)
        history = self.get(f"/history/{prompt_id}").json().get(prompt_id, {})
        result.outputs = history.get("outputs", {})
        for node_output in result.outputs.values():
            for image in node_output.get("images", []):
                if image.get("type") == "output":
                    result.files.append(self.output_dir / image.get("subfolder", "") / image["filename"])
        return result

    @staticmethod
    def _follow(
        ws: websocket.WebSocket, prompt_id: str, timeout: float, on_event: Callable[[dict[str, Any]], None] | None
    ) -> tuple[str, dict, list]:
        events: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            raw = ws.recv()
            if not isinstance(raw, str):
                continue  # binary preview frames
            message = json.loads(raw)
            data = message.get("data", {})
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            events.append(message)
            if on_event is not None:
                on_event(message)
            kind = message.get("type")
            if kind == "execution_error":
                return "error", data, events
            if kind == "execution_interrupted":
                return "interrupted", data, events
            if kind == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                return "success", {}, events
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout} s")


def main() -> int:
    """Start a host on a scratch base directory and keep it running (for poking at by hand)."""
    import tempfile

    server = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_SERVER  # 0.3.75 or 0.8.0
    base = Path(tempfile.mkdtemp(prefix="qwenfit-host-"))
    with ComfyHost(base, server=server) as host:
        print(f"ComfyUI {server} with QwenFit at {host.url} (base {base}); Ctrl-C stops it", flush=True)
        try:
            host.process.wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
