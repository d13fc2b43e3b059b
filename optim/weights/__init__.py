"""Reading weight files: safetensors headers and tensors, key names, fp8 scales."""
