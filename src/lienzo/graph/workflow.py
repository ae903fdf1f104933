"""Workflows in: ComfyUI's API format, its UI format (nodes, links, widget values) and PNGs carrying either.

The UI format keeps each node's widget values as a list in the order of its widget inputs; an INT
input named seed or noise_seed (or marked control_after_generate) is followed by its "control after
generate" value (fixed, increment, randomize), which is not an input; a widget a workflow saved by an
older version lacks takes its default, as the frontend gives it. Links are
[id, from_node, from_slot, to_node, to_slot, type]. Reroute, primitive and bypassed nodes are resolved
to the value or output they pass on; muted nodes and notes are left out.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from lienzo.errors import InvalidArgumentError
from lienzo.graph.registry import WIDGET_TYPES, NodeType, node_types

MUTED, BYPASSED = 2, 4
"""LiteGraph node modes the frontend leaves out of the prompt (a bypassed node passes its inputs on)."""
NOTE_TYPES = {"Note", "MarkdownNote"}
PASS_THROUGH = "Reroute"
PRIMITIVE = "PrimitiveNode"
CONTROL_NAMES = ("seed", "noise_seed")
"""INT inputs the frontend follows with a control_after_generate widget."""


def load_workflow(source: dict | str | Path) -> dict:
    """The API-format prompt of a workflow given as a dict, a JSON file or a PNG with a `prompt` or
    `workflow` chunk (API format taken as is, UI format converted)."""
    if isinstance(source, dict):
        return prompt_from_json(source, "the workflow")
    path = Path(source)
    if not path.is_file():
        raise InvalidArgumentError(f"workflow {path} does not exist; give a .json workflow or a PNG")
    if path.suffix.lower() == ".png":
        return prompt_from_png(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidArgumentError(f"{path} is not JSON ({error}); give a ComfyUI workflow") from None
    return prompt_from_json(data, str(path))


def prompt_from_png(path: Path) -> dict:
    """The prompt of a PNG's `prompt` chunk (API format), else its `workflow` chunk (UI format)."""
    try:
        with Image.open(path) as image:
            image.load()
            chunks = dict(image.info)
    except (UnidentifiedImageError, OSError) as error:
        raise InvalidArgumentError(f"cannot read {path} as a PNG: {error}") from None
    for key in ("prompt", "workflow"):
        if isinstance(chunks.get(key), str):
            try:
                return prompt_from_json(json.loads(chunks[key]), f"{path}'s {key} chunk")
            except json.JSONDecodeError:
                continue
    raise InvalidArgumentError(
        f"{path} carries no ComfyUI prompt or workflow; give a PNG saved by a graph run"
    )


def ui_workflow(source: str | Path) -> dict | None:
    """The UI-format workflow a JSON file or a PNG's `workflow` chunk holds (to save with the images), or
    None when the source holds only an API-format prompt."""
    path = Path(source)
    try:
        if path.suffix.lower() == ".png":
            with Image.open(path) as image:
                image.load()
                data = json.loads(image.info.get("workflow", "null"))
        else:
            data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnidentifiedImageError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("nodes"), list) else None


def prompt_from_json(data: object, what: str) -> dict:
    """API format as is (a {"prompt": ...} request body unwrapped), UI format converted."""
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict) and "nodes" not in data:
        data = data["prompt"]
    if isinstance(data, dict) and isinstance(data.get("nodes"), list):
        try:
            return ui_to_prompt(data)
        except (KeyError, TypeError, IndexError, AttributeError) as error:
            raise InvalidArgumentError(
                f"{what} is a malformed UI-format workflow ({type(error).__name__}: {error}); "
                "save it again from ComfyUI, or export it in API format"
            ) from None
    if (
        isinstance(data, dict)
        and data
        and all(isinstance(node, dict) and "class_type" in node for node in data.values())
    ):
        return {str(node_id): node for node_id, node in data.items()}
    raise InvalidArgumentError(f"{what} is neither an API-format prompt nor a UI-format workflow")


def widget_names(node_type: NodeType) -> list[str]:
    """The names of a node type's widget values in the UI format, the control-after-generate slots as None."""
    names: list[str | None] = []
    for item in node_type.inputs:
        if item.type not in WIDGET_TYPES or item.options.get("forceInput"):
            continue
        names.append(item.name)
        if item.type == "INT" and (item.name in CONTROL_NAMES or item.options.get("control_after_generate")):
            names.append(None)
    return names


class UiGraph:
    """A UI-format workflow's nodes and links, with sources resolved through reroutes, primitives and
    bypassed nodes."""

    def __init__(self, workflow: dict):
        self.nodes = {str(node["id"]): node for node in workflow["nodes"]}
        self.links = {}
        for link in workflow.get("links", []):
            if isinstance(link, dict):
                link = [
                    link["id"],
                    link["origin_id"],
                    link["origin_slot"],
                    link["target_id"],
                    link["target_slot"],
                    link["type"],
                ]
            self.links[link[0]] = link

    def source(self, link_id: int, depth: int = 0) -> list | tuple | None:
        """[node_id, slot] feeding a link, ("value", v) for a primitive, or None when nothing does."""
        link = self.links.get(link_id)
        if link is None or depth > len(self.nodes):
            return None
        node = self.nodes.get(str(link[1]))
        if node is None:
            return None
        if node.get("type") == PRIMITIVE:
            values = node.get("widgets_values") or []
            return ("value", values[0]) if values else None
        if node.get("type") == PASS_THROUGH or node.get("mode") == BYPASSED:
            wanted = link[5] if node.get("type") != PASS_THROUGH else None
            for item in node.get("inputs", []):
                if item.get("link") is not None and (wanted is None or item.get("type") == wanted):
                    return self.source(item["link"], depth + 1)
            return None
        return [str(link[1]), link[2]]


def ui_to_prompt(workflow: dict) -> dict:
    """ComfyUI's API format from its UI format, for the node types lienzo knows."""
    types = node_types()
    graph = UiGraph(workflow)
    prompt = {}
    for node_id, node in graph.nodes.items():
        kind = node.get("type")
        if kind in NOTE_TYPES or kind in (PASS_THROUGH, PRIMITIVE) or node.get("mode") in (MUTED, BYPASSED):
            continue
        inputs = {}
        node_type = types.get(kind)
        values = node.get("widgets_values")
        if node_type is not None and isinstance(values, dict):
            inputs.update({name: values[name] for name in widget_names(node_type) if name in values})
        elif node_type is not None and isinstance(values, list):
            for name, value in zip(widget_names(node_type), values, strict=False):
                if name is not None:
                    inputs[name] = value
        if node_type is not None:
            for item in node_type.inputs:
                if item.type in WIDGET_TYPES and item.name not in inputs and "default" in item.options:
                    inputs[item.name] = item.options["default"]
        for item in node.get("inputs", []):
            if item.get("link") is None:
                continue
            source = graph.source(item["link"])
            if isinstance(source, tuple):
                inputs[item["name"]] = source[1]
            elif source is not None:
                inputs[item["name"]] = source
        prompt[node_id] = {
            "class_type": kind,
            "inputs": inputs,
            "_meta": {"title": node.get("title") or kind},
        }
    if not prompt:
        raise InvalidArgumentError("the workflow has no nodes to run")
    return prompt


def parse_setting(text: str) -> tuple[str, str, object]:
    """(node id, input name, value) of a NODE.INPUT=VALUE override; the value is JSON when it parses."""
    target, separator, raw = text.partition("=")
    node_id, dot, name = target.partition(".")
    if not separator or not dot or not node_id or not name:
        raise InvalidArgumentError(
            f"--set {text!r}: write NODE.INPUT=VALUE, e.g. 3.seed=42 or 6.text='a red circle'"
        )
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return node_id, name, value


def apply_settings(prompt: dict, settings: list[str]) -> dict:
    """A copy of the prompt with each NODE.INPUT=VALUE override applied; an unknown node is refused."""
    updated = {node_id: {**node, "inputs": dict(node.get("inputs", {}))} for node_id, node in prompt.items()}
    for text in settings:
        node_id, name, value = parse_setting(text)
        if node_id not in updated:
            raise InvalidArgumentError(
                f"--set {text!r}: the workflow has no node {node_id}; its nodes: {', '.join(updated)}"
            )
        updated[node_id]["inputs"][name] = value
    return updated
