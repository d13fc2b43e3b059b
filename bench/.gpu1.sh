set -x
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:.
TOK=.cache/comfyui/comfy/text_encoders/qwen25_tokenizer
nvidia-smi --query-gpu=name,memory.total --format=csv
timeout 150 python3 bench/run_bench.py --arch qwenfit-tiny --tokenizer $TOK --out $OUT/tiny --jobs edit --steps 3 --configs resident,qf-stream-all,qf-8gb-fp8 2>&1 | grep -v -i warn | tail -20
cat $OUT/tiny/bench.md | grep "|"
timeout 400 python3 bench/run_bench.py --tokenizer $TOK --out $OUT/real --jobs edit --steps 6 --configs resident,group-offload,qf-fastest,qf-fastest-cudnn,qf-24gb,qf-8gb,qf-8gb-fp8 2>&1 | grep -v -i warn | tail -60
cat $OUT/real/bench.md
