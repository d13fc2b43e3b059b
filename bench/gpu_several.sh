# Issue 20 rows on nvidia-h200-x2: sequence parallelism for a CFG-off (Lightning-style) Edit, CFG-parallel with
# streaming replicas on two emulated 8 GB cards, and a 24 GB card beside an 8 GB one. A tiny-model smoke run of
# the multi-GPU paths first (it stops here if one fails), then the real-size rows, each group in one process.
# Usage: bash bench/gpu_several.sh   (PART=lightning|cards|all; writes $OUT/tiny, $OUT/lightning, $OUT/cards)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:. NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
TOK=.cache/comfyui/comfy/text_encoders/qwen25_tokenizer
PART=${PART:-all}
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
nvidia-smi topo -m 2>/dev/null | head -4
smoke() {  # $1 job, $2 configs
  timeout 150 python3 bench/run_bench.py --tokenizer $TOK --out $OUT/tiny-$1 --arch qwenfit-tiny --jobs $1 --steps 3 \
    --configs $2 2>&1 | grep -v -i warn | tail -8
  if grep -q '"status": "error"\|"status": "oom"' $OUT/tiny-$1/bench.json; then
    python3 -c "import json; [print(r['config'], r.get('error'), r.get('trace')) for r in json.load(open('$OUT/tiny-$1/bench.json'))['rows'] if r['status'] != 'ok']"
    exit 1
  fi
}
smoke edit-lightning qf-fastest,qf-2gpu-sequence
smoke edit qf-2gpu-stream-all,qf-2gpu-cfg-parallel
if [ "$PART" != cards ]; then
  timeout ${LIGHTNING_TIMEOUT:-240} python3 bench/run_bench.py --tokenizer $TOK --out $OUT/lightning --jobs edit-lightning \
    --steps 8 --no-reference --configs ${LIGHTNING_CONFIGS:-qf-fastest,qf-2gpu-sequence,qf-fastest-compiled,qf-2gpu-sequence-compiled} 2>&1 | grep -v -i warn | tail -40
  cat $OUT/lightning/bench.md
fi
if [ "$PART" != lightning ]; then
  timeout ${CARDS_TIMEOUT:-400} python3 bench/run_bench.py --tokenizer $TOK --out $OUT/cards --jobs edit --steps 6 \
    --no-reference --configs qf-8gb-fp8,qf-2gpu-8gb-fp8,qf-24gb-fp8,qf-2gpu-24-8-fp8 2>&1 | grep -v -i warn | tail -60
  cat $OUT/cards/bench.md
fi
