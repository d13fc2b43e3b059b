"""QwenFit: Qwen-Image-Edit and Qwen-Image-Layered on the GPUs people own (ComfyUI node pack).

ComfyUI imports this file. It registers the nodes through the V3 entrypoint only: a module
that also defined NODE_CLASS_MAPPINGS would have its entrypoint silently ignored.
"""

import importlib.util

WEB_DIRECTORY = "./web"

# Register only inside ComfyUI, so the folder stays importable (and testable) anywhere.
if importlib.util.find_spec("comfy_api") is not None:
    from .nodes import comfy_entrypoint  # noqa: F401
