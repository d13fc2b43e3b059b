# Issue 31 on the lent GPU: ComfyUI 0.8.0's own nodes against QwenFit's default settings on the same real-size
# Edit-2509 scaled fp8 files, per emulated card, one fresh process per row, every row in one call; plus the rows
# that give each 8-bit path's deviation: ComfyUI with its fp8 compute off (its own bf16 computation of the file)
# and QwenFit exact and fast (compiled) on the same seed.
# Two calls on one warm machine (the files take minutes to write; the carried wheels pass 64 MiB together):
#   1. WRITE_ONLY=1 bash bench/gpu_handback_080.sh   carry [".gl", ".whl/pack", ".whl/server"]
#   2. bash bench/gpu_native08.sh                    carry [".whl/kitchen"]
# Settings: ROWS (default below; row = native|native-bf16|qf-SPEED : CARD 8|24|none), STEPS (6), ROW_TIMEOUT (s, 150).
# Every QwenFit row starts with empty Triton and inductor caches (a fresh machine's first image).
# Results: $OUT/native08/<row>.json (+ .safetensors: the first image, and ComfyUI's final latent), native08.md.
set -o pipefail
export PYTHONUNBUFFERED=1
RESULTS=$OUT/native08
mkdir -p "$RESULTS"
. bench/setup_080.sh || exit 1
MODELS=${MODELS:-/tmp/qwenfit-native}
[ -d /dev/shm/qwenfit-native ] && MODELS=/dev/shm/qwenfit-native
[ -f "$MODELS/diffusion_models/qwen_image_edit_2509_fp8_e4m3fn.safetensors" ] \
  || { echo "no files in $MODELS: run call 1 (WRITE_ONLY=1 bash bench/gpu_handback_080.sh) on this warm machine"; exit 1; }
python3 -c "import comfy_kitchen" 2>/dev/null || { echo "comfy_kitchen missing: carry .whl/kitchen"; exit 1; }
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
git log -1 --format='commit %h %cd' 2>/dev/null || true

row() {  # KIND CARD: one generation in a fresh process, its JSON in $RESULTS
  local kind=$1 card=$2 out="$RESULTS/$1_$2.json" rc
  rm -f "$out"
  case $kind in
    native|native-bf16)
      timeout "${ROW_TIMEOUT:-150}" python3 bench/comfy_native.py run-native --comfy "$COMFY" --models "$MODELS" \
        --transformer scaled --card "$card" --steps "${STEPS:-6}" $([ "$kind" = native-bf16 ] && echo --no-fp8-compute) \
        --out "$out" 2>&1 | grep -v -i warn | grep -v "missing: \[" | tail -4 ;;
    qf-*)
      TRITON_CACHE_DIR=$(mktemp -d) TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) timeout "${ROW_TIMEOUT:-150}" \
        python3 bench/comfy_native.py run-qwenfit --models "$MODELS" --transformer scaled --card "$card" \
        --steps "${STEPS:-6}" --speed "${kind#qf-}" --out "$out" 2>&1 | grep -v -i warn | tail -3 ;;
  esac
  rc=$?
  [ -f "$out" ] || printf '{"runner": "%s", "card": "%s", "error": "exit %s, no result"}\n' "$kind" "$card" "$rc" >"$out"
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[1].split('/')[-1], 's/step', r.get('seconds_per_step_steady'), 'load+1st', r.get('first_image_seconds'), r.get('error','')[:300])" "$out"
}

IFS=, read -ra rows <<<"${ROWS-native:none,qf-auto:none,native-bf16:none,qf-exact:none,qf-fast:none,native:8,qf-auto:8,native:24,qf-auto:24}"
for r in "${rows[@]}"; do row "${r%%:*}" "${r##*:}"; done
python3 bench/native08_table.py "$RESULTS" | tee "$RESULTS/native08.md"
