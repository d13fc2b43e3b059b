# Host RAM of the 8 GB preset from ComfyUI's fp8 files, on the lent GPU: write the files once, then
# one fresh process per host budget. Usage: BUDGETS="24 GB,unlimited" bash bench/gpu_host_ram.sh
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:.
TOK=.cache/comfyui/comfy/text_encoders/qwen25_tokenizer
MODELS=${MODELS:-/tmp/qwenfit-fp8-files}
df -h /tmp | tail -1
[ -f "$MODELS/vae/qwen_image_vae.safetensors" ] || python3 bench/host_ram.py write --tokenizer $TOK --models $MODELS 2>&1 | grep -v -i warn | tail -8
free -g | head -2
IFS=, read -ra budgets <<<"${BUDGETS:-24 GB,unlimited}"
results=()
for b in "${budgets[@]}"; do
  name=$(echo "$b" | tr ' ' '_')
  python3 bench/host_ram.py run --tokenizer $TOK --models $MODELS --host-budget "$b" --out $OUT/host/$name.json 2>&1 | grep -v -i warn | tail -3
  results+=("$OUT/host/$name.json")
done
python3 bench/host_ram.py table "${results[@]}" | tee $OUT/host/host_ram.md
