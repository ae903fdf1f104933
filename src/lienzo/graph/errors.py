"""The graph engine's errors: a refused prompt (ComfyUI's error JSON), an interrupted run, a failed node."""

from __future__ import annotations

from lienzo.errors import LienzoError


class PromptError(LienzoError):
    """A prompt that failed validation; `payload` is ComfyUI's error JSON ({"error", "node_errors"})."""

    def __init__(self, payload: dict):
        self.payload = payload
        super().__init__(describe_payload(payload))


class ExecutionInterrupted(LienzoError):
    """The run was interrupted between nodes or between sampler steps."""

    def __init__(self, node_id: str | None = None):
        self.node_id = node_id
        where = f" at node {node_id}" if node_id is not None else ""
        super().__init__(f"the workflow was interrupted{where}; queue it again to finish it")


class NodeExecutionError(LienzoError):
    """A node failed while running; the message says which node and why."""

    def __init__(self, node_id: str, class_type: str, message: str):
        self.node_id = node_id
        self.class_type = class_type
        self.message = message
        super().__init__(f"node {node_id} ({class_type}) failed: {message}")


def describe_payload(payload: dict) -> str:
    """The error JSON as readable lines: the top-level message, then one line per input error."""
    error = payload.get("error", {})
    lines = [error.get("message", "invalid prompt")]
    if error.get("details") and not payload.get("node_errors"):
        lines[0] += f" ({error['details']})"
    for node_id, entry in payload.get("node_errors", {}).items():
        for item in entry["errors"]:
            details = f": {item['details']}" if item.get("details") else ""
            lines.append(f"  node {node_id} ({entry['class_type']}): {item['message']}{details}")
    return "\n".join(lines)
