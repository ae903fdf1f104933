"""The frontend's queue and history panel: ComfyUI's `/api/jobs` listing, one job, and cancelling."""

from __future__ import annotations

from aiohttp import web

from lienzo.errors import InvalidArgumentError
from lienzo.server.comfy_routes import history_item, in_history
from lienzo.server.comfy_service import PROMPT_KIND
from lienzo.server.context import ServerContext, read_json
from lienzo.server.jobs import STATUSES, Job

DEFAULT_LIMIT = 100
IMAGE_KEYS = ("images", "gifs", "video", "audio")


def jobs_routes(context: ServerContext) -> list[tuple[str, str, object]]:
    handlers = JobsHandlers(context)
    return [
        ("GET", "/jobs", handlers.list_jobs),
        ("GET", "/jobs/{job_id}", handlers.get_job),
        ("POST", "/jobs/{job_id}/cancel", handlers.cancel_one),
        ("POST", "/jobs/cancel", handlers.cancel_many),
    ]


def job_summary(job: Job) -> dict:
    """One row of the panel: id, status, times (ms), output counts and a preview output."""
    outputs = [
        {**item, "nodeId": node_id, "mediaType": key}
        for node_id, output in job.outputs.items()
        if isinstance(output, dict)
        for key in IMAGE_KEYS
        for item in output.get(key, [])
        if isinstance(item, dict)
    ]
    summary = {
        "id": job.id,
        "status": job.status,
        "priority": job.number,
        "create_time": job.create_time,
        "outputs_count": len(outputs),
        "previewable_outputs_count": len(outputs),
    }
    if job.start_time is not None:
        summary["execution_start_time"] = job.start_time
    if job.end_time is not None and job.start_time is not None:
        summary["execution_end_time"] = job.end_time
    if job.error is not None:
        summary["execution_error"] = {
            "exception_message": job.error.get("message", ""),
            "exception_type": job.error.get("type", ""),
        }
    if outputs:
        summary["preview_output"] = outputs[0]
    return summary


class JobsHandlers:
    def __init__(self, context: ServerContext) -> None:
        self.context = context

    async def list_jobs(self, request: web.Request) -> web.Response:
        query = request.query
        statuses = tuple(part for part in query.get("status", "").split(",") if part) or STATUSES
        if set(statuses) - set(STATUSES):
            raise InvalidArgumentError(f"status must be among {', '.join(STATUSES)}")
        limit, offset = _number(query, "limit", DEFAULT_LIMIT), _number(query, "offset", 0)
        jobs = [
            job
            for job in self.context.store.jobs(statuses, newest_first=True)
            if job.kind == PROMPT_KIND and (job.status in ("pending", "in_progress") or in_history(job))
        ]
        if query.get("sort_order", "desc") == "asc":
            jobs.reverse()
        page = jobs[offset : offset + limit]
        return web.json_response(
            {
                "jobs": [job_summary(job) for job in page],
                "pagination": {
                    "offset": offset,
                    "limit": limit,
                    "total": len(jobs),
                    "has_more": offset + limit < len(jobs),
                },
            }
        )

    async def get_job(self, request: web.Request) -> web.Response:
        job = self.context.store.get(request.match_info["job_id"])
        if job is None or job.kind != PROMPT_KIND:
            return web.json_response({"error": "no such job"}, status=404)
        item = history_item(job)
        return web.json_response(
            {
                **job_summary(job),
                "outputs": job.outputs,
                "execution_status": item["status"],
                "workflow": {
                    "prompt": job.request["prompt"],
                    "extra_data": job.request.get("extra_data", {}),
                },
            }
        )

    async def cancel_one(self, request: web.Request) -> web.Response:
        return web.json_response({"cancelled": self._cancel([request.match_info["job_id"]])})

    async def cancel_many(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        ids = body.get("job_ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not all(isinstance(item, str) for item in ids):
            raise InvalidArgumentError('/jobs/cancel takes {"job_ids": [ids]}')
        return web.json_response({"cancelled": self._cancel(ids)})

    def _cancel(self, ids: list[str]) -> bool:
        """Cancel pending jobs and interrupt the running one if it is among them."""
        cancelled = bool(self.context.store.cancel(ids))
        running = any(self.context.worker.interrupt_job(job_id) for job_id in ids)
        self.context.worker.send_status()
        return cancelled or running


def _number(query, name: str, default: int) -> int:
    value = query.get(name)
    if value in (None, ""):
        return default
    if not value.isdigit():
        raise InvalidArgumentError(f"{name} must be a whole number, got {value!r}")
    return int(value)
