# Multi-GPU rows (issue 7) on nvidia-h200-x2: a tiny-model smoke run of the multi-GPU configurations
# first (it stops here if one fails), then the real-size Edit job.
# Usage: CONFIGS=key,key,... bash bench/gpu_multi.sh   (writes $OUT/tiny and $OUT/real)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:. NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
TOK=.cache/comfyui/comfy/text_encoders/qwen25_tokenizer
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
nvidia-smi topo -m 2>/dev/null | head -4
CONFIGS=${CONFIGS:-qf-fastest,qf-fastest-interleaved,qf-2gpu-cfg-parallel,qf-2gpu-split-24gib,qf-2gpu-8gb,qf-8gb}
timeout 120 python3 bench/run_bench.py --tokenizer $TOK --out $OUT/tiny --arch qwenfit-tiny --jobs edit --steps 3 \
  --configs qf-fastest,qf-2gpu-cfg-parallel,qf-2gpu-split-24gib,qf-2gpu-8gb 2>&1 | grep -v -i warn | tail -12
if grep -q '"status": "error"\|"status": "oom"' $OUT/tiny/bench.json; then
  python3 -c "import json; [print(r['config'], r.get('error'), r.get('trace')) for r in json.load(open('$OUT/tiny/bench.json'))['rows'] if r['status'] != 'ok']"
  exit 1
fi
timeout ${REAL_TIMEOUT:-430} python3 bench/run_bench.py --tokenizer $TOK --out $OUT/real --jobs ${JOBS:-edit} --steps 6 \
  --configs ${CONFIGS} 2>&1 | grep -v -i warn | tail -60
cat $OUT/real/bench.md
