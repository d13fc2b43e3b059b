# Issue 32 on the lent GPU: the 8 GB memory hand-back check inside ComfyUI 0.8.0's own server, on an emulated 8 GB
# card: QwenFit's 8 GB Edit, then ComfyUI's own Qwen-Image-Edit nodes (its loaders on the same real-size split
# files), then QwenFit's Edit again, in one prompt, twice (bench/memory_handback.py --native qwen-edit).
# Two calls on one warm machine (the carried files of one call would pass the 64 MiB limit, and writing the
# 30 GB of files takes minutes):
#   1. WRITE_ONLY=1 bash bench/gpu_handback_080.sh     carry [".gl", ".whl/pack", ".whl/server"]
#      installs the pack's and the server's wheels, unpacks .gl/comfyui-0.8.0.tar.xz, writes the files
#   2. bash bench/gpu_handback_080.sh                  carry [".whl/kitchen"]
#      installs comfy-kitchen (its ROCm library left out), runs the check; results in $OUT/handback_080/
# Wheels go to /tmp/site, each only where the machine lacks its package or has an older version.
# Settings: MODELS (default /tmp/qwenfit-native; /dev/shm/qwenfit-native with 160 GiB of RAM or more), COMFY (/tmp/comfyui-0.8.0),
# CARD (8), STEPS (6), RUN_TIMEOUT (s, 480). CPU dry run on tiny files: see bench/README.md.
set -o pipefail
export PYTHONUNBUFFERED=1
RESULTS=$OUT/handback_080
mkdir -p "$RESULTS"
. bench/setup_080.sh || exit 1
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader

. bench/native_files_080.sh || exit 1
if [ -n "$WRITE_ONLY" ]; then echo "WRITE_ONLY: files ready; now the second call (carry .whl/kitchen)"; exit 0; fi

python3 -c "import comfy_kitchen" 2>/dev/null || { echo "comfy_kitchen missing: carry .whl/kitchen"; exit 1; }
python3 -c "import diffusers, aiohttp, sqlalchemy, alembic, pydantic, torchsde, websocket" \
  || { echo "the pack's or the server's packages are missing: run the WRITE_ONLY=1 call first on this warm machine"; exit 1; }
timeout "${RUN_TIMEOUT:-480}" python3 bench/memory_handback.py --models "$MODELS" --card "${CARD:-8}" --native qwen-edit \
  --comfy "$COMFY" --steps "${STEPS:-6}" --out "$RESULTS/handback_080.json" 2>&1 | grep -v -i "warn"
rc=${PIPESTATUS[0]}
log=$(ls -td /tmp/qwenfit-handback-*/ 2>/dev/null | head -1)
[ -n "$log" ] && tail -c 12000000 "$log/base/server.log" >"$RESULTS/server.log" && cp "$log/stages.jsonl" "$RESULTS/" 2>/dev/null
echo "exit $rc (124 = timeout after ${RUN_TIMEOUT:-480} s); results in $RESULTS"
exit $rc
