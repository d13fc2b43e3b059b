// QwenFit in the browser: the live memory panel, and the plan preview (predicted peak VRAM and
// s/step) at the bottom of the loader and the run nodes, with the measured figures after a run.
// The pieces live in ./qwenfit/; this file wires them to ComfyUI. It works in both node renderers
// (the classic canvas and Nodes 2.0) and inside subgraphs, through the frontend's public API only.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { getSetting } from "./qwenfit/format.js";
import { allNodes, typeOf } from "./qwenfit/graph_nodes.js";
import { MemoryPanel } from "./qwenfit/memory_panel.js";
import { addBadge, attachRecord, showBadge } from "./qwenfit/node_badges.js";
import { PREVIEW_NODES, loaderOf, refreshPreviews } from "./qwenfit/plan_preview.js";

const PANEL_SETTING = "QwenFit.Monitor.LivePanel";
const PREVIEW_SETTING = "QwenFit.Monitor.PlanPreview";
const REFRESH_MS = 1000;

const panel = new MemoryPanel();
let graphReady = false; // the workflow exists only after setup (settings' onChange fires before)

function rootGraph() {
  return app.rootGraph ?? app.graph;
}

function previewsShown() {
  return getSetting(app, PREVIEW_SETTING, true) !== false;
}

function previewNodes() {
  return graphReady ? allNodes(rootGraph()).filter(([node]) => PREVIEW_NODES.includes(typeOf(node))) : [];
}

function showBadges() {
  for (const [node] of previewNodes()) showBadge(node, previewsShown());
}

function addBadges() {
  for (const [node] of previewNodes()) addBadge(node, previewsShown()); // once per node, when it is in the workflow
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
    if (busy) return;
    busy = true;
    try {
      addBadges();
      if (!previewsShown()) return;
      await refreshPreviews(rootGraph(), (node) => showBadge(node, previewsShown()));
    } finally {
      busy = false;
    }
  }, REFRESH_MS);
}

app.registerExtension({
  name: "qwenfit.core",
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
      name: "Show the plan preview (predicted peak VRAM and s/step) at the bottom of QwenFit nodes",
      type: "boolean",
      defaultValue: true,
      onChange: showBadges,
    },
  ],
  init() {
    // Here, before anything awaits: the server's first events arrive as soon as the socket is open.
    api.addEventListener("qwenfit.memory", ({ detail }) => panel.update(detail));
    api.addEventListener("qwenfit.run", ({ detail }) => {
      const touched = attachRecord(rootGraph(), detail, loaderOf);
      // Ask again everywhere: the step time is now calibrated by this run.
      for (const [node] of allNodes(rootGraph())) if (node.qwenfit) node.qwenfit.query = undefined;
      for (const node of touched) showBadge(node, previewsShown());
    });
  },
  async setup() {
    graphReady = true;
    panel.attach(getSetting(app, PANEL_SETTING, true) !== false);
    loadRecentHistory().catch((error) => console.info("[QwenFit] memory history unavailable", error));
    watchPreviews();
  },
});
