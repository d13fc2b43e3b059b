# Run the benchmark on the lent GPU: install the carried wheels, then one job with the chosen configurations.
# Usage: JOBS=edit|layered CONFIGS=key,key,... bash bench/gpu_run.sh   (writes $OUT/real/bench.{json,md})
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:.
TOK=.cache/comfyui/comfy/text_encoders/qwen25_tokenizer
timeout 560 python3 bench/run_bench.py --tokenizer $TOK --out $OUT/real --jobs ${JOBS:-edit} --steps 6 --configs ${CONFIGS} 2>&1 | grep -v -i warn | tail -80
cat $OUT/real/bench.md
