"""The plan: where every weight lives, in what dtype, and what peak memory it predicts.

A plan is data. It is printed in the log, returned in the nodes' reports and compared
with what was measured.
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

    @property
    def resident_bytes(self) -> int:
        """Bytes of weights that stay on the compute device for the whole run."""
        return sum(c.bytes for c in self.components if c.home == self.device and self.device != "cpu")

    @property
    def predicted_weight_peak_bytes(self) -> int:
        """Weights on the device at the worst moment: resident ones plus the largest visitor.

        Activations are not modelled yet (the memory planner of issue 4 adds them).
        """
        if self.device == "cpu":
            return 0
        visitors = [c.bytes for c in self.components if c.home != self.device]
        return self.resident_bytes + (max(visitors) if visitors else 0)

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
        if self.device != "cpu":
            lines.append(f"  predicted weight peak {self.predicted_weight_peak_bytes / GIB:.2f} GiB")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)
