// The plan badge at the bottom of the loader and the run nodes: the plan's predicted peak VRAM and s/step
// before a run, and after a run the measured peak and s/step next to it. It is a DOM widget, which both
// node renderers show (the classic canvas overlays it, Nodes 2.0 puts the element inside the node), and
// which never reaches the saved workflow or the queued prompt.
import { app } from "../../../scripts/app.js";
import { formatBytes, formatStep } from "./format.js";
import { locate } from "./graph_nodes.js";

export const BADGE_WIDGET = "qwenfit_plan";
const LINE_PX = 15;
const FONT = "11px sans-serif";
const PAD_X = 6; // the badge's padding, left and right
const PAD_Y = 2; // and top and bottom
// The frontend insets a DOM widget by its margin on every side of the height it asks for (10 px unless told):
// the badge asks for its lines plus twice this.
const MARGIN = 4;
const DRAG_PX = 4; // a press on the badge that moves further is a drag of the node, not a click
const COLOURS = { plan: "#ffd65a", measured: "#5ec8ff", detail: "#aab", error: "#ff8080" };

function planLines(preview) {
  if (!preview) return [["detail", "plan: …"]];
  if (!preview.ok) return [["error", `plan: ${preview.error}`]];
  if (preview.predicted_peak_bytes == null) return [["detail", `plan: ${preview.notes?.[0] ?? "no prediction"}`]];
  const where = preview.device?.startsWith("no GPU") ? " (no GPU: host RAM)" : "";
  const lines = [["plan", `plan: peak ${formatBytes(preview.predicted_peak_bytes)}${where} · ${formatStep(preview.seconds_per_step)}`]];
  const plan = preview.plan;
  if (plan) {
    // The server says where the weights are (on a CPU-only host there is no GPU to name).
    const detail = plan.summary;
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

/** Everything the badge knows, as the click shows it: every line in full, with its why and the preview's notes. */
export function fullText(node) {
  const rows = badgeLines(node).map(([, text, why]) => (why ? `${text}\n${why}` : text));
  const notes = node.qwenfit?.preview?.notes ?? [];
  return [...rows, ...notes.map((note) => `note: ${note}`)].join("\n");
}

let measure = null; // a canvas context to measure text with, made on first use

/** How many lines ``text`` wraps to in ``width`` px (as the rows wrap: at spaces, or anywhere in a long word). */
function wrappedLines(text, width) {
  measure ??= document.createElement("canvas").getContext("2d");
  measure.font = FONT;
  let lines = 1;
  let line = "";
  for (const word of text.split(" ")) {
    const next = line ? `${line} ${word}` : word;
    if (measure.measureText(next).width <= width) {
      line = next;
      continue;
    }
    if (line) lines += 1;
    line = word;
    while (measure.measureText(line).width > width && line.length > 1) { // a word longer than the line
      let fits = line.length - 1;
      while (fits > 1 && measure.measureText(line.slice(0, fits)).width > width) fits -= 1;
      line = line.slice(fits);
      lines += 1;
    }
  }
  return lines;
}

/** The height of the badge's content: measured where the renderer shows it, else reckoned from the node's width. */
function contentHeight(node, element) {
  const rows = [...element.children];
  if (element.isConnected && element.clientWidth > 0 && rows.length) {
    return rows.reduce((sum, row) => sum + row.offsetHeight, 0) + 2 * PAD_Y;
  }
  const width = (node.size?.[0] ?? 300) - 2 * MARGIN - 2 * PAD_X;
  const lines = badgeLines(node).reduce((sum, [, text]) => sum + wrappedLines(text, Math.max(width, 40)), 0);
  return lines * LINE_PX + 2 * PAD_Y;
}

let open = null; // the full text shown by a click: { box, close }

function closeFullText() {
  open?.close();
}

/** Show ``node``'s full text in a box under ``row`` until Escape or a click elsewhere. */
function showFullText(node, row) {
  closeFullText();
  const box = document.createElement("div");
  box.className = "qwenfit-plan-full";
  const at = row.getBoundingClientRect();
  Object.assign(box.style, {
    position: "fixed", left: `${Math.max(0, at.left)}px`, top: `${at.bottom + 4}px`, zIndex: 10000,
    maxWidth: "min(520px, 90vw)", maxHeight: `${Math.max(120, innerHeight - at.bottom - 12)}px`, overflowY: "auto", padding: "6px 8px", borderRadius: "6px", background: "rgba(20, 22, 28, 0.97)",
    color: "#dde", font: "12px sans-serif", lineHeight: "16px", whiteSpace: "pre-wrap", overflowWrap: "anywhere",
    boxShadow: "0 2px 8px rgba(0,0,0,0.5)", userSelect: "text",
  });
  box.textContent = fullText(node);
  const onKey = (event) => {
    if (event.key !== "Escape") return;
    // Escape closes this box only: the frontend would also take it (leaving an open subgraph, say).
    event.stopImmediatePropagation();
    event.preventDefault();
    close();
  };
  const onPointer = (event) => !box.contains(event.target) && close();
  function close() {
    box.remove();
    window.removeEventListener("keydown", onKey, true);
    document.removeEventListener("pointerdown", onPointer, true);
    if (open?.box === box) open = null;
  }
  window.addEventListener("keydown", onKey, true);
  document.addEventListener("pointerdown", onPointer, true);
  document.body.append(box);
  open = { box, close };
}

/** The classic canvas under the badge; null in Nodes 2.0, which puts the badge inside its node's element
 * and handles the pointer there itself. */
function canvasUnder(element) {
  return element.closest("[data-node-id]") ? null : (app.canvas ?? null);
}

/** The pointer on the badge. A press that stays put on a row is a click: it shows the full text (a row's
 * title shows it on hover). In the classic renderer, which overlays the badge on the canvas, a press that
 * moves drags the node, as anywhere else on its body (the canvas itself treats a widget's area as the
 * widget's), and the wheel zooms the canvas. */
function handlePointer(node, element) {
  let press = null; // { x, y, row, from: the node's position, dragging }
  element.addEventListener("pointerdown", (event) => {
    if (event.button !== 0) return;
    press = { x: event.clientX, y: event.clientY, row: event.target.closest?.("[data-kind]"), from: [...node.pos] };
    if (canvasUnder(element)) element.setPointerCapture?.(event.pointerId);
  });
  element.addEventListener("pointermove", (event) => {
    const canvas = canvasUnder(element);
    if (!press || !canvas || node.pinned) return;
    const dx = event.clientX - press.x, dy = event.clientY - press.y;
    if (!press.dragging && Math.hypot(dx, dy) < DRAG_PX) return;
    press.dragging = true;
    const scale = canvas.ds?.scale ?? 1;
    node.pos = [press.from[0] + dx / scale, press.from[1] + dy / scale];
    canvas.setDirty?.(true, true);
  });
  const release = (event) => {
    const done = press;
    press = null;
    if (element.hasPointerCapture?.(event.pointerId)) element.releasePointerCapture(event.pointerId);
    if (event.type === "pointerup" && done?.row && !done.dragging) showFullText(node, done.row);
  };
  element.addEventListener("pointerup", release);
  element.addEventListener("pointercancel", release);
  element.addEventListener("wheel", (event) => {
    const canvas = canvasUnder(element)?.canvas;
    if (!canvas) return;
    event.preventDefault();
    canvas.dispatchEvent(new WheelEvent(event.type, event));
  }, { passive: false });
}

/** Give ``node`` its badge once it sits in a workflow. Not at creation: the frontend also creates
 * throw-away copies of nodes (a subgraph being made clones its nodes first), and Nodes 2.0 on 1.58 would
 * then show the copy's badge instead of the node's. */
export function addBadge(node, visible = true) {
  if (!node.graph || node.widgets?.some((w) => w.name === BADGE_WIDGET) || !node.addDOMWidget) return;
  const element = document.createElement("div");
  element.className = "qwenfit-plan";
  Object.assign(element.style, {
    font: FONT, lineHeight: `${LINE_PX}px`, padding: `${PAD_Y}px ${PAD_X}px`, borderRadius: "4px",
    background: "rgba(20, 22, 28, 0.9)", overflow: "hidden", boxSizing: "border-box",
  });
  // The classic canvas sizes the widget from these on every draw (and grows the node to fit); Nodes 2.0 lays
  // the element out itself. Both frontends in use (1.32, 1.35, 1.58) read getMinHeight/getMaxHeight and margin.
  const height = () => contentHeight(node, element) + 2 * MARGIN;
  const widget = node.addDOMWidget(BADGE_WIDGET, "qwenfit_plan", element, {
    serialize: false, // not a setting: never in the saved workflow nor in the queued prompt
    hideOnZoom: false,
    margin: MARGIN,
    getMinHeight: height,
    getMaxHeight: height,
  });
  widget.serialize = false;
  handlePointer(node, element);
  // Room for the badge below the node's own widgets (a node made before it had none).
  const wanted = node.computeSize?.();
  if (wanted && node.size && wanted[1] > node.size[1]) node.setSize?.([node.size[0], wanted[1]]);
  showBadge(node, visible);
}

/** Write ``node``'s badge lines into its element (``visible`` false hides it: the preview setting). */
export function showBadge(node, visible = true) {
  const element = node.widgets?.find((w) => w.name === BADGE_WIDGET)?.element;
  if (!element) return;
  fill(element, node, visible);
  node.setDirtyCanvas?.(true, true); // the classic canvas measures the badge again (and grows the node) as it draws
}

function fill(element, node, visible) {
  element.style.visibility = visible ? "visible" : "hidden";
  const rows = badgeLines(node).map(([kind, text, why]) => {
    const row = document.createElement("div");
    // A long line wraps (at spaces, or inside a long file name) instead of losing its end: errors end with the fix.
    Object.assign(row.style, {
      color: COLOURS[kind], whiteSpace: "normal", overflowWrap: "anywhere", width: "fit-content", maxWidth: "100%",
      pointerEvents: visible ? "auto" : "none", cursor: "help",
    });
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
