// The plan badge at the bottom of the loader and the run nodes: the plan's predicted peak VRAM and s/step
// before a run, and after a run the measured peak and s/step next to it. It is a DOM widget, which both
// node renderers show (the classic canvas overlays it, Nodes 2.0 puts the element inside the node), and
// which never reaches the saved workflow or the queued prompt.
import { formatBytes, formatStep } from "./format.js";
import { locate } from "./graph_nodes.js";

export const BADGE_WIDGET = "qwenfit_plan";
const LINE_PX = 15;
const LINES = 3;
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
    const detail = `${blocks}, text encoder ${plan.text_encoder}, VAE tiling ${plan.vae_tiling ? "on" : "off"}`;
    // Several GPUs: how they share the work leads the line, and the row's tooltip says why.
    const several = plan.gpus?.length > 1;
    lines.push(["detail", several ? `${plan.strategy}: ${detail}` : detail, several ? plan.reason : undefined]);
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

/** The lines a node's badge shows, as [kind, text] or [kind, text, why] (``why`` joins the row's tooltip). */
export function badgeLines(node) {
  const state = node.qwenfit ?? {};
  const lines = planLines(state.preview);
  const measured = measuredLine(state.record);
  if (measured) lines.push(measured);
  return lines;
}

/** Give ``node`` its badge once it sits in a workflow. Not at creation: the frontend also creates
 * throw-away copies of nodes (a subgraph being made clones its nodes first), and Nodes 2.0 on 1.58 would
 * then show the copy's badge instead of the node's. */
export function addBadge(node, visible = true) {
  if (!node.graph || node.widgets?.some((w) => w.name === BADGE_WIDGET) || !node.addDOMWidget) return;
  const element = document.createElement("div");
  element.className = "qwenfit-plan";
  Object.assign(element.style, {
    font: "11px sans-serif", lineHeight: `${LINE_PX}px`, padding: "2px 6px", borderRadius: "4px",
    background: "rgba(20, 22, 28, 0.9)", overflow: "hidden", boxSizing: "border-box", pointerEvents: "none",
  });
  const height = LINES * LINE_PX + 6;
  const widget = node.addDOMWidget(BADGE_WIDGET, "qwenfit_plan", element, {
    serialize: false, // not a setting: never in the saved workflow nor in the queued prompt
    hideOnZoom: false,
    getMinHeight: () => height,
    getMaxHeight: () => height,
  });
  widget.serialize = false;
  // Room for the badge below the node's own widgets (a node made before it had none).
  const wanted = node.computeSize?.();
  if (wanted && node.size && wanted[1] > node.size[1]) node.setSize?.([node.size[0], wanted[1]]);
  showBadge(node, visible);
}

/** Write ``node``'s badge lines into its element (``visible`` false hides it: the preview setting). */
export function showBadge(node, visible = true) {
  const element = node.widgets?.find((w) => w.name === BADGE_WIDGET)?.element;
  if (element) fill(element, node, visible);
}

function fill(element, node, visible) {
  element.style.visibility = visible ? "visible" : "hidden";
  const rows = badgeLines(node).map(([kind, text, why]) => {
    const row = document.createElement("div");
    Object.assign(row.style, { color: COLOURS[kind], whiteSpace: "nowrap", overflow: "hidden", textOverflow: "ellipsis" });
    row.dataset.kind = kind;
    row.textContent = text;
    row.title = why ? `${text}\n${why}` : text;
    return row;
  });
  element.replaceChildren(...rows);
}

/** Give a finished run's record to the run node (named by its execution id, "10:7" inside a subgraph)
 * and to the loader that feeds it (``loaderOf(place, node)``); returns the nodes it changed. */
export function attachRecord(rootGraph, detail, loaderOf) {
  const found = locate(rootGraph, detail.node);
  if (!found) return [];
  const [node, where] = found;
  const touched = [node];
  (node.qwenfit ??= {}).record = detail.record;
  const loader = loaderOf(where, node)?.[0];
  if (loader && loader !== node) {
    (loader.qwenfit ??= {}).record = detail.record;
    touched.push(loader);
  }
  return touched;
}
