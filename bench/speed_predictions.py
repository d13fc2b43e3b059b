"""The planner's s/step prediction for each speed-ladder row of committed benchmark results, against what
was measured: ``python bench/speed_predictions.py RESULTS.json ...``

Uses the rates the layered run measured on the same kind of GPU (bf16 783, fp8 1300, int8 847 TFLOP/s,
NVIDIA H200, 2026-11-30: its rows' ``step_basis``) so that runs made before the device-speed measurement
of the 8-bit products existed are predicted the same way.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.card_estimates import fp8_sizes  # noqa: E402
from optim.planning.planner import Gpu, plan_run  # noqa: E402
from optim.planning.speed_ladder import choose_arithmetic  # noqa: E402
from optim.planning.step_time import DeviceSpeed, estimate_step  # noqa: E402
from optim.qwen.job_shape import JobShape  # noqa: E402
from optim.settings import FP8, INT8, OffloadSettings, VaeSettings  # noqa: E402

H200 = DeviceSpeed("NVIDIA H200", 783e12, 51.1 * 2**30, (("fp8", 1.3e15), ("int8", 847e12)))
JOBS = {
    "edit": JobShape("edit", 1024, 1024, references=1, steps=6),
    "layered": JobShape("layered", 640, 640, 0, 4, steps=6),
}


def main(paths: list[str]) -> int:
    sizes = fp8_sizes()
    print("| job | configuration | speed | measured s/step | predicted | error % |")
    print("|---|---|---|---|---|---|")
    for path in paths:
        for row in json.loads(Path(path).read_text())["rows"]:
            if not row.get("speed"):
                continue
            job = JOBS[row["job"].split("-")[0]]
            storage = INT8 if "int8" in row["config"] else FP8
            plan = plan_run(sizes, job, OffloadSettings(mode="none"), VaeSettings(), [Gpu("cuda:0", None, (9, 0))])
            arithmetic = choose_arithmetic(row["speed"], storage, [(9, 0)])
            plan = replace(plan, arithmetic=arithmetic)
            predicted = estimate_step(sizes, job, plan, H200, storage, steady=True).seconds
            measured = row["measurement"]["seconds_per_step_steady"]
            print(
                f"| {row['job']} | {row['config']} | {row['speed']} | {measured:.3f} | {predicted:.3f} "
                f"| {100 * (predicted - measured) / measured:+.1f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
