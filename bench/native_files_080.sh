# Sourced by the ComfyUI 0.8.0 GPU scripts after bench/setup_080.sh: sets MODELS and writes the files once.
# The real-size split files (bench/comfy_native.py write, scaled fp8 layout only: ~30.5 GB). In /dev/shm only on a
# machine with 160 GiB of RAM or more: files there cannot be evicted, and this run holds QwenFit's pinned host copy
# (~32 GiB) and ComfyUI's own loaded and pinned weights (~30 GiB) at the same time; elsewhere the disk (page cache).
if [ -z "$MODELS" ]; then
  MODELS=/tmp/qwenfit-native
  ram=$(awk '/MemTotal/ {print int($2 / 1048576)}' /proc/meminfo)
  if [ -d /dev/shm/qwenfit-native ] || { [ "$ram" -ge 160 ] && [ "$(df --output=avail -B1G /dev/shm | tail -1)" -ge 34 ]; }; then
    MODELS=/dev/shm/qwenfit-native
  fi
fi
echo "models in $MODELS (RAM $(awk '/MemTotal/ {print int($2 / 1048576)}' /proc/meminfo) GiB)"
df -h "$(dirname "$MODELS")" | tail -1
if [ ! -f "$MODELS/input/qwenfit_reference_1024.png" ] || [ ! -f "$MODELS/diffusion_models/qwen_image_edit_2509_fp8_e4m3fn.safetensors" ]; then
  start=$(date +%s)
  python3 bench/comfy_native.py write --layout scaled --tokenizer "$COMFY/comfy/text_encoders/qwen25_tokenizer" \
    --models "$MODELS" 2>&1 | grep -v -i warn | tail -12 || { echo "write failed"; return 1; }
  echo "files written in $(( $(date +%s) - start )) s"
fi
ls -la "$MODELS"/*/ | grep -v '^total'
free -g | head -2
