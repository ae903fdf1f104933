"""Run a validated prompt: topological order, outputs cached by their inputs, hooks, interruption.

A node's cache key is its class, its literal inputs, the keys of the nodes it links to (and which
output), and what its `changed` function reports (the files it reads), so a node runs again only when
something it depends on changed; hidden inputs (the prompt itself, the workflow) are not part of it.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field

from PIL import Image

from lienzo.errors import LienzoError
from lienzo.graph.environment import GraphEnvironment
from lienzo.graph.errors import ExecutionInterrupted, NodeExecutionError
from lienzo.graph.registry import NodeType, node_types
from lienzo.graph.validation import is_link, needed_nodes, topological_order, validate_prompt


class ExecutionHooks:
    """What a run reports; every method does nothing here, and a server subclasses the ones it needs."""

    def execution_start(self, prompt_id: str) -> None:
        """The run began (after validation)."""

    def execution_cached(self, prompt_id: str, node_ids: list[str]) -> None:
        """These nodes' outputs come from the cache; they do not run."""

    def executing(self, prompt_id: str, node_id: str | None) -> None:
        """A node starts running; None once the whole run finished."""

    def progress(self, prompt_id: str, node_id: str, value: int, maximum: int) -> None:
        """A node made progress (sampler steps: value of maximum)."""

    def preview(self, prompt_id: str, node_id: str, image: Image.Image) -> None:
        """A fast preview of the image a node is making (a sampler's current estimate)."""

    def executed(self, prompt_id: str, node_id: str, ui_output: dict) -> None:
        """An output node finished (or was cached) with this UI output, e.g. {"images": [...]}."""


def wants_previews(hooks: ExecutionHooks) -> bool:
    """True when the hooks override `preview` (previews cost a little work, so only then are they made)."""
    return type(hooks).preview is not ExecutionHooks.preview


@dataclass
class NodeContext:
    """What a running node may use besides its inputs: the environment, its ids, the prompt and workflow
    (hidden inputs), and progress, preview and interruption through the run's hooks."""

    environment: GraphEnvironment
    prompt_id: str
    node_id: str
    class_type: str
    prompt: dict
    extra_pnginfo: dict = field(default_factory=dict)
    hooks: ExecutionHooks = field(default_factory=ExecutionHooks)
    interrupt: threading.Event | None = None

    def check_interrupt(self) -> None:
        """Raise ExecutionInterrupted when the run's interrupt event is set."""
        if self.interrupt is not None and self.interrupt.is_set():
            raise ExecutionInterrupted(self.node_id)

    def progress(self, value: int, maximum: int) -> None:
        self.hooks.progress(self.prompt_id, self.node_id, value, maximum)

    @property
    def previews(self) -> bool:
        """Whether anyone listens to previews."""
        return wants_previews(self.hooks)

    def preview(self, image: Image.Image) -> None:
        self.hooks.preview(self.prompt_id, self.node_id, image)


def node_keys(prompt: dict, nodes: list[str], environment: GraphEnvironment) -> dict[str, str]:
    """Each node's cache key (sha256 of its class, literal inputs, source keys and `changed` value);
    `nodes` must be in topological order."""
    types = node_types()
    keys: dict[str, str] = {}
    for node_id in nodes:
        node = prompt[node_id]
        node_type = types[node["class_type"]]
        inputs = node.get("inputs", {})
        parts = {}
        for name, value in sorted(inputs.items()):
            if node_type.input(name) is None:
                continue
            parts[name] = ["link", keys[str(value[0])], value[1]] if is_link(value) else value
        changed = None if node_type.changed is None else node_type.changed(environment, inputs)
        text = json.dumps([node["class_type"], parts, changed], sort_keys=True, default=str)
        keys[node_id] = hashlib.sha256(text.encode()).hexdigest()
    return keys


def node_arguments(node_type: NodeType, inputs: dict, outputs: dict[str, tuple]) -> dict:
    """The keyword arguments a node runs with: linked values from `outputs`, literals cast to their type."""
    arguments = {}
    for item in node_type.inputs:
        if item.name not in inputs:
            continue
        value = inputs[item.name]
        if is_link(value):
            arguments[item.name] = outputs[str(value[0])][value[1]]
        elif item.type == "INT":
            arguments[item.name] = int(value)
        elif item.type == "FLOAT":
            arguments[item.name] = float(value)
        else:
            arguments[item.name] = value
    return arguments


@dataclass
class CachedNode:
    """A node's outputs and UI output, kept between runs under its cache key."""

    outputs: tuple
    ui: dict | None


class Executor:
    """Runs prompts in one environment, keeping node outputs between runs (the last run's nodes)."""

    def __init__(self, environment: GraphEnvironment):
        self.environment = environment
        self._cache: dict[str, CachedNode] = {}
        self._lock = threading.Lock()

    def clear_cache(self) -> None:
        """Forget every cached output (the next run runs every node)."""
        with self._lock:
            self._cache.clear()

    def execute(
        self,
        prompt: dict,
        *,
        prompt_id: str,
        hooks: ExecutionHooks | None = None,
        interrupt: threading.Event | None = None,
        extra_pnginfo: dict | None = None,
    ) -> dict[str, dict]:
        """Validate, then run the nodes the output nodes need; returns node_id -> UI output.

        `extra_pnginfo` (ComfyUI's extra_data.extra_pnginfo, e.g. {"workflow": ...}) goes into saved PNGs.
        Raises PromptError, ExecutionInterrupted or NodeExecutionError.
        """
        hooks = hooks or ExecutionHooks()
        outputs_to_run = validate_prompt(prompt, self.environment)
        with self._lock:
            return self._run(prompt, prompt_id, outputs_to_run, hooks, interrupt, extra_pnginfo or {})

    def _run(self, prompt, prompt_id, outputs_to_run, hooks, interrupt, extra_pnginfo) -> dict[str, dict]:
        order, _ = topological_order(prompt, needed_nodes(prompt, outputs_to_run))
        keys = node_keys(prompt, order, self.environment)
        hooks.execution_start(prompt_id)
        cached = [node_id for node_id in order if keys[node_id] in self._cache]
        hooks.execution_cached(prompt_id, cached)
        kept: dict[str, CachedNode] = {}
        values: dict[str, tuple] = {}
        ui_outputs: dict[str, dict] = {}
        types = node_types()
        try:
            for node_id in order:
                if interrupt is not None and interrupt.is_set():
                    raise ExecutionInterrupted(node_id)
                entry = self._cache.get(keys[node_id])
                if entry is None:
                    hooks.executing(prompt_id, node_id)
                    node = prompt[node_id]
                    context = NodeContext(
                        self.environment,
                        prompt_id,
                        node_id,
                        node["class_type"],
                        prompt,
                        extra_pnginfo,
                        hooks,
                        interrupt,
                    )
                    entry = run_node(types[node["class_type"]], context, node.get("inputs", {}), values)
                kept[keys[node_id]] = entry
                values[node_id] = entry.outputs
                if entry.ui is not None:
                    ui_outputs[node_id] = entry.ui
                    hooks.executed(prompt_id, node_id, entry.ui)
        except BaseException:
            self._cache.update(kept)
            raise
        self._cache = kept
        hooks.executing(prompt_id, None)
        return ui_outputs


def run_node(node_type: NodeType, context: NodeContext, inputs: dict, values: dict[str, tuple]) -> CachedNode:
    """Run one node; a failure becomes NodeExecutionError naming it (interruptions pass through)."""
    arguments = node_arguments(node_type, inputs, values)
    for name in node_type.hidden:
        arguments[name] = {"prompt": context.prompt, "extra_pnginfo": context.extra_pnginfo}.get(
            name, context.node_id
        )
    try:
        result = node_type.run(context, **arguments)
    except ExecutionInterrupted:
        raise
    except LienzoError as error:
        raise NodeExecutionError(context.node_id, context.class_type, str(error)) from error
    except Exception as error:
        message = f"{type(error).__name__}: {error}"
        raise NodeExecutionError(context.node_id, context.class_type, message) from error
    if isinstance(result, dict):
        return CachedNode(tuple(result.get("result", ())), result.get("ui"))
    return CachedNode(tuple(result), None)
