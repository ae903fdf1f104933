"""Validate a whole API-format prompt before anything runs (ComfyUI's checks and error JSON).

A prompt is {node_id: {"class_type", "inputs": {name: value or [source_id, output_index]}}}. Every
node the output nodes depend on is checked: its type is known, every required input is present, a
link points at an existing node's output of the right type, a literal has the right type, lies in range
and (for a combo) is one of the choices; and the graph has no cycle.
"""

from __future__ import annotations

from collections.abc import Iterable

from lienzo.errors import LienzoError
from lienzo.graph.environment import GraphEnvironment
from lienzo.graph.errors import PromptError
from lienzo.graph.registry import Input, NodeType, node_types


def is_link(value: object) -> bool:
    """True for a link [source_node_id, output_index]."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def prompt_error(kind: str, message: str, details: str = "", extra: dict | None = None) -> PromptError:
    """A PromptError whose payload has only a top-level error (no node errors)."""
    return PromptError(
        {
            "error": {"type": kind, "message": message, "details": details, "extra_info": extra or {}},
            "node_errors": {},
        }
    )


def input_error(kind: str, message: str, details: str, item: Input | None, name: str, value=None) -> dict:
    """One entry of a node's `errors` list."""
    extra = {"input_name": name}
    if item is not None:
        extra["input_config"] = [item.type, dict(item.options)]
    if value is not None:
        extra["received_value"] = value
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def check_structure(prompt: object, types: dict[str, NodeType]) -> None:
    """Refuse a prompt that is not a dict of nodes with known class types (ComfyUI's top-level errors)."""
    if not isinstance(prompt, dict) or not prompt:
        raise prompt_error("no_prompt", "No prompt provided", "the prompt must be a non-empty JSON object")
    for node_id, node in prompt.items():
        meta = node.get("_meta") if isinstance(node, dict) else None
        title = meta.get("title") if isinstance(meta, dict) else None
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            raise prompt_error(
                "missing_node_type",
                f"Node '{title or f'ID #{node_id}'}' has no class_type. The workflow may be corrupted.",
                f"Node ID '#{node_id}'",
                {"node_id": node_id, "class_type": None, "node_title": title},
            )
        if node["class_type"] not in types:
            raise prompt_error(
                "missing_node_type",
                f"Node '{title or node['class_type']}' not found. lienzo has no node of this type.",
                f"Node ID '#{node_id}'",
                {"node_id": node_id, "class_type": node["class_type"], "node_title": title},
            )
        if not isinstance(node.get("inputs", {}), dict):
            raise prompt_error("invalid_prompt", "Node inputs must be an object", f"Node ID '#{node_id}'")


def check_literal(item: Input, name: str, value, environment: GraphEnvironment) -> dict | None:
    """The error of a literal input value, or None when it is valid."""
    kind = item.type
    if kind in ("INT", "FLOAT"):
        try:
            if isinstance(value, bool) or isinstance(value, str | list | dict) or value is None:
                raise TypeError(f"{type(value).__name__} is not a number")
            number = int(value) if kind == "INT" else float(value)
            if kind == "INT" and number != value:
                raise ValueError("not a whole number")
        except (TypeError, ValueError, OverflowError) as error:
            message = f"Failed to convert an input value to a {kind} value"
            return input_error("invalid_input_type", message, f"{name}, {value}, {error}", item, name, value)
        low, high = item.options.get("min"), item.options.get("max")
        if low is not None and number < low:
            message = f"Value {value} smaller than min of {low}"
            return input_error("value_smaller_than_min", message, name, item, name, value)
        if high is not None and number > high:
            message = f"Value {value} bigger than max of {high}"
            return input_error("value_bigger_than_max", message, name, item, name, value)
        return None
    if kind == "STRING" and not isinstance(value, str):
        message = "Failed to convert an input value to a STRING value"
        return input_error("invalid_input_type", message, f"{name}, {value}", item, name, value)
    if kind == "BOOLEAN" and not isinstance(value, bool):
        message = "Failed to convert an input value to a BOOLEAN value"
        return input_error("invalid_input_type", message, f"{name}, {value}", item, name, value)
    if kind == "COMBO":
        return check_combo(item, name, value, environment)
    return None


def check_combo(item: Input, name: str, value, environment: GraphEnvironment) -> dict | None:
    """The error of a combo value: not a string, or not accepted by the input's `accept` (asked first, so
    a folder is listed only for the message) nor one of its choices."""
    reason = None
    if isinstance(value, str) and item.accept is not None:
        reason = item.accept(environment, value)
        if reason is None:
            return None
    choices = item.choice_list(environment)
    if isinstance(value, str) and value in choices and item.accept is None:
        return None
    shown = choices if len(choices) <= 20 else [*choices[:20], "..."]
    details = f"{name}: '{value}' not in {shown}" + (f" ({reason})" if reason else "")
    return input_error("value_not_in_list", "Value not in list", details, item, name, value)


def check_node(node_id: str, prompt: dict, types: dict[str, NodeType], environment: GraphEnvironment) -> list:
    """Every input error of one node."""
    node = prompt[node_id]
    node_type = types[node["class_type"]]
    inputs = node.get("inputs", {})
    errors = []
    for item in node_type.inputs:
        name = item.name
        if name not in inputs:
            if not item.optional:
                errors.append(
                    input_error("required_input_missing", "Required input is missing", name, item, name)
                )
            continue
        value = inputs[name]
        if is_link(value):
            errors.extend(check_link(item, name, value, prompt, types))
        elif item.type not in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
            message = f"Input {name} must be linked to a {item.type} output"
            errors.append(input_error("bad_linked_input", message, name, item, name, value))
        else:
            error = check_literal(item, name, value, environment)
            if error is not None:
                errors.append(error)
    return errors


def check_link(item: Input, name: str, value: list, prompt: dict, types: dict[str, NodeType]) -> list:
    """The errors of a linked input: a missing source, an output index out of range, a type mismatch."""
    source, index = str(value[0]), value[1]
    if source not in prompt:
        message = "Bad linked input, the source node does not exist"
        return [input_error("bad_linked_input", message, f"{name}: node {source}", item, name, value)]
    outputs = types[prompt[source]["class_type"]].outputs
    if not 0 <= index < len(outputs):
        message = "Bad linked input, the source node has no such output"
        return [
            input_error(
                "bad_linked_input", message, f"{name}: output {index} of node {source}", item, name, value
            )
        ]
    received = outputs[index]
    expected = "COMBO" if item.type == "COMBO" else item.type
    if received != expected and "*" not in (received, expected):
        details = f"{name}, received_type({received}) mismatch input_type({expected})"
        return [
            input_error(
                "return_type_mismatch",
                "Return type mismatch between linked nodes",
                details,
                item,
                name,
                value,
            )
        ]
    return []


def checked_node(
    node_id: str, prompt: dict, types: dict[str, NodeType], environment: GraphEnvironment
) -> list:
    """`check_node`, with a lienzo error raised while checking reported as the node's error."""
    try:
        return check_node(node_id, prompt, types, environment)
    except LienzoError as error:
        return [
            input_error("exception_during_validation", "Exception when validating node", str(error), None, "")
        ]


def upstream(prompt: dict, node_id: str) -> Iterable[str]:
    """The ids of the nodes `node_id` links to directly."""
    for value in prompt[node_id].get("inputs", {}).values():
        if is_link(value) and str(value[0]) in prompt:
            yield str(value[0])


def needed_nodes(prompt: dict, outputs: list[str]) -> list[str]:
    """Every node the outputs depend on (the outputs included), in discovery order."""
    seen: dict[str, None] = {}
    stack = list(reversed(outputs))
    while stack:
        node_id = stack.pop()
        if node_id in seen:
            continue
        seen[node_id] = None
        stack.extend(upstream(prompt, node_id))
    return list(seen)


def topological_order(prompt: dict, nodes: list[str]) -> tuple[list[str], list[str]]:
    """(the nodes in an order where every source runs before its users, the nodes that lie on a cycle)."""
    chosen = set(nodes)
    waiting = {node: {s for s in upstream(prompt, node) if s in chosen} for node in nodes}
    order: list[str] = []
    ready = [node for node in nodes if not waiting[node]]
    while ready:
        node = ready.pop(0)
        order.append(node)
        for other in nodes:
            if node in waiting[other]:
                waiting[other].discard(node)
                if not waiting[other]:
                    ready.append(other)
    left = [node for node in nodes if node not in order]
    return order, [node for node in left if node in needed_nodes(prompt, list(upstream(prompt, node)))]


def validate_prompt(prompt: dict, environment: GraphEnvironment) -> list[str]:
    """The output node ids to execute; a PromptError with ComfyUI's error JSON when anything is wrong."""
    types = node_types()
    check_structure(prompt, types)
    outputs = [node_id for node_id, node in prompt.items() if types[node["class_type"]].output_node]
    if not outputs:
        raise prompt_error(
            "prompt_no_outputs", "Prompt has no outputs", "add an output node such as SaveImage"
        )
    node_errors: dict[str, dict] = {}

    def add(node_id: str, errors: list, output: str) -> None:
        entry = node_errors.setdefault(
            node_id, {"errors": [], "dependent_outputs": [], "class_type": prompt[node_id]["class_type"]}
        )
        entry["errors"] = errors
        if output not in entry["dependent_outputs"]:
            entry["dependent_outputs"].append(output)

    checked: dict[str, list] = {}
    cycle = {
        "type": "dependency_cycle",
        "message": "Dependency cycle detected",
        "details": "",
        "extra_info": {},
    }
    for output in outputs:
        nodes = needed_nodes(prompt, [output])
        _, cyclic = topological_order(prompt, nodes)
        for node_id in nodes:
            if node_id not in checked:
                checked[node_id] = checked_node(node_id, prompt, types, environment)
            errors = checked[node_id] + (
                [{**cycle, "details": f"node {node_id}"}] if node_id in cyclic else []
            )
            if errors:
                add(node_id, errors, output)
    if node_errors:
        lines = [
            f"{entry['class_type']} {node_id}: {error['message']} {error['details']}".strip()
            for node_id, entry in node_errors.items()
            for error in entry["errors"]
        ]
        payload = {
            "error": {
                "type": "prompt_outputs_failed_validation",
                "message": "Prompt outputs failed validation",
                "details": "\n".join(lines),
                "extra_info": {},
            },
            "node_errors": node_errors,
        }
        raise PromptError(payload)
    return outputs
