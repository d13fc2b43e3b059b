"""The size of a job as the planner sees it: tokens per sample, CFG, steps."""

from __future__ import annotations

from dataclasses import dataclass

# Edit-Plus VAE-encodes every reference at about 1 megapixel whatever the output size.
_REFERENCE_TOKENS = 4096
# Prompt template plus vision tokens per reference (384x384 -> ~196); generous, text is cheap.
_TEXT_TOKENS_BASE = 256
_TEXT_TOKENS_PER_REFERENCE = 200


@dataclass(frozen=True)
class JobShape:
    """What one generation asks of the transformer."""

    kind: str  # "edit" or "layered"
    width: int
    height: int
    references: int = 1
    layers: int = 4
    cfg: bool = True
    steps: int = 40
    caption: bool = False  # Layered without a prompt: the 7B model writes one, token by token

    @property
    def image_tokens(self) -> int:
        """Image-stream tokens of one sample (latent / 8, then 2x2 patches = 1 token per 16x16 pixels)."""
        frame = (self.width // 16) * (self.height // 16)
        if self.kind == "layered":
            return frame * (self.layers + 2)  # the layers, the composite and the condition image
        return frame + self.references * _REFERENCE_TOKENS

    @property
    def text_tokens(self) -> int:
        refs = self.references if self.kind == "edit" else 0
        return _TEXT_TOKENS_BASE + _TEXT_TOKENS_PER_REFERENCE * refs

    @property
    def samples(self) -> int:
        """Samples per forward: 2 with CFG (prompt and negative prompt in one batched pass)."""
        return 2 if self.cfg else 1

    def describe(self) -> str:
        what = (
            f"Layered {self.width}px, {self.layers} layers"
            if self.kind == "layered"
            else f"Edit {self.width}x{self.height}, {self.references} reference(s)"
        )
        caption = ", auto-caption" if self.caption else ""
        return f"{what}, CFG {'on' if self.cfg else 'off'}, {self.steps} steps{caption}"


def default_job(kind: str) -> JobShape:
    """The job a plan is previewed for before any run: the issue's reference workloads."""
    if kind == "layered":
        return JobShape("layered", 640, 640, references=0, layers=4)
    return JobShape("edit", 1024, 1024, references=1)
