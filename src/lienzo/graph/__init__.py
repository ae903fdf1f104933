"""The node-graph engine: ComfyUI-compatible nodes over lienzo's pipeline steps, validation, execution."""

from __future__ import annotations

from lienzo.graph.environment import GraphEnvironment
from lienzo.graph.errors import ExecutionInterrupted, NodeExecutionError, PromptError
from lienzo.graph.executor import ExecutionHooks, Executor
from lienzo.graph.registry import NODE_TYPES, Input, NodeType, node_types, object_info, register
from lienzo.graph.validation import validate_prompt
from lienzo.graph.workflow import apply_settings, load_workflow

__all__ = [
    "NODE_TYPES",
    "ExecutionHooks",
    "ExecutionInterrupted",
    "Executor",
    "GraphEnvironment",
    "Input",
    "NodeExecutionError",
    "NodeType",
    "PromptError",
    "apply_settings",
    "load_workflow",
    "node_types",
    "object_info",
    "register",
    "validate_prompt",
]
