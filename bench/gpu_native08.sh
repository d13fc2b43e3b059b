# Issue 31 on the lent GPU: ComfyUI 0.8.0's own nodes against QwenFit's default settings on the same real-size
# Edit-2509 scaled fp8 files, per emulated card, one fresh process per row, every row in one call; plus the rows
# that give each 8-bit path's deviation: ComfyUI with its fp8 compute off (its own bf16 computation of the file)
# and QwenFit exact and fast (compiled) on the same seed.
# One call writes the files (~30.5 GB, once per warm machine) and runs the rows; it needs, beside the tree (3 MiB):
#   carry [".gl", ".whl/pack", ".whl/kitchen", ".whl/server/torchsde-0.2.6-py3-none-any.whl",
#          ".whl/server/trampoline-0.1.2-py3-none-any.whl"]   (59 MiB; the in-process rows need no server stack)
# Settings: ROWS (default below; row = native|native-bf16|qf-SPEED : CARD 8|24|none), STEPS (6), IMAGES (QwenFit
# rows' images in a row, 2), ROW_TIMEOUT (s, 150),
# DEADLINE (s since the start, 560: no row starts later, so the tables always come back within a 600 s call),
# FLAGS (both runners; CPU dry run: MODELS=<tiny files> FLAGS="--arch qwenfit-tiny --device cpu" ROWS=native:none).
# Every QwenFit row starts with empty Triton and inductor caches (a fresh machine's first image).
# Results: $OUT/native08/<row>.json (+ .safetensors: the first image, and ComfyUI's final latent), native08.md.
set -o pipefail
export PYTHONUNBUFFERED=1
RESULTS=$OUT/native08
ROWS_DIR=/tmp/native08-rows  # every row's JSON and images; what comes back is the tables and one JSON of all rows
mkdir -p "$RESULTS" "$ROWS_DIR"
. bench/setup_080.sh || exit 1
. bench/native_files_080.sh || exit 1
if [[ "$FLAGS" != *"--device cpu"* ]]; then
  python3 -c "import comfy_kitchen" 2>/dev/null || { echo "comfy_kitchen missing: carry .whl/kitchen"; exit 1; }
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
fi
git log -1 --format='commit %h %cd' 2>/dev/null || true

row() {  # KIND CARD: one generation in a fresh process, its JSON in $RESULTS
  local kind=$1 card=$2 out="$ROWS_DIR/$1_$2.json" rc
  rm -f "$out"
  case $kind in
    native|native-bf16)
      timeout "${ROW_TIMEOUT:-150}" python3 bench/comfy_native.py run-native --comfy "$COMFY" --models "$MODELS" \
        --transformer scaled --card "$card" --steps "${STEPS:-6}" $([ "$kind" = native-bf16 ] && echo --no-fp8-compute) \
        $FLAGS --out "$out" 2>&1 | grep -v -i warn | grep -v "missing: \[" | tail -4 ;;
    qf-*)
      TRITON_CACHE_DIR=$(mktemp -d) TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) timeout "${ROW_TIMEOUT:-150}" \
        python3 bench/comfy_native.py run-qwenfit --comfy "$COMFY" --models "$MODELS" --transformer scaled --card "$card" \
        --steps "${STEPS:-6}" --images "${IMAGES:-2}" --speed "${kind#qf-}" $FLAGS --out "$out" 2>&1 | grep -v -i warn | tail -3 ;;
  esac
  rc=$?
  [ -f "$out" ] || printf '{"runner": "%s", "card": "%s", "error": "exit %s, no result"}\n' "$kind" "$card" "$rc" >"$out"
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[1].split('/')[-1], 's/step', r.get('seconds_per_step_steady'), 'load+1st', r.get('first_image_seconds'), [(round(x['s_per_step'], 3), x['compile']) for x in r.get('runs', [])], r.get('error','')[:300])" "$out"
}

IFS=, read -ra rows <<<"${ROWS-native:none,qf-auto:none,native-bf16:none,qf-exact:none,qf-fast:none,native:8,qf-auto:8,native:24,qf-auto:24}"
for r in "${rows[@]}"; do
  if [ "$SECONDS" -ge "${DEADLINE:-560}" ]; then echo "deadline: $r not run"; continue; fi
  row "${r%%:*}" "${r##*:}"
done
python3 bench/native08_table.py "$ROWS_DIR" | tee "$RESULTS/native08.md"
python3 -c "import json,sys,pathlib; print(json.dumps({p.stem: json.loads(p.read_text()) for p in sorted(pathlib.Path(sys.argv[1]).glob('*.json'))}, indent=1))" "$ROWS_DIR" >"$RESULTS/native08_rows.json"
