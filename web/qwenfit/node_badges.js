// A small badge under the loader and the run nodes: the plan's predicted peak VRAM and s/step before
// a run, and after a run the measured peak and s/step next to it.
import { formatBytes, formatStep } from "./format.js";

const LINE = 15;
const COLOURS = { plan: "#ffd65a", measured: "#5ec8ff", detail: "#aab", error: "#ff8080" };

function planLines(preview) {
  if (!preview) return [["detail", "plan: …"]];
  if (!preview.ok) return [["error", `plan: ${preview.error}`]];
  if (preview.predicted_peak_bytes == null) return [["detail", `plan: ${preview.notes?.[0] ?? "no prediction"}`]];
  const where = preview.device?.startsWith("no GPU") ? " (no GPU: host RAM)" : "";
  const lines = [["plan", `plan: peak ${formatBytes(preview.predicted_peak_bytes)}${where} · ${formatStep(preview.seconds_per_step)}`]];
  const plan = preview.plan;
  if (plan) {
    const blocks = `${plan.resident_blocks}/${plan.blocks} blocks on GPU`;
    lines.push(["detail", `${blocks}, text encoder ${plan.text_encoder}, VAE tiling ${plan.vae_tiling ? "on" : "off"}`]);
  }
  return lines;
}

function measuredLine(record) {
  if (!record) return null;
  const peak = record.peak_reserved_bytes
    ? `peak ${formatBytes(record.peak_reserved_bytes)}`
    : "no GPU (nothing in VRAM)";
  return ["measured", `last run: ${peak} · ${formatStep(record.seconds_per_step)}`];
}

/** The lines a node's badge shows (also read by the browser test). */
export function badgeLines(node) {
  const state = node.qwenfit ?? {};
  const lines = planLines(state.preview);
  const measured = measuredLine(state.record);
  if (measured) lines.push(measured);
  return lines;
}

function truncated(ctx, text, width) {
  if (ctx.measureText(text).width <= width) return text;
  let cut = text;
  while (cut.length > 3 && ctx.measureText(`${cut}…`).width > width) cut = cut.slice(0, -1);
  return `${cut}…`;
}

/** Draw ``node``'s badge just under its body (call from onDrawForeground). */
export function drawBadge(node, ctx) {
  if (node.flags?.collapsed || !node.qwenfit) return;
  const lines = badgeLines(node);
  const width = node.size[0];
  const top = node.size[1] + 6;
  ctx.save();
  ctx.fillStyle = "rgba(20, 22, 28, 0.9)";
  ctx.beginPath();
  const height = lines.length * LINE + 6;
  if (ctx.roundRect) ctx.roundRect(0, top, width, height, 4);
  else ctx.rect(0, top, width, height);
  ctx.fill();
  ctx.font = "12px sans-serif";
  ctx.textBaseline = "top";
  lines.forEach(([kind, text], i) => {
    ctx.fillStyle = COLOURS[kind];
    ctx.fillText(truncated(ctx, text, width - 12), 6, top + 4 + i * LINE);
  });
  ctx.restore();
}

/** Give a finished run's record to the run node and to its loader (the "qwenfit.run" event). */
export function attachRecord(graph, detail, upstreamLoader) {
  const node = graph?.getNodeById(Number(detail.node)) ?? graph?.getNodeById(detail.node);
  if (!node) return [];
  const touched = [node];
  (node.qwenfit ??= {}).record = detail.record;
  const loader = upstreamLoader(node);
  if (loader) {
    (loader.qwenfit ??= {}).record = detail.record;
    touched.push(loader);
  }
  return touched;
}
