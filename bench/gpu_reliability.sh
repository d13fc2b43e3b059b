# Issue 8 on the lent GPU: the tiny model first (stops here if it fails), then the real-size OOM
# injection and 20-run soak. Usage: bash bench/gpu_reliability.sh   (writes $OUT/tiny and $OUT/real)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:.
TOK=.cache/comfyui/comfy/text_encoders/qwen25_tokenizer
timeout 120 python3 bench/reliability.py --tokenizer $TOK --out $OUT/tiny --arch qwenfit-tiny --runs 3 --size 256 --cut-gib 0.05 2>&1 | grep -v -i warn | tail -8 || exit 1
timeout ${REAL_TIMEOUT:-420} python3 bench/reliability.py --tokenizer $TOK --out $OUT/real --runs ${RUNS:-20} 2>&1 | grep -v -i warn | tail -40
