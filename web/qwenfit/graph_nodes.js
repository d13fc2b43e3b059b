// Walking the workflow as the frontend holds it, subgraphs included, through its public node API
// (findInputSlot, getInputLink, getOutputNodes, isSubgraphNode), never through the deprecated
// input.link / output.links fields or the private graph._nodes list.

// The id the frontend gives a subgraph's input node (links from outside the subgraph start there).
const SUBGRAPH_INPUT_ID = -10;
const MAX_DEPTH = 16; // subgraphs inside subgraphs, as deep as anyone nests them

/** Where a node sits: its graph and the chain of subgraph instance nodes above it (outermost first). */
export function place(graph, parents = []) {
  return { graph, parents };
}

function nodesOf(graph) {
  return graph?.nodes ?? [];
}

/** Every node of the workflow as [node, its place, its execution id ("10:7" inside subgraph node 10)]. */
export function allNodes(rootGraph) {
  const found = [];
  const walk = (graph, parents, prefix) => {
    if (parents.length > MAX_DEPTH) return;
    for (const node of nodesOf(graph)) {
      found.push([node, place(graph, parents), `${prefix}${node.id}`]);
      if (node.isSubgraphNode?.() && node.subgraph) walk(node.subgraph, [...parents, node], `${prefix}${node.id}:`);
    }
  };
  walk(rootGraph, [], "");
  return found;
}

/** The node a run event names by its execution id (a path of node ids through subgraph instances), with
 * its place; null when the workflow has no such node (any more). */
export function locate(rootGraph, executionId) {
  let graph = rootGraph;
  const parents = [];
  let node = null;
  for (const id of String(executionId).split(":")) {
    if (node) {
      parents.push(node);
      graph = node.subgraph;
    }
    node = graph?.getNodeById?.(id) ?? graph?.getNodeById?.(Number(id)) ?? null;
    if (!node) return null;
  }
  return [node, place(graph, parents)];
}

/** The node feeding ``node``'s input ``name`` and that node's place, following a link that enters the
 * subgraph out to the instance node's input; null when nothing is connected. */
export function upstream(where, node, name) {
  const slot = node?.findInputSlot?.(name) ?? -1;
  if (slot < 0) return null;
  let link = null;
  try {
    link = node.getInputLink?.(slot);
  } catch {
    // Some frontends cannot resolve a subgraph instance node's input links (1.32 fails inside
    // getInputLink): what lies outside is then unknown, as if unconnected.
    return null;
  }
  if (!link) return null;
  if (link.origin_id === SUBGRAPH_INPUT_ID) {
    const instance = where.parents.at(-1);
    if (!instance) return null;
    const outer = place(instance.graph, where.parents.slice(0, -1));
    const entry = instance.inputs?.[link.origin_slot];
    return entry ? upstream(outer, instance, entry.name) : null;
  }
  const origin = where.graph.getNodeById(link.origin_id);
  return origin ? [origin, where] : null;
}

/** The nodes ``node``'s output ``name`` feeds, in the same graph. */
export function downstream(node, name) {
  const slot = node?.findOutputSlot?.(name) ?? -1;
  return slot < 0 ? [] : (node.getOutputNodes?.(slot) ?? []);
}

/** Whether ``node``'s input ``name`` is connected. */
export function connected(node, name) {
  const slot = node?.findInputSlot?.(name) ?? -1;
  return slot >= 0 && node.isInputConnected?.(slot) === true;
}

/** The node's type as its Python class names it (a node inside a subgraph keeps it too). */
export function typeOf(node) {
  return node?.comfyClass ?? node?.type;
}
