// The plan preview of a node: read the loader's settings and the run node's job from the graph,
// ask the server's planner (/qwenfit/plan_preview), keep the answer on the node. Nothing is computed
// here: the route answers with the same planner the run uses. Which settings nodes feed the loader,
// their widgets and each one's query name come from the server's one settings schema
// (/qwenfit/settings_schema), so a new setting is previewed without a change here.
import { api } from "../../../scripts/api.js";

export const LOADER = "QwenFitOptimizedLoader";
export const EDIT = "QwenFitInstructEdit";
export const LAYERED = "QwenFitLayeredDecompose";
export const LORA = "QwenFitLora";
const MAX_LORAS = 16; // as the route reads them
export const PREVIEW_NODES = [LOADER, EDIT, LAYERED];

function widget(node, name) {
  return node?.widgets?.find((w) => w.name === name)?.value;
}

function linkById(graph, id) {
  if (id == null) return null;
  return graph.getLink?.(id) ?? (graph.links instanceof Map ? graph.links.get(id) : graph.links?.[id]);
}

function upstream(graph, node, inputName) {
  const input = node?.inputs?.find((i) => i.name === inputName);
  const link = linkById(graph, input?.link);
  return link ? graph.getNodeById(link.origin_id) : null;
}

function downstream(graph, node, outputName) {
  const output = node?.outputs?.find((o) => o.name === outputName);
  return (output?.links ?? []).map((id) => linkById(graph, id)).filter(Boolean).map((l) => graph.getNodeById(l.target_id));
}

/** The QwenFit LoRA nodes between the loader and ``node``, loader side first: [[name, strength], ...]. */
export function loraChain(graph, node) {
  const chain = [];
  let current = node.type === LOADER ? null : upstream(graph, node, "pipeline");
  while (current?.type === LORA && chain.length < MAX_LORAS) {
    chain.unshift([widget(current, "lora"), widget(current, "strength")]);
    current = upstream(graph, current, "pipeline");
  }
  return chain;
}

/** The loader feeding ``node`` (itself when it is one), through any QwenFit LoRA nodes. */
export function loaderOf(graph, node) {
  let loader = node.type === LOADER ? node : upstream(graph, node, "pipeline");
  for (let hops = 0; loader?.type === LORA && hops < MAX_LORAS; hops++) loader = upstream(graph, loader, "pipeline");
  return loader?.type === LOADER ? loader : null;
}

/** The first reference's aspect ratio, when it comes from a Load Image whose picture is shown. */
function referenceAspect(graph, run) {
  const source = upstream(graph, run, "image");
  const picture = source?.imgs?.[0];
  return picture?.naturalWidth && picture?.naturalHeight ? picture.naturalWidth / picture.naturalHeight : null;
}

function put(params, name, value) {
  if (value !== undefined && value !== null) params.set(name, String(value));
}

let schemaAnswer = null;

/** The settings schema: [{loader_input, node_id, choices: [{field, query, options, default}]}], asked once. */
export async function settingsSchema() {
  schemaAnswer ??= api.fetchApi("/qwenfit/settings_schema").then(async (response) => {
    if (!response.ok) throw new Error(`settings schema: HTTP ${response.status}`);
    return (await response.json()).groups;
  });
  try {
    return await schemaAnswer;
  } catch (error) {
    schemaAnswer = null; // ask again next time
    throw error;
  }
}

/** The route's query for ``node`` (a loader or a run node), or null when no loader is connected. */
export function previewQuery(graph, node, schema) {
  const loader = loaderOf(graph, node);
  if (!loader) return null;
  const run = node.type === LOADER
    ? downstream(graph, loader, "pipeline").find((n) => n && (n.type === EDIT || n.type === LAYERED))
    : node;
  const params = new URLSearchParams();
  for (const name of ["model", "variant", "text_encoder", "vae", "lora", "lora_strength"]) {
    put(params, name, widget(loader, name));
  }
  const chain = loraChain(graph, node);
  if (chain.length) params.set("loras", JSON.stringify(chain));
  for (const group of schema) {
    const settings = upstream(graph, loader, group.loader_input);
    for (const choice of group.choices) put(params, choice.query, widget(settings, choice.field));
  }
  if (run?.type === EDIT) {
    params.set("job", "edit");
    for (const name of ["width", "height", "steps"]) put(params, name, widget(run, name));
    put(params, "cfg_scale", widget(run, "true_cfg_scale"));
    const linked = ["image", "image2", "image3"].filter((n) => run.inputs?.find((i) => i.name === n)?.link != null);
    params.set("references", String(Math.max(1, linked.length)));
    const aspect = referenceAspect(graph, run);
    if (aspect) params.set("aspect", aspect.toFixed(4));
  } else if (run?.type === LAYERED) {
    params.set("job", "layered");
    for (const name of ["layers", "resolution", "steps"]) put(params, name, widget(run, name));
    put(params, "cfg_scale", widget(run, "true_cfg_scale"));
    params.set("caption", String(widget(run, "prompt") ?? "").trim() ? "0" : "1");
  }
  return params.toString();
}

/** Refresh the preview of every QwenFit node whose query changed; answers land in node.qwenfit.preview. */
export async function refreshPreviews(graph, onChange) {
  const nodes = (graph?._nodes ?? []).filter((n) => PREVIEW_NODES.includes(n.type));
  if (!nodes.length) return;
  const schema = await settingsSchema();
  await Promise.all(nodes.map(async (node) => {
    const state = (node.qwenfit ??= {});
    const query = previewQuery(graph, node, schema);
    if (query === state.query) return;
    state.query = query;
    if (query === null) {
      state.preview = { ok: false, error: "connect a QwenFit Optimized Loader" };
      onChange(node);
      return;
    }
    state.pending = true;
    try {
      const response = await api.fetchApi(`/qwenfit/plan_preview?${query}`);
      const answer = await response.json();
      if (state.query !== query) return; // settings changed while asking
      state.preview = response.status === 400 ? { ok: false, error: `${answer.parameter}: ${answer.error}` } : answer;
    } catch (error) {
      state.preview = { ok: false, error: `preview unavailable (${error})` };
    } finally {
      state.pending = false;
      onChange(node);
    }
  }));
}
