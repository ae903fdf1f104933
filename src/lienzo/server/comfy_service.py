"""ComfyUI prompts on the queue's worker: the graph Executor runs them, its hooks become `/ws` messages.

Message order follows ComfyUI: execution_start, execution_cached, then per node executing / progress /
executed, then execution_success (or execution_error / execution_interrupted); the closing
`executing {node: null}` is sent after the history entry is written and the queue status broadcast.
"""

from __future__ import annotations

import traceback

from PIL import Image

from lienzo.graph import ExecutionHooks, ExecutionInterrupted, Executor, GraphEnvironment, NodeExecutionError
from lienzo.server.events import Hub
from lienzo.server.jobs import Job, now_ms
from lienzo.server.worker import JobInterrupted, Outcome, Worker

PROMPT_KIND = "prompt"


class SocketHooks(ExecutionHooks):
    """Forwards a run's events to the prompt's client and keeps ComfyUI's history `messages`."""

    def __init__(self, hub: Hub, client_id: str | None) -> None:
        self.hub, self.client_id = hub, client_id
        self.messages: list = []
        self.executed_nodes: list[str] = []
        self.current: str | None = None

    def note(self, kind: str, data: dict, broadcast: bool = False) -> None:
        """Send a timestamped event and keep it for the history."""
        data = {**data, "timestamp": now_ms()}
        self.messages.append([kind, data])
        self.hub.send(kind, data, None if broadcast else self.client_id)

    def execution_start(self, prompt_id: str) -> None:
        self.note("execution_start", {"prompt_id": prompt_id})

    def execution_cached(self, prompt_id: str, node_ids: list[str]) -> None:
        self.executed_nodes += node_ids
        self.note("execution_cached", {"nodes": list(node_ids), "prompt_id": prompt_id})

    def executing(self, prompt_id: str, node_id: str | None) -> None:
        if node_id is None:
            return
        self.current = node_id
        self.hub.send(
            "executing", {"node": node_id, "display_node": node_id, "prompt_id": prompt_id}, self.client_id
        )

    def progress(self, prompt_id: str, node_id: str, value: int, maximum: int) -> None:
        self.hub.send(
            "progress",
            {"value": value, "max": maximum, "prompt_id": prompt_id, "node": node_id},
            self.client_id,
        )

    def executed(self, prompt_id: str, node_id: str, ui_output: dict) -> None:
        self.executed_nodes.append(node_id)
        self.hub.send(
            "executed",
            {"node": node_id, "display_node": node_id, "output": ui_output, "prompt_id": prompt_id},
            self.client_id,
        )


class PreviewHooks(SocketHooks):
    """SocketHooks that also send the sampler's previews (used when the prompt's client is connected, since
    the graph makes previews only for hooks that take them)."""

    def preview(self, prompt_id: str, node_id: str, image: Image.Image) -> None:
        self.hub.send_preview(image, self.client_id)


class ComfyService:
    """Runs queued prompts with one Executor (so unchanged nodes stay cached between prompts)."""

    def __init__(self, environment: GraphEnvironment, hub: Hub) -> None:
        self.environment, self.hub = environment, hub
        self.executor = Executor(environment)

    def run(self, job: Job, worker: Worker) -> Outcome:
        request = job.request
        listening = job.client_id is not None and job.client_id in self.hub.sockets
        hooks = (PreviewHooks if listening else SocketHooks)(self.hub, job.client_id)
        extra = request.get("extra_data", {}).get("extra_pnginfo") or {}
        try:
            outputs = self.executor.execute(
                request["prompt"],
                prompt_id=job.id,
                hooks=hooks,
                interrupt=worker.interrupt,
                extra_pnginfo=extra,
            )
        except ExecutionInterrupted as error:
            hooks.note(
                "execution_interrupted",
                {
                    "prompt_id": job.id,
                    "node_id": error.node_id,
                    "node_type": _class_type(request, error.node_id),
                    "executed": hooks.executed_nodes,
                },
                broadcast=True,
            )
            raise _with_messages(JobInterrupted(str(error)), hooks.messages) from error
        except NodeExecutionError as error:
            hooks.note(
                "execution_error",
                {
                    "prompt_id": job.id,
                    "node_id": error.node_id,
                    "node_type": error.class_type,
                    "executed": hooks.executed_nodes,
                    "exception_message": error.message,
                    "exception_type": type(error.__cause__ or error).__name__,
                    "traceback": traceback.format_exception(error.__cause__ or error),
                    "current_inputs": {},
                    "current_outputs": {},
                },
            )
            error.messages = hooks.messages
            raise
        hooks.note("execution_success", {"prompt_id": job.id})
        return Outcome(outputs, hooks.messages)

    def finish(self, job: Job) -> None:
        """ComfyUI's done signal, after the history entry exists: `executing` with node null."""
        self.hub.send("executing", {"node": None, "prompt_id": job.id}, job.client_id)


def _class_type(request: dict, node_id: str | None) -> str | None:
    node = request["prompt"].get(node_id) if node_id is not None else None
    return node.get("class_type") if isinstance(node, dict) else None


def _with_messages(error: Exception, messages: list) -> Exception:
    error.messages = messages
    return error
