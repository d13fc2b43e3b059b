# ComfyUI 0.3.75's own Qwen-Image-Edit path on the lent GPU, on an emulated card: write the real-size
# files once (to $MODELS, default /dev/shm/qwenfit-native), then one fresh process per row. A call has at most
# 600 s on the lent machine: write first (ROWS=""), then two or so rows per call while the machine stays warm.
# Usage: ROWS="scaled:8,scaled:none,e4m3fn:8,e4m3fn:none" bash bench/gpu_native.sh
#   row = LAYOUT:CARD, LAYOUT scaled|e4m3fn (the transformer file), CARD 8|24|none (none = the whole GPU);
#   qf:LAYOUT:CARD runs the pack on the same files and card instead (speed rung SPEED, default fast)
#   ROW_TIMEOUT (s, default 420), STEPS (6), NATIVE_FLAGS (e.g. --disable-cuda-malloc), ROWS="" writes only;
#   CPU check: MODELS=/tmp/x WRITE_FLAGS="--arch qwenfit-tiny --device cpu" ROWS=scaled:none
#   NATIVE_FLAGS="--arch qwenfit-tiny --device cpu" (tiny files, ComfyUI's sizes patched in process)
#   EXTRA_JSON: more result files for the table (QwenFit rows on the same files: any JSON with the
#   keys of bench/comfy_native.py ROW_KEYS), REFERENCE: a latent .safetensors for the rel-L2 column
# Results: $OUT/native/<layout>_<card>.json + .safetensors (final latent), $OUT/native/native.md
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:.
TOK=.cache/comfyui/comfy/text_encoders/qwen25_tokenizer
# The four files take ~51 GB (2 x 20.4 transformer layouts, 9.8 text encoder, 0.25 VAE): /dev/shm (RAM) when it
# has room, else the disk.
if [ -z "$MODELS" ]; then
  MODELS=/dev/shm/qwenfit-native
  if [ ! -d $MODELS ] && [ "$(df --output=avail -B1G /dev/shm | tail -1)" -lt 56 ]; then MODELS=/tmp/qwenfit-native; fi
fi
RESULTS=$OUT/native
mkdir -p "$RESULTS"
df -h "$(dirname "$MODELS")" | tail -1
if [ ! -f "$MODELS/input/qwenfit_reference_1024.png" ]; then
  python3 bench/comfy_native.py write --tokenizer $TOK --models "$MODELS" $WRITE_FLAGS 2>&1 | grep -v -i warn | tail -12
fi
ls -la "$MODELS"/*/ | grep -v '^total'
free -g | head -2

# One row in its own process; a row that dies without writing its JSON (timeout, crash) gets one that says so.
native_row() {
  local layout=$1 card=$2 out="$RESULTS/$1_$2.json"
  rm -f "$out"
  timeout "${ROW_TIMEOUT:-420}" python3 bench/comfy_native.py run-native --comfy .cache/comfyui --models "$MODELS" \
    --transformer "$layout" --card "$card" --steps "${STEPS:-6}" $NATIVE_FLAGS --out "$out" 2>&1 \
    | grep -v -i warn | grep -v "missing: \[" | tail -6
  local rc=${PIPESTATUS[0]}
  if [ ! -f "$out" ]; then
    printf '{"runner": "ComfyUI native", "layout": "%s", "card": "%s", "error": "exit %s (124 = timeout after %ss), no result"}\n' \
      "$layout" "$card" "$rc" "${ROW_TIMEOUT:-420}" >"$out"
  fi
  results+=("$out")
}

# The pack on the same files and card (speed rung SPEED, default fast).
qwenfit_row() {
  local layout=$1 card=$2 out="$RESULTS/qwenfit_$1_$2.json"
  timeout "${ROW_TIMEOUT:-420}" python3 bench/comfy_native.py run-qwenfit --models "$MODELS" --transformer "$layout" \
    --card "$card" --steps "${STEPS:-6}" --speed "${SPEED:-fast}" $QWENFIT_FLAGS --out "$out" 2>&1 | grep -v -i warn | tail -3
  [ -f "$out" ] || printf '{"runner": "QwenFit", "layout": "%s", "card": "%s", "error": "no result"}\n' "$layout" "$card" >"$out"
  results+=("$out")
}

results=()
IFS=, read -ra rows <<<"${ROWS-scaled:8,scaled:none,e4m3fn:8,e4m3fn:none}"
for row in "${rows[@]}"; do  # LAYOUT:CARD runs ComfyUI native; qf:LAYOUT:CARD runs QwenFit
  case $row in
    qf:*) row=${row#qf:}; qwenfit_row "${row%%:*}" "${row##*:}" ;;
    *) native_row "${row%%:*}" "${row##*:}" ;;
  esac
done
# Hook for other rows on the same files (e.g. QwenFit's): EXTRA_JSON="a.json b.json"
for extra in $EXTRA_JSON; do results+=("$extra"); done
if [ ${#results[@]} -gt 0 ]; then
  python3 bench/comfy_native.py table ${REFERENCE:+--reference "$REFERENCE"} "${results[@]}" | tee "$RESULTS/native.md"
fi
