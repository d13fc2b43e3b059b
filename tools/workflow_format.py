"""Convert ComfyUI's UI-format workflows (what users drag in) to API format (what /prompt takes).

Does what the frontend's "save (API)" does for plain graphs: widget values are matched to
widget inputs in the order ``/object_info`` lists them, links become ``[node_id, slot]``,
note nodes are dropped. Used to check that each preset and its API twin say the same.
"""

from __future__ import annotations

from typing import Any

# Frontend-only nodes: they never reach the server.
VIRTUAL_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
_WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _is_widget(spec: list[Any]) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in _WIDGET_TYPES


def widget_names(node_info: dict[str, Any]) -> list[tuple[str, bool]]:
    """(name, has a control_after_generate value) for each widget input, in widget order."""
    names = []
    inputs = node_info["input"]
    order = node_info.get("input_order", {k: list(v) for k, v in inputs.items()})
    for section in ("required", "optional"):
        for name in order.get(section, []):
            spec = inputs[section][name]
            if _is_widget(spec):
                options = spec[1] if len(spec) > 1 else {}
                names.append((name, bool(options.get("control_after_generate"))))
    return names


def ui_to_api(workflow: dict[str, Any], object_info: dict[str, Any]) -> dict[str, Any]:
    """The API-format prompt of a UI-format workflow."""
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt: dict[str, Any] = {}
    for node in sorted(workflow["nodes"], key=lambda n: n["id"]):
        if node["type"] in VIRTUAL_NODES or node.get("mode", 0) != 0:
            continue
        info = object_info[node["type"]]
        inputs: dict[str, Any] = {}
        values = list(node.get("widgets_values", []))
        position = 0
        for name, has_control in widget_names(info):
            if position < len(values):
                inputs[name] = values[position]
            position += 2 if has_control else 1
        for socket in node.get("inputs", []):
            if socket.get("link") is not None:
                link = links[socket["link"]]
                inputs[socket["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {
            "class_type": node["type"],
            "inputs": inputs,
            "_meta": {"title": node.get("title") or info.get("display_name", node["type"])},
        }
    return prompt
