"""Importing diffusers and transformers ahead of the first load.

Their pipeline and model modules take seconds to import (tens of seconds where no bytecode is cached),
and the first load after starting ComfyUI would pay for it. The node pack starts these imports on a
background thread when ComfyUI registers it, so they are done by the time a prompt is queued; a load
that starts earlier simply waits for the modules it needs (Python's import locks see to it).
"""

from __future__ import annotations

import threading
import time

_started: threading.Thread | None = None


def import_libraries() -> float:
    """Import everything a load and a first run import; returns the seconds it took."""
    start = time.perf_counter()
    import torch._dynamo  # noqa: F401  (diffusers' attention dispatch and compile checks import it)
    from diffusers import (  # noqa: F401
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageEditPlusPipeline,
        QwenImageLayeredPipeline,
        QwenImageTransformer2DModel,
    )
    from diffusers.models import attention_dispatch  # noqa: F401
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer, Qwen2VLProcessor  # noqa: F401

    return time.perf_counter() - start


def _import_quietly() -> None:
    try:
        import_libraries()
    except Exception:  # a broken install: the load itself reports it, with the fix
        pass


def import_libraries_in_background() -> None:
    """Start :func:`import_libraries` on a daemon thread (once per process)."""
    global _started
    if _started is None:
        _started = threading.Thread(target=_import_quietly, name="qwenfit-library-imports", daemon=True)
        _started.start()
