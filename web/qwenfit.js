// QwenFit in the browser: the live memory panel, and the plan preview (predicted peak VRAM and
// s/step) under the loader and the run nodes, with the measured figures after a run.
// The pieces live in ./qwenfit/; this file wires them to ComfyUI.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { getSetting } from "./qwenfit/format.js";
import { MemoryPanel } from "./qwenfit/memory_panel.js";
import { attachRecord, badgeLines, drawBadge } from "./qwenfit/node_badges.js";
import { PREVIEW_NODES, loaderOf, refreshPreviews } from "./qwenfit/plan_preview.js";

const PANEL_SETTING = "QwenFit.Monitor.LivePanel";
const PREVIEW_SETTING = "QwenFit.Monitor.PlanPreview";
const REFRESH_MS = 1000;

const panel = new MemoryPanel();

function redraw() {
  app.graph?.setDirtyCanvas?.(true, false);
}

async function loadRecentHistory() {
  const response = await api.fetchApi("/qwenfit/memory/history?seconds=60");
  if (!response.ok) return;
  const history = await response.json();
  const now = performance.now();
  for (const sample of history.samples) panel.update({ ...sample, phase: null }, now - (history.now - sample.t) * 1000);
  panel.history.sort((a, b) => a.at - b.at); // live events may have arrived first
  if (!history.live) panel.detail.textContent = "live monitor off on the server (QWENFIT_LIVE_MONITOR=0)";
}

function watchPreviews() {
  let busy = false;
  setInterval(async () => {
    if (busy || !getSetting(app, PREVIEW_SETTING, true)) return;
    busy = true;
    try {
      await refreshPreviews(app.graph, redraw);
    } finally {
      busy = false;
    }
  }, REFRESH_MS);
}

app.registerExtension({
  name: "QwenFit.core",
  settings: [
    {
      id: PANEL_SETTING,
      category: ["QwenFit", "Monitor", "Live panel"],
      name: "Show the live memory panel (VRAM per GPU, host RAM)",
      type: "boolean",
      defaultValue: true,
      onChange: (value) => panel.attach(value !== false),
    },
    {
      id: PREVIEW_SETTING,
      category: ["QwenFit", "Monitor", "Plan preview"],
      name: "Show the plan preview (predicted peak VRAM and s/step) under QwenFit nodes",
      type: "boolean",
      defaultValue: true,
      onChange: redraw,
    },
  ],
  async setup() {
    panel.attach(getSetting(app, PANEL_SETTING, true) !== false);
    api.addEventListener("qwenfit.memory", ({ detail }) => panel.update(detail));
    api.addEventListener("qwenfit.run", ({ detail }) => {
      attachRecord(app.graph, detail, (node) => loaderOf(app.graph, node));
      // Ask again: the step time is now calibrated by this run.
      for (const node of app.graph?._nodes ?? []) if (node.qwenfit) node.qwenfit.query = undefined;
      redraw();
    });
    loadRecentHistory().catch((error) => console.warn("[QwenFit] memory history unavailable", error));
    watchPreviews();
    window.qwenfit = { panel, badgeLines, refresh: () => refreshPreviews(app.graph, redraw) };
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!PREVIEW_NODES.includes(nodeData.name)) return;
    const draw = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx, ...rest) {
      const result = draw?.call(this, ctx, ...rest);
      if (getSetting(app, PREVIEW_SETTING, true)) drawBadge(this, ctx);
      return result;
    };
  },
});
