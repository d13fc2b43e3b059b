// The live memory panel: a VRAM bar per GPU, a host RAM bar, and the last minute as a small chart
// with the phases of QwenFit runs marked. It only draws what the server's sampler sends
// ("qwenfit.memory" events, twice a second); it computes nothing itself.
import { formatBytes } from "./format.js";

const HISTORY_MS = 60_000;
const PHASE_COLOURS = { encode: "#7d86ff", denoise: "#4fd1a5", decode: "#ff9f5a" };

function element(tag, style = {}, text = "") {
  const node = document.createElement(tag);
  Object.assign(node.style, style);
  if (text) node.textContent = text;
  return node;
}

function bar(label) {
  const row = element("div", { margin: "3px 0" });
  const caption = element("div", { display: "flex", justifyContent: "space-between", gap: "8px" });
  const name = element("span", { overflow: "hidden", textOverflow: "ellipsis", whiteSpace: "nowrap" }, label);
  const value = element("span", { whiteSpace: "nowrap" });
  const track = element("div", { height: "6px", background: "#3a3f4b", borderRadius: "3px", overflow: "hidden" });
  const fill = element("div", { height: "100%", width: "0%", background: "#5ec8ff", transition: "width 0.3s" });
  track.append(fill);
  caption.append(name, value);
  row.append(caption, track);
  return { row, name, value, fill };
}

export class MemoryPanel {
  constructor() {
    this.root = element("div", {
      position: "fixed", left: "60px", bottom: "12px", zIndex: 1000, width: "250px",
      padding: "6px 8px", borderRadius: "6px", background: "rgba(24, 26, 32, 0.92)", color: "#dde",
      font: "11px sans-serif", boxShadow: "0 2px 8px rgba(0,0,0,0.4)", userSelect: "none",
    });
    this.root.id = "qwenfit-memory-panel";
    this.root.qwenfitPanel = this; // what the browser tests read (no global)
    const title = element("div", { fontWeight: "bold", cursor: "pointer", marginBottom: "2px" }, "QwenFit memory");
    title.title = "Click to fold. Turn the panel off in Settings > QwenFit.";
    this.body = element("div");
    title.addEventListener("click", () => {
      this.body.style.display = this.body.style.display === "none" ? "" : "none";
    });
    this.gpuRows = element("div");
    this.host = bar("RAM");
    this.detail = element("div", { color: "#99a", marginTop: "2px" });
    this.chart = element("canvas", { width: "234px", height: "44px", marginTop: "4px", display: "block" });
    this.chart.width = 234;
    this.chart.height = 44;
    this.body.append(this.gpuRows, this.host.row, this.detail, this.chart);
    this.root.append(title, this.body);
    this.gpuBars = [];
    this.history = [];
    this.lastSample = null;
  }

  attach(enabled) {
    if (enabled && !this.root.isConnected) document.body.append(this.root);
    if (!enabled && this.root.isConnected) this.root.remove();
  }

  /** A sample as the server sends it (see nodes/live_monitor.py: sample_json), taken at ``at``
   * (performance.now() time; default now). */
  update(sample, at = performance.now()) {
    this.lastSample = sample;
    this.#drawGpus(sample.gpus);
    const host = this.host;
    host.value.textContent = `${formatBytes(sample.host_used_bytes)} / ${formatBytes(sample.host_total_bytes)}`;
    host.fill.style.width = `${(100 * sample.host_used_bytes) / sample.host_total_bytes}%`;
    host.fill.style.background = "#b58cff";
    const phase = sample.phase ? ` · running: ${sample.phase}` : "";
    this.detail.textContent =
      `this process ${formatBytes(sample.rss_bytes)} · pinned ${formatBytes(sample.pinned_bytes)}${phase}`;
    const now = performance.now();
    const gpu = sample.gpus[0];
    this.history.push({
      at,
      used: gpu ? gpu.used_bytes : sample.rss_bytes,
      total: gpu ? gpu.total_bytes : sample.host_total_bytes,
      phase: sample.phase,
    });
    while (this.history.length && now - this.history[0].at > HISTORY_MS) this.history.shift();
    this.#drawChart(now, gpu ? "GPU 0 VRAM, 60 s" : "process RAM, 60 s");
  }

  #drawGpus(gpus) {
    if (this.gpuBars.length !== Math.max(gpus.length, 1)) {
      this.gpuRows.replaceChildren();
      this.gpuBars = gpus.length ? gpus.map((g) => bar(`GPU ${g.index} ${g.name}`)) : [bar("no GPU (CPU only)")];
      this.gpuBars.forEach((b) => this.gpuRows.append(b.row));
    }
    gpus.forEach((g, i) => {
      const share = g.used_bytes / g.total_bytes;
      this.gpuBars[i].value.textContent = `${formatBytes(g.used_bytes)} / ${formatBytes(g.total_bytes)}`;
      this.gpuBars[i].fill.style.width = `${100 * share}%`;
      this.gpuBars[i].fill.style.background = share > 0.92 ? "#ff6b6b" : share > 0.8 ? "#ffc35a" : "#5ec8ff";
    });
    if (!gpus.length) this.gpuBars[0].value.textContent = "VRAM: none";
  }

  #drawChart(now, label) {
    const ctx = this.chart.getContext("2d");
    const { width, height } = this.chart;
    ctx.clearRect(0, 0, width, height);
    ctx.fillStyle = "#20232b";
    ctx.fillRect(0, 0, width, height);
    const points = this.history;
    if (points.length < 2) return;
    const top = Math.max(...points.map((p) => p.used)) * 1.15 || 1;
    const x = (at) => width - ((now - at) / HISTORY_MS) * width;
    const y = (bytes) => height - 2 - (bytes / top) * (height - 12);
    // Phase bands of QwenFit runs.
    points.forEach((p, i) => {
      if (!p.phase || i === 0) return;
      ctx.fillStyle = `${PHASE_COLOURS[p.phase] ?? "#888"}33`;
      ctx.fillRect(x(points[i - 1].at), 0, x(p.at) - x(points[i - 1].at) + 0.5, height);
    });
    ctx.strokeStyle = "#5ec8ff";
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    points.forEach((p, i) => (i ? ctx.lineTo(x(p.at), y(p.used)) : ctx.moveTo(x(p.at), y(p.used))));
    ctx.stroke();
    ctx.fillStyle = "#99a";
    ctx.fillText(`${label} · max ${formatBytes(Math.max(...points.map((p) => p.used)))}`, 3, 9);
  }
}
