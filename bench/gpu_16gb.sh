# The 8 GB preset on a 16 GB-RAM machine, on the lent GPU (issue 18): the fp8 split files and GGUF files on
# the disk, one fresh process per row; host budget "16 GB" plans for a 16 GB machine (10 GiB), "unlimited"
# keeps every block in memory (the comparison). A call has at most 600 s: WRITE=1 first, then rows.
# Usage: WRITE=1 GGUF_TYPES="Q4_K Q8_0" ROWS="" bash bench/gpu_16gb.sh
#        ROWS="scaled:unlimited,scaled:16_GB,Q4_K:16_GB" bash bench/gpu_16gb.sh
#   row = FILE:HOST, FILE scaled (fp8 split file) or a GGUF type written by WRITE, HOST a host budget with _ for
#   spaces; FILE:HOST:eager runs the GGUF expansion without torch.compile; FILE:HOST:cold drops the transformer
#   file's pages from the page cache every 0.2 s (a machine whose cache cannot hold it). READ_RATE=1: file reads.
# Results: $OUT/ram16/<file>_<host>[_eager].json, $OUT/ram16/read_rate.json
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:.
TOK=.cache/comfyui/comfy/text_encoders/qwen25_tokenizer
MODELS=${MODELS:-/tmp/qwenfit-16gb}  # the disk, so its pages can be dropped from the page cache
RESULTS=$OUT/ram16
mkdir -p "$RESULTS"
df -h /tmp | tail -1
if [ -n "$WRITE" ]; then
  [ -f "$MODELS/vae/qwen_image_vae.safetensors" ] || \
    python3 bench/comfy_native.py write --tokenizer $TOK --models "$MODELS" --layout scaled 2>&1 | grep -v -i warn | tail -4
  for t in $GGUF_TYPES; do
    [ -f "$MODELS/diffusion_models/qwen_image_edit_2509_$t.gguf" ] || python3 bench/gguf_real.py --models "$MODELS" --type $t
  done
fi
ls -la "$MODELS"/*/ | grep -v '^total'
free -g | head -2
if [ -n "$READ_RATE" ]; then
  python3 bench/file_read_rate.py --file "$MODELS/diffusion_models/qwen_image_edit_2509_fp8_e4m3fn.safetensors" \
    --gib 8 --out "$RESULTS/read_rate.json" | tail -8
  ls /proc/sys/vm/drop_caches && (sync; echo 3 > /proc/sys/vm/drop_caches) 2>&1 | tail -1
fi
IFS=, read -ra rows <<<"${ROWS:-}"
for row in "${rows[@]}"; do
  IFS=: read -r file host mode <<<"$row"
  transformer=scaled
  [ "$file" != scaled ] && transformer=diffusion_models/qwen_image_edit_2509_$file.gguf
  flags=""
  [ "$mode" = eager ] && flags=--gguf-eager
  [ "$mode" = cold ] && flags="--drop-cache-every 0.2"
  out="$RESULTS/${file}_${host}${mode:+_$mode}.json"
  timeout "${ROW_TIMEOUT:-300}" python3 bench/comfy_native.py run-qwenfit --models "$MODELS" --transformer "$transformer" \
    --card 8 --steps "${STEPS:-6}" --speed exact --host-budget "${host//_/ }" $flags --out "$out" 2>&1 \
    | grep -v -i warn | tail -3
  python3 - "$out" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
g = 2**30
print(r.get("runner"), "| s/step", round(r.get("seconds_per_step_steady", 0), 3), "| load", round(r.get("load_seconds", 0), 1),
      "| first image", round(r.get("first_image_seconds", 0), 1), "| RSS peak GiB", round(r.get("host_rss_peak_bytes", 0) / g, 2),
      "| MemAvailable drop GiB", round(r.get("available_drop_bytes", 0) / g, 2), "| VRAM peak GiB", round(r.get("peak_reserved_bytes", 0) / g, 2),
      "| host plan", r.get("host_plan"), "|", r.get("error", ""))
PY
done
