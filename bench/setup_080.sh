# Sourced by the ComfyUI 0.8.0 GPU scripts (gpu_handback_080.sh, gpu_native08.sh): the carried wheels installed
# into /tmp/site where the machine lacks the package or has an older one, and ComfyUI 0.8.0's tree unpacked to
# $COMFY (default /tmp/comfyui-0.8.0) from the carried .gl/comfyui-0.8.0.tar.xz.
COMFY=${COMFY:-/tmp/comfyui-0.8.0}
# Carried wheels: install what this machine lacks (or has older), into /tmp/site.
export PYTHONPATH=/tmp/site
wheels=$(python3 - <<'PY'
import glob, os, re, sys
from importlib.metadata import PackageNotFoundError, version
try:
    from packaging.version import Version
except ImportError:  # plain numbers are enough for the carried versions
    def Version(text):
        return tuple(int(x) if x.isdigit() else 0 for x in re.split(r"[.+-]", text))
for path in sorted(glob.glob(".whl/**/*.whl", recursive=True)):
    name, carried = os.path.basename(path).split("-")[:2]
    try:
        have = version(name.replace("_", "-"))
    except PackageNotFoundError:
        have = None
    if have is None or Version(have) < Version(carried):
        print(path)
    else:
        print(f"have {name} {have} (carried {carried})", file=sys.stderr)
PY
)
if [ -n "$wheels" ]; then
  echo "installing: $(echo $wheels | xargs -n1 basename | tr '\n' ' ')"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $wheels || exit 1
fi

# ComfyUI 0.8.0's tree (unmodified upstream source at 3cd7b32, ../shared/comfyui-0.8.0).
if [ ! -f "$COMFY/main.py" ]; then
  [ -f .gl/comfyui-0.8.0.tar.xz ] || { echo "no $COMFY and no .gl/comfyui-0.8.0.tar.xz: carry .gl (call 1)"; exit 1; }
  mkdir -p "$COMFY" && tar -xJf .gl/comfyui-0.8.0.tar.xz -C "$COMFY" || exit 1
fi
