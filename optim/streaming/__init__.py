"""The pack's own execution engine: block streaming, modulation precompute, batched CFG."""
