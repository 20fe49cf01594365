"""Showing a job's events: one line per event (``watch``) or rich progress bars per image and pass."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from multipass.v1 import jobs_pb2
from multipass_client.jobs import state_name


def describe_event(event: jobs_pb2.JobEvent) -> str:
    """``#12  37%  image 0 person-1 step 3/4`` style summary of one event."""
    kind = event.WhichOneof("event")
    body = getattr(event, kind) if kind else None
    if kind == "accepted":
        text = f"accepted: {body.num_images} image(s), {body.num_persons} person(s)"
    elif kind == "pass_started":
        text = f"image {body.image_index} {body.pass_name} started (attempt {body.attempt})"
    elif kind == "step_progress":
        text = f"image {body.image_index} {body.pass_name} step {body.step}/{body.steps_total}"
    elif kind == "pass_completed":
        extra = " (cached)" if body.cache_hit else ""
        outputs = [body.output.key] if body.output.key else []
        outputs += [f"mask {name}" for name in sorted(body.masks)]
        text = f"image {body.image_index} {body.pass_name} completed{extra}" + (
            f": {', '.join(outputs)}" if outputs else ""
        )
    elif kind == "pass_failed":
        text = f"image {body.image_index} {body.pass_name} FAILED: {body.error.message}"
    elif kind == "finished":
        text = f"finished: {state_name(body.state)}" + (
            f" ({body.message or body.error.message})" if body.message or body.error.message else ""
        )
    else:
        text = "(unknown event)"
    return f"#{event.sequence:<4d} {event.progress * 100:5.1f}%  {text}"


class JobProgress:
    """Progress bars: the whole job, then one per (image, pass) in chain order; fed JobEvents."""

    def __init__(self, job: jobs_pb2.Job, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self._progress = Progress(
            TextColumn("{task.description:<28}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self._overall = self._progress.add_task(f"job {job.job_id[:20]}", total=1000, note="")
        self._tasks: dict[tuple[int, str], TaskID] = {}
        for image in job.images:
            for state in image.passes:
                task = self._task(image.index, state.name, state.steps_total)
                if state.status == jobs_pb2.PASS_STATUS_COMPLETED:
                    self._finish(task, "cached" if state.cache_hit else "done")
                elif state.status == jobs_pb2.PASS_STATUS_SKIPPED:
                    self._finish(task, "skipped")
        self._progress.update(self._overall, completed=int(job.progress * 1000))

    def __enter__(self) -> JobProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._progress.stop()

    def _task(self, image: int, pass_name: str, steps_total: int = 0) -> TaskID:
        key = (image, pass_name)
        if key not in self._tasks:
            self._tasks[key] = self._progress.add_task(
                f"image {image} {pass_name}", total=max(1, steps_total), note=""
            )
        return self._tasks[key]

    def _finish(self, task: TaskID, note: str) -> None:
        total = self._progress.tasks[self._index(task)].total or 1
        self._progress.update(task, completed=total, note=note)

    def _index(self, task: TaskID) -> int:
        return next(i for i, t in enumerate(self._progress.tasks) if t.id == task)

    def update(self, event: jobs_pb2.JobEvent) -> None:
        kind = event.WhichOneof("event")
        body = getattr(event, kind) if kind else None
        if kind == "pass_started":
            self._progress.update(self._task(body.image_index, body.pass_name), note="running")
        elif kind == "step_progress":
            task = self._task(body.image_index, body.pass_name, body.steps_total)
            self._progress.update(task, total=max(1, body.steps_total), completed=body.step, note="running")
        elif kind == "pass_completed":
            self._finish(self._task(body.image_index, body.pass_name), "cached" if body.cache_hit else "done")
        elif kind == "pass_failed":
            self._progress.update(
                self._task(body.image_index, body.pass_name), note=f"[red]failed: {body.error.message[:60]}"
            )
        elif kind == "finished":
            self._progress.update(self._overall, note=state_name(body.state).lower())
        self._progress.update(self._overall, completed=int(event.progress * 1000))
