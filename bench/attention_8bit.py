"""An experiment, not used by the pack: attention in 8 bits, int8 Q.K^T and fp8 P.V with an fp32 softmax, as
our own Triton kernel, timed against SDPA's bf16 kernel on this GPU.

    python bench/attention_8bit.py [--out FILE.json]

The recipe is SageAttention 2's (Zhang et al., 2025): K is smoothed by subtracting its mean over the tokens
(every logit of a query moves by the same amount, which softmax ignores), Q and K are quantized to int8 with
one scale per token, the probabilities of each tile are scaled to fp8 e4m3's range and multiplied with V in
fp8 (one scale per channel); the max and the running sums stay in fp32 (FlashAttention's online softmax).
On the H200 (2026-11-30, Triton 3.6) its best block shape took 1.43 ms per call against SDPA's 1.27 ms, and
deviated 3.8e-2 from float64 against SDPA's 2.3e-3, so the fast rungs do not offer it
(bench/results/kernels_h200_2026-11-30/).
"""

from __future__ import annotations

import torch

P_SCALE = 448.0  # fp8 e4m3's largest value: probabilities in [0, 1] use its whole range
BLOCK_M, BLOCK_N, WARPS, STAGES = 64, 128, 4, 3  # the fastest shape on the H200 (SHAPES below)
LOG2E = 1.4426950408889634

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton (CPU wheels on some platforms, many Windows installs): no kernel
    triton = None


def quantize_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> tuple[torch.Tensor, ...]:
    """(q8, q_scale, k8, k_scale, v8 transposed, v_scale) from (batch, tokens, heads, dim) inputs, heads
    first: q8/k8 (batch*heads, tokens, dim) int8, scales (batch*heads, tokens) fp32 (q's carries the softmax
    scale in base 2), v8 (batch*heads, dim, tokens) fp8, v_scale (batch*heads, dim)."""
    b, n, h, d = q.shape
    qh = q.permute(0, 2, 1, 3).float()
    kh = k.permute(0, 2, 1, 3).float()
    kh = kh - kh.mean(dim=2, keepdim=True)  # smoothing: softmax ignores a shift shared by all keys
    q_amax = qh.abs().amax(dim=-1).clamp(min=1e-8)
    k_amax = kh.abs().amax(dim=-1).clamp(min=1e-8)
    q8 = torch.round(qh * (127.0 / q_amax.unsqueeze(-1))).to(torch.int8)
    k8 = torch.round(kh * (127.0 / k_amax.unsqueeze(-1))).to(torch.int8)
    q_scale = q_amax / 127.0 * (scale * LOG2E)
    k_scale = k_amax / 127.0
    vh = v.permute(0, 2, 3, 1).float()  # (b, h, d, n): the reduction axis of P.V innermost
    v_amax = vh.abs().amax(dim=-1).clamp(min=1e-8)
    v8 = (vh * (448.0 / v_amax.unsqueeze(-1))).to(torch.float8_e4m3fn)
    v_scale = v_amax / 448.0
    return (
        q8.reshape(b * h, n, d).contiguous(),
        q_scale.reshape(b * h, n).contiguous(),
        k8.reshape(b * h, n, d).contiguous(),
        k_scale.reshape(b * h, n).contiguous(),
        v8.reshape(b * h, d, n).contiguous(),
        v_scale.reshape(b * h, d).contiguous(),
    )


if triton is not None:

    @triton.jit
    def _attention_kernel(
        Q, QS, K, KS, V, VS, Out, tokens, heads,
        D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, PSCALE: tl.constexpr,
    ):  # fmt: skip
        start_m = tl.program_id(0)
        bh = tl.program_id(1)
        rows = start_m * BM + tl.arange(0, BM)
        dims = tl.arange(0, D)
        row_ok = rows < tokens
        base = bh.to(tl.int64) * tokens * D
        q = tl.load(Q + base + rows[:, None] * D + dims[None, :], mask=row_ok[:, None], other=0)
        qs = tl.load(QS + bh.to(tl.int64) * tokens + rows, mask=row_ok, other=0.0)
        m_i = tl.full([BM], float("-inf"), tl.float32)
        l_i = tl.zeros([BM], tl.float32)
        acc = tl.zeros([BM, D], tl.float32)
        for start_n in range(0, tokens, BN):
            cols = start_n + tl.arange(0, BN)
            col_ok = cols < tokens
            kt = tl.load(K + base + cols[None, :] * D + dims[:, None], mask=col_ok[None, :], other=0)
            ks = tl.load(KS + bh.to(tl.int64) * tokens + cols, mask=col_ok, other=0.0)
            s = tl.dot(q, kt).to(tl.float32) * qs[:, None] * ks[None, :]  # logits, base 2
            s = tl.where(col_ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.math.exp2(s - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            vt = tl.load(V + base + dims[:, None] * tokens + cols[None, :], mask=col_ok[None, :], other=0.0)
            pv = tl.dot((p * PSCALE).to(tl.float8e4nv), tl.trans(vt))
            acc = acc * alpha[:, None] + pv
            m_i = m_new
        vs = tl.load(VS + bh.to(tl.int64) * D + dims)
        out = acc * (vs[None, :] / PSCALE) / l_i[:, None]
        b = bh // heads
        h = bh % heads
        # Written straight into the engine's (batch, tokens, heads, dim) layout.
        offset = (b.to(tl.int64) * tokens + rows[:, None]) * heads * D + h * D + dims[None, :]
        tl.store(Out + offset, out.to(Out.dtype.element_ty), mask=row_ok[:, None])


def attention_8bit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q.k^T / sqrt(dim)).v for (batch, tokens, heads, dim) inputs, in 8 bits; same layout out."""
    b, n, h, d = q.shape
    q8, qs, k8, ks, v8, vs = quantize_inputs(q, k, v, d**-0.5)
    out = torch.empty_like(q)
    grid = (triton.cdiv(n, BLOCK_M), b * h)
    _attention_kernel[grid](
        q8,
        qs,
        k8,
        ks,
        v8,
        vs,
        out,
        n,
        h,
        D=d,
        BM=BLOCK_M,
        BN=BLOCK_N,
        PSCALE=P_SCALE,
        num_warps=WARPS,
        num_stages=STAGES,
    )
    return out


def reference_8bit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The kernel's arithmetic in plain torch (float32, one softmax over all keys, the same roundings but
    the running max's), for the CPU tests: int8 logits, probabilities rounded to fp8, fp8 V."""
    b, n, h, d = q.shape
    q8, qs, k8, ks, v8, vs = quantize_inputs(q, k, v, d**-0.5)
    s = (q8.float() @ k8.float().transpose(1, 2)) * qs.unsqueeze(-1) * ks.unsqueeze(1)
    m = s.amax(dim=-1, keepdim=True)
    p = torch.exp2(s - m)
    p8 = (p * P_SCALE).to(torch.float8_e4m3fn).float()
    out = (p8 @ v8.float().transpose(1, 2)) * (vs.unsqueeze(1) / P_SCALE) / p.sum(dim=-1, keepdim=True)
    return out.reshape(b, h, n, d).permute(0, 2, 1, 3).to(q.dtype)


SHAPES = [
    (128, 128, 8, 3),
    (128, 64, 4, 3),
    (128, 128, 8, 4),
    (128, 64, 8, 3),
    (64, 128, 4, 3),
    (128, 128, 4, 3),
    (128, 256, 8, 3),
]  # (BLOCK_M, BLOCK_N, warps, stages)


def main() -> int:
    import argparse
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from optim.execution.device_speed import best_seconds

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device("cuda")
    torch.manual_seed(0)
    n, h, d = 8448, 24, 128
    q, k, v = (torch.randn(1, n, h, d, device=device, dtype=torch.bfloat16) for _ in range(3))
    flops = 4 * n * n * d * h
    rows = []

    def sdpa() -> torch.Tensor:
        heads_first = (t.transpose(1, 2) for t in (q, k, v))
        return torch.nn.functional.scaled_dot_product_attention(*heads_first).transpose(1, 2)

    rows.append({"kernel": "SDPA bf16", "ms": best_seconds(sdpa, device, 10) * 1e3})
    compiled = torch.compile(quantize_inputs)
    compiled(q, k, v, d**-0.5)
    rows.append(
        {"kernel": "quantize (compiled)", "ms": best_seconds(lambda: compiled(q, k, v, d**-0.5), device, 10) * 1e3}
    )
    q8, qs, k8, ks, v8, vs = quantize_inputs(q, k, v, d**-0.5)
    out = torch.empty_like(q)
    for bm, bn, warps, stages in SHAPES:
        grid = (triton.cdiv(n, bm), h)

        def run(bm=bm, bn=bn, warps=warps, stages=stages, grid=grid) -> None:
            _attention_kernel[grid](
                q8, qs, k8, ks, v8, vs, out, n, h, D=d, BM=bm, BN=bn, PSCALE=P_SCALE, num_warps=warps, num_stages=stages
            )

        rows.append(
            {
                "kernel": f"8-bit, BLOCK_M {bm}, BLOCK_N {bn}, {warps} warps, {stages} stages",
                "ms": best_seconds(run, device, 10) * 1e3,
            }
        )
    for row in rows:
        row["tflops"] = flops / row["ms"] / 1e9
    exact = torch.stack(
        [torch.softmax(q[0, :, i].double() @ k[0, :, i].double().t() / d**0.5, -1) @ v[0, :, i].double()
         for i in range(4)], 1)  # fmt: skip
    deviation = {
        "8-bit": float((attention_8bit(q, k, v)[0, :, :4].double() - exact).norm() / exact.norm()),
        "SDPA bf16": float((sdpa()[0, :, :4].double() - exact).norm() / exact.norm()),
    }
    result = {"gpu": torch.cuda.get_device_name(), "tokens": n, "rows": rows, "rel_l2_vs_float64": deviation}
    from bench.report import print_and_write

    print_and_write(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
