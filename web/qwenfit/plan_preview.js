// The plan preview of a node: read the loader's settings and the run node's job from the graph,
// ask the server's planner (/qwenfit/plan_preview), keep the answer on the node. Nothing is computed
// here: the route answers with the same planner the run uses. Which settings nodes feed the loader,
// their widgets and each one's query name come from the server's one settings schema
// (/qwenfit/settings_schema), so a new setting is previewed without a change here.
import { api } from "../../../scripts/api.js";
import { allNodes, connected, downstream, typeOf, upstream } from "./graph_nodes.js";

export const LOADER = "QwenFitOptimizedLoader";
export const EDIT = "QwenFitInstructEdit";
export const LAYERED = "QwenFitLayeredDecompose";
export const LORA = "QwenFitLora";
const MAX_LORAS = 16; // as the route reads them
export const PREVIEW_NODES = [LOADER, EDIT, LAYERED];

function widget(node, name) {
  return node?.widgets?.find((w) => w.name === name)?.value;
}

/** The QwenFit LoRA nodes between the loader and ``node``, loader side first: [[name, strength], ...]. */
export function loraChain(where, node) {
  const chain = [];
  let current = typeOf(node) === LOADER ? null : upstream(where, node, "pipeline");
  while (current && typeOf(current[0]) === LORA && chain.length < MAX_LORAS) {
    chain.unshift([widget(current[0], "lora"), widget(current[0], "strength")]);
    current = upstream(current[1], current[0], "pipeline");
  }
  return chain;
}

/** The loader feeding ``node`` (itself when it is one), through any QwenFit LoRA nodes and subgraph
 * boundaries, with its place; null when there is none. */
export function loaderOf(where, node) {
  let found = typeOf(node) === LOADER ? [node, where] : upstream(where, node, "pipeline");
  for (let hops = 0; found && typeOf(found[0]) === LORA && hops < MAX_LORAS; hops++) {
    found = upstream(found[1], found[0], "pipeline");
  }
  return found && typeOf(found[0]) === LOADER ? found : null;
}

/** The first reference's aspect ratio, when it comes from a Load Image whose picture is shown. */
function referenceAspect(where, run) {
  const picture = upstream(where, run, "image")?.[0]?.imgs?.[0];
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

/** The route's query for ``node`` (a loader or a run node) at ``where``, or null when no loader is connected. */
export function previewQuery(where, node, schema) {
  const found = loaderOf(where, node);
  if (!found) return null;
  const [loader, loaderPlace] = found;
  const run = typeOf(node) === LOADER
    ? downstream(loader, "pipeline").find((n) => typeOf(n) === EDIT || typeOf(n) === LAYERED)
    : node;
  const runPlace = typeOf(node) === LOADER ? loaderPlace : where;
  const params = new URLSearchParams();
  for (const name of ["model", "variant", "text_encoder", "vae", "lora", "lora_strength"]) {
    put(params, name, widget(loader, name));
  }
  const chain = loraChain(where, node);
  if (chain.length) params.set("loras", JSON.stringify(chain));
  for (const group of schema) {
    const settings = upstream(loaderPlace, loader, group.loader_input)?.[0];
    for (const choice of group.choices) put(params, choice.query, widget(settings, choice.field));
  }
  if (typeOf(run) === EDIT) {
    params.set("job", "edit");
    for (const name of ["width", "height", "steps"]) put(params, name, widget(run, name));
    put(params, "cfg_scale", widget(run, "true_cfg_scale"));
    const linked = ["image", "image2", "image3"].filter((n) => connected(run, n));
    params.set("references", String(Math.max(1, linked.length)));
    const aspect = referenceAspect(runPlace, run);
    if (aspect) params.set("aspect", aspect.toFixed(4));
    // With a mask the run edits a crop around it: the route plans the crop's size, not the picture's.
    if (connected(run, "mask") && widget(run, "mask_mode") !== "off") params.set("masked", "1");
  } else if (typeOf(run) === LAYERED) {
    params.set("job", "layered");
    for (const name of ["layers", "resolution", "steps"]) put(params, name, widget(run, name));
    put(params, "cfg_scale", widget(run, "true_cfg_scale"));
    params.set("caption", String(widget(run, "prompt") ?? "").trim() ? "0" : "1");
  }
  return params.toString();
}

/** Refresh the preview of every QwenFit node (subgraphs included) whose query changed; answers land in
 * node.qwenfit.preview, and ``onChange(node)`` is called for each node whose answer changed. */
export async function refreshPreviews(rootGraph, onChange) {
  const nodes = allNodes(rootGraph).filter(([node]) => PREVIEW_NODES.includes(typeOf(node)));
  if (!nodes.length) return;
  const schema = await settingsSchema();
  await Promise.all(nodes.map(async ([node, where]) => {
    const state = (node.qwenfit ??= {});
    let query;
    try {
      query = previewQuery(where, node, schema);
    } catch (error) { // one node's odd wiring must not stop the others' previews
      state.query = undefined;
      state.preview = { ok: false, error: `preview unavailable (${error})` };
      onChange(node);
      return;
    }
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
