"""The node registry: typed sockets, node types with ComfyUI's names and specs, and `/object_info`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lienzo.graph.environment import GraphEnvironment

SOCKET_TYPES = (
    "MODEL",
    "CLIP",
    "VAE",
    "CONDITIONING",
    "LATENT",
    "IMAGE",
    "MASK",
    "CONTROL_NET",
)
"""Types that only travel along links."""
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
"""Types that may be given as literal values in a prompt (COMBO: one of a list of strings)."""
HIDDEN_INPUTS = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO", "unique_id": "UNIQUE_ID"}
"""Hidden inputs a node may ask for, filled by the executor (ComfyUI's names)."""

Choices = Callable[[GraphEnvironment], list[str]]


@dataclass(frozen=True)
class Input:
    """One input of a node type: name, type (a socket or widget type), ComfyUI's option dict, and for a
    combo the static or environment-dependent choices. `accept` widens what validation takes for a
    combo (a model name with its suffix, say) and returns None or the reason it refuses a value."""

    name: str
    type: str
    options: dict[str, Any] = field(default_factory=dict)
    choices: tuple[str, ...] | Choices | None = None
    optional: bool = False
    accept: Callable[[GraphEnvironment, str], str | None] | None = None

    def choice_list(self, environment: GraphEnvironment) -> list[str]:
        """The combo's choices in this environment."""
        if callable(self.choices):
            return list(self.choices(environment))
        return list(self.choices or ())

    def spec(self, environment: GraphEnvironment) -> list:
        """ComfyUI's input spec: [TYPE, options] or, for a combo, [[choices...], options]."""
        if self.type == "COMBO":
            return [self.choice_list(environment), dict(self.options)]
        return [self.type, dict(self.options)] if self.options else [self.type]


@dataclass(frozen=True)
class NodeType:
    """A registered node: ComfyUI's class name and schema, and the function that runs it.

    `run(context, **inputs)` returns a tuple with one value per output; an output node may instead return
    {"ui": {...}, "result": (...)}. `changed(environment, inputs)` returns a value that changes when the
    files the node reads change (ComfyUI's IS_CHANGED), part of its cache key."""

    name: str
    run: Callable[..., Any]
    inputs: tuple[Input, ...]
    outputs: tuple[str, ...] = ()
    output_names: tuple[str, ...] | None = None
    category: str = "lienzo"
    display_name: str | None = None
    description: str = ""
    output_node: bool = False
    hidden: tuple[str, ...] = ()
    changed: Callable[[GraphEnvironment, dict], Any] | None = None
    python_module: str = "nodes"

    def input(self, name: str) -> Input | None:
        return next((item for item in self.inputs if item.name == name), None)

    def info(self, environment: GraphEnvironment) -> dict:
        """This node's `/object_info` entry."""
        required = {item.name: item.spec(environment) for item in self.inputs if not item.optional}
        optional = {item.name: item.spec(environment) for item in self.inputs if item.optional}
        inputs: dict[str, dict] = {"required": required}
        if optional:
            inputs["optional"] = optional
        if self.hidden:
            inputs["hidden"] = {name: HIDDEN_INPUTS[name] for name in self.hidden}
        order = {"required": list(required)}
        if optional:
            order["optional"] = list(optional)
        return {
            "input": inputs,
            "input_order": order,
            "output": list(self.outputs),
            "output_is_list": [False] * len(self.outputs),
            "output_name": list(self.output_names or self.outputs),
            "name": self.name,
            "display_name": self.display_name or self.name,
            "description": self.description,
            "python_module": self.python_module,
            "category": self.category,
            "output_node": self.output_node,
        }


NODE_TYPES: dict[str, NodeType] = {}
"""Every registered node type by ComfyUI class name."""


def register(node: NodeType) -> NodeType:
    """Add a node type to the registry (a name registered twice is a programming error)."""
    if node.name in NODE_TYPES:
        raise ValueError(f"node type {node.name} is registered twice")
    for item in node.inputs:
        if item.type not in SOCKET_TYPES + WIDGET_TYPES:
            raise ValueError(f"{node.name}.{item.name}: unknown input type {item.type}")
    NODE_TYPES[node.name] = node
    return node


def node_types() -> dict[str, NodeType]:
    """The registry with lienzo's built-in nodes loaded."""
    import lienzo.graph.nodes  # noqa: F401  (registers the built-in nodes on import)

    return NODE_TYPES


def object_info(environment: GraphEnvironment) -> dict:
    """ComfyUI's `/object_info` JSON for every registered node, model lists read from the library."""
    return {name: node.info(environment) for name, node in node_types().items()}
