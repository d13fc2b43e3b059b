"""Start ComfyUI's own server on an emulated card (the way ``bench/comfy_native.py`` emulates one), so that a
real server run of a workflow sees the memory of an 8 or 24 GB card on the lent GPU.

    python bench/capped_comfy.py --card 8 COMFYUI/main.py [main.py's arguments...]

Before torch is imported: ComfyUI's argument parsing on (main.py's arguments), its ``cuda_malloc`` module
(the allocator main.py would pick), the PyAV stand-in where PyAV is absent; then ``emulate_card``; then
main.py runs as ``__main__``, in this process. ComfyUI warns that torch was imported before it: expected.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    if len(sys.argv) < 4 or sys.argv[1] != "--card":
        raise SystemExit(__doc__)
    card, main_py, rest = sys.argv[2], Path(sys.argv[3]).resolve(), sys.argv[4:]
    sys.argv = [str(main_py), *rest]
    sys.path.insert(0, str(REPO))
    from bench.comfy_native import CARDS, _stub_av  # imports no torch

    if card not in CARDS:
        raise SystemExit(f"--card {card}: one of {', '.join(CARDS)}")
    sys.path.remove(str(REPO))  # ComfyUI's own ``nodes`` and ``utils`` must win over this repo's folders
    sys.path.insert(0, str(main_py.parent))
    import comfy.options

    comfy.options.enable_args_parsing()
    import cuda_malloc  # noqa: F401  (sets PYTORCH_CUDA_ALLOC_CONF as main.py would, before torch)

    _stub_av()
    from bench.comfy_native import emulate_card

    print(f"capped_comfy: card {card}: {emulate_card(card)}", flush=True)
    runpy.run_path(str(main_py), run_name="__main__")


if __name__ == "__main__":
    main()
