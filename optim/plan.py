"""The load-time plan: every component's size, dtype and where it waits between runs.

A plan is data, printed in the log and in the nodes' reports. Per-run placement and the predicted
peak per phase come from the planner (optim/planner.py) and are printed after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

GIB = 1024**3


@dataclass(frozen=True)
class ComponentPlacement:
    """One pipeline component: its size, dtype and where it sits while idle and while running."""

    name: str
    parameters: int
    dtype: str
    bytes: int
    home: str  # where it waits between uses ("cuda:0", "cpu", "pinned cpu")
    runs_on: str  # where it computes
    residency: str  # "resident", "offloaded (whole)", "streamed (blocks)"


@dataclass(frozen=True)
class Plan:
    """Placement of every component plus VAE handling and the predicted peak."""

    device: str
    components: tuple[ComponentPlacement, ...]
    vae_tiling: bool
    vae_slicing: bool
    notes: tuple[str, ...] = field(default_factory=tuple)

    def describe(self) -> str:
        """A short multi-line text for logs and node reports."""
        lines = [f"QwenFit plan on {self.device}:"]
        for c in self.components:
            lines.append(
                f"  {c.name:<13} {c.parameters / 1e6:9.1f} M params  {c.dtype:<8} "
                f"{c.bytes / GIB:7.2f} GiB  home {c.home:<10} {c.residency}"
            )
        lines.append(
            f"  VAE tiling {'on' if self.vae_tiling else 'off'}, slicing {'on' if self.vae_slicing else 'off'}"
        )
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)
