"""Figures through the full local stack (``multipass_dev.stack.LocalStack``: nats-server, moto S3, prompt
parser, segmentation, diffusion worker and gateway as processes), against the same passes in-process.

* ``orchestration_overhead``: a two-person job (256x256, 20 steps per pass) submitted through the public
  API and followed to its end, over the same diffusion passes run in-process on the engine. "The same
  passes" is literal: after each job the bench reads the job record from NATS KV, rebuilds every
  diffusion pass request exactly as the gateway dispatched it (``job_state.build_request``), fetches
  its inputs from the object store and runs ``Engine.run`` on them, inputs already decoded; the segment
  pass runs in-process too (``Segmenter.person_masks`` on the base output, with the job's slots). Its
  ``split`` detail separates orchestration (job wall minus the compute seconds of the stack's own
  processes: the worker's engine and the segmentation service's model phase, from their /metrics) from
  the two sides computing at different speeds on a shared machine.
* ``pass_cache_through_stack``: a cold job vs the same job with one person prompt changed.
* ``device_idle`` (under ``orchestration_overhead``'s details): after the overhead repetitions, a burst of
  two-person jobs submitted at once; the diffusion worker's /metrics (device busy seconds, the histogram
  of device idle while a delivered pass was held) and the passes' timestamps say how much of the burst the
  device spent idle although work was queued.

The stack's diffusion worker and segmentation service and the in-process engine and segmenter all run
with one torch thread on the same tiny models and working size (64, the local stack's for tiny models), so
the ratio compares equal work.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path

from multipass_bench import hops, workload
from multipass_bench.report import MetricUnavailable, head_and_tail, say
from multipass_bench.service_metrics import (
    histogram_bound,
    scrape_device_metrics,
    scrape_engine_seconds,
    scrape_segment_model_seconds,
)
from multipass_gateway.domain import job_state
from multipass_gateway.infra.job_store import parse_record

JOB_PARAMS = {"steps": "20", "w": "256", "h": "256"}
#: Jobs traced message by message after the measured ones (details.hops; no figure counts them).
HOP_JOBS = 3
#: The local stack's person working size for the tiny models (multipass_dev.tiny_models.TINY_WORKING_SIZE).
STACK_WORKING_SIZE = 64
STACK_SERVICE_ENV = {
    "MULTIPASS_DIFFUSION_MODELS": workload.SD15,
    "MULTIPASS_DIFFUSION_WORKING_SIZE": str(STACK_WORKING_SIZE),
    "MULTIPASS_DIFFUSION_TORCH_THREADS": "1",
    "MULTIPASS_SEGMENTATION_TORCH_THREADS": "1",
}
#: Variables of the caller's shell that would point the stack elsewhere.
UNSET = (
    "MULTIPASS_MODEL_DIR",
    "MULTIPASS_S3_ENDPOINT",
    "MULTIPASS_API_KEY",
    "MULTIPASS_ADMIN_TOKEN",
    "MULTIPASS_NATS_URL",
    "MULTIPASS_STACK_DIR",
)


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def two_person_prompt(first_tune: str, second_tune: str, second_outfit: str = "black tuxedo") -> str:
    return (
        "a ballroom at a gala, chandeliers BREAK candid photo, soft light "
        f"BREAK ohwx woman, red evening gown <lora:{first_tune}:1> "
        f"BREAK ohwx man, {second_outfit} <lora:{second_tune}:0.8>"
    )


class BenchStack:
    """The local stack under ``root`` on ``model_root``'s tiny models, started and stopped by the bench."""

    def __init__(
        self,
        root: Path,
        model_root: Path,
        *,
        service_env: dict[str, str] | None = None,
        profile_dir: Path | None = None,
    ):
        try:
            from multipass_client.stack_record import StackPaths
            from multipass_dev.stack.local_stack import LocalStack, StackConfig
        except ImportError as error:
            raise MetricUnavailable(
                f"the local stack (multipass_dev.stack) cannot be imported: {error}"
            ) from error
        self.paths = StackPaths(Path(root))
        self.profile_dir = Path(profile_dir).absolute() if profile_dir is not None else None
        extra = {}
        if self.profile_dir is not None:
            extra["python"] = str(profiling_python(self.paths.root, self.profile_dir))
        config = StackConfig(
            paths=self.paths,
            model_dir=Path(model_root),
            service_env={**STACK_SERVICE_ENV, **(service_env or {})},
            base_env=clean_env(),
            ready_timeout=300.0,
            **extra,
        )
        self.stack = LocalStack(config, on_progress=lambda message: say(f"stack: {message}"))
        self.model_root = Path(model_root)

    def __enter__(self) -> BenchStack:
        try:
            self.stack.start()
        except Exception as error:
            raise MetricUnavailable(f"the local stack did not start: {head_and_tail(str(error))}") from error
        return self

    def __exit__(self, *exc_info) -> None:
        self.stack.stop()
        if self.profile_dir is not None:
            summarise_profiles(self.profile_dir)

    @property
    def state(self) -> dict:
        from multipass_client.stack_record import read_state

        return read_state(self.paths) or {}

    def client(self):
        from multipass_client import connect
        from multipass_client.stack_record import dev_api_key

        return connect(self.state["gateway_address"], api_key=dev_api_key(self.paths), timeout=120)

    def reader(self):
        from multipass_client.downloads import s3_reader_for

        return s3_reader_for(self.state)


def profiling_python(root: Path, profile_dir: Path) -> Path:
    """An interpreter wrapper that runs each service (``python -m <module>``) under cProfile in all its
    threads (``profile_service``), writing ``<profile_dir>/<module>.prof`` when the service exits (the
    stack stops services with SIGTERM, which they handle by returning from main)."""
    profile_dir.mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    wrapper = root / "python-cprofile"
    wrapper.write_text(
        "#!/bin/sh\n"
        "# Written by multipass_bench: $1 is -m, $2 the service's module.\n"
        f'exec "{sys.executable}" -m multipass_bench.profile_service "{profile_dir}/$2.prof" "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


def summarise_profiles(profile_dir: Path, lines: int = 30) -> list[Path]:
    """``<module>.txt`` beside each ``<module>.prof``: top functions by cumulative and by own time."""
    import pstats

    written = []
    for path in sorted(Path(profile_dir).glob("*.prof")):
        text = io.StringIO()
        stats = pstats.Stats(str(path), stream=text)
        text.write(f"== {path.stem}: top {lines} by cumulative time ==\n")
        stats.sort_stats("cumulative").print_stats(lines)
        text.write(f"== {path.stem}: top {lines} by own time ==\n")
        stats.sort_stats("tottime").print_stats(lines)
        target = path.with_suffix(".txt")
        target.write_text(text.getvalue())
        written.append(target)
    return written


def register_tunes(client, model_root: Path, directory: Path) -> list[str]:
    loras = workload.write_loras(model_root, directory, count=2)
    return [
        client.tunes.register(lora.path, token="ohwx", class_name=cls, base_family="sd15").tune_id
        for lora, cls in zip(loras, ("woman", "man"), strict=True)
    ]


@dataclass
class JobRun:
    seconds: float  # from calling SubmitJob to the client seeing the job end
    job: object
    wall_started: float  # time.time() when SubmitJob was called


def run_job(client, prompt: str, params: dict[str, str], timeout: float = 600.0) -> JobRun:
    """Submit a job, follow it to its end (WatchJob), and fail the figure unless it succeeded."""
    from multipass.v1 import jobs_pb2

    started, wall_started = time.perf_counter(), time.time()
    response = client.jobs.submit(prompt, params)
    job = client.jobs.wait(response.job_id, timeout=timeout)
    seconds = time.perf_counter() - started
    if job.state != jobs_pb2.JOB_STATE_SUCCEEDED:
        failed = [
            f"{p.name}: {p.error.message}" for image in job.images for p in image.passes if p.error.message
        ]
        raise MetricUnavailable(
            f"the two-person job through the local stack ended {jobs_pb2.JobState.Name(job.state)}: "
            + ("; ".join(failed) or job.error.message or "no error message")
        )
    return JobRun(seconds, job, wall_started)


def load_record(nats_url: str, tenant: str, job_id: str):
    """The gateway's job record (plans and pass states) from NATS KV."""
    from multipass import names
    from multipass.bus import Bus

    async def read():
        bus = await Bus.connect(nats_url, name="bench")
        try:
            store = await bus.kv(names.KV_JOBS)
            key = names.job_key(tenant, job_id)
            found = await store.get(key)
            if found is None:
                raise MetricUnavailable(f"job record {key} not found in KV")
            return parse_record(found.value, key)
        finally:
            await bus.close()

    return asyncio.run(read())


def diffusion_requests(record, image_index: int = 0) -> list[tuple[int, object]]:
    """(pass index, PassRequest) of every diffusion pass of the image, as the gateway dispatched them."""
    requests = []
    for index, planned in enumerate(record.plans[image_index].passes):
        if planned.runs_in == "diffusion":
            requests.append((index, job_state.build_request(record, image_index, index).request))
    return requests


def fetch_inputs(reader, spec, tune_dir: Path):
    """The decoded inputs of ``spec`` as the worker builds them (RGB image, L mask, tune files on disk)."""
    from multipass.images import decode_image

    def image(ref, mode):
        return decode_image(reader.read(ref.bucket, ref.key), field=ref.key, mode=mode)

    tune_paths = {}
    for ref in spec.loras:
        tune = spec.tune_files.get(ref.tune_id)
        if tune is None or ref.tune_id in tune_paths:
            continue
        path = tune_dir / f"{tune.sha256 or hashlib.sha256(tune.key.encode()).hexdigest()}.safetensors"
        if not path.exists():
            tune_dir.mkdir(parents=True, exist_ok=True)
            path.write_bytes(reader.read(tune.bucket, tune.key))
        tune_paths[ref.tune_id] = path
    from multipass_diffusion.passes.context import PassInputs

    return PassInputs(
        image=image(spec.image, "RGB") if spec.HasField("image") else None,
        mask=image(spec.mask, "L") if spec.HasField("mask") else None,
        control_image=image(spec.control_image, "RGB") if spec.HasField("control_image") else None,
        tune_paths=tune_paths,
    )


def timeline(record, run: JobRun | None = None, engine_seconds: dict[str, float] | None = None) -> dict:
    """Where the job's time went: the gateway's timestamps (seconds from job creation), the client's
    submit and end around them, and per pass the in-process engine's seconds for the same pass."""
    job = record.job
    origin = job.created_at.ToDatetime()
    engine_seconds = engine_seconds or {}

    def offset(stamp) -> float | None:
        return round((stamp.ToDatetime() - origin).total_seconds(), 4) if stamp.seconds else None

    passes = []
    previous_end = 0.0
    gaps = 0.0
    for state in job.images[0].passes:
        start, end = offset(state.started_at), offset(state.finished_at)
        gap = round(start - previous_end, 4) if start is not None else None
        if gap is not None and state.kind != "prepare":
            gaps += max(0.0, gap)
        entry = {
            "pass": state.name,
            "start": start,
            "end": end,
            "gap_before": gap,
            "cache_hit": state.cache_hit,
        }
        if state.name in engine_seconds and start is not None and end is not None:
            entry["in_process_seconds"] = round(engine_seconds[state.name], 4)
            entry["stack_minus_in_process"] = round(end - start - engine_seconds[state.name], 4)
        passes.append(entry)
        previous_end = end if end is not None else previous_end
    found = {"passes": passes, "job_end": offset(job.finished_at), "sum_of_gaps": round(gaps, 4)}
    if run is not None:
        created = job.created_at.ToDatetime().replace(tzinfo=UTC).timestamp()
        finished = job.finished_at.ToDatetime().replace(tzinfo=UTC).timestamp()
        found["submit_to_created"] = round(created - run.wall_started, 4)
        found["job_end_to_client"] = round(run.wall_started + run.seconds - finished, 4)
        found["client_seconds"] = round(run.seconds, 4)
    return found


def _pixels_equal(reader, ref, image) -> bool | None:
    if not ref.key:
        return None
    from PIL import Image

    stored = Image.open(io.BytesIO(reader.read(ref.bucket, ref.key))).convert("RGB")
    return stored.tobytes() == image.convert("RGB").tobytes()


def orchestration_overhead(
    stack: BenchStack, engine, *, repetitions: int = 5, tune_dir: Path, burst_jobs: int = 4
) -> tuple:
    """Median over repetitions of (job through the stack) / (the same diffusion passes in-process)."""
    with stack.client() as client:
        tunes = register_tunes(client, stack.model_root, tune_dir)
        prompt = two_person_prompt(*tunes)
        state = stack.state
        reader = stack.reader()
        stack_seconds, engine_seconds, identical, timelines = [], [], [], []
        metrics_url = state.get("processes", {}).get("diffusion", {}).get("metrics_url")
        segmentation_url = state.get("processes", {}).get("segmentation", {}).get("metrics_url")
        segmenter = in_process_segmenter(stack.model_root)
        worker_engine_seconds: list[float] = []
        segment_model_seconds: list[float] = []
        segment_in_process: list[float] = []
        for index in range(repetitions + 1):  # the first pair warms up both sides
            seed = 4242 + index * 17  # a new seed per job: every pass misses the pass cache
            engine_before = scrape_engine_seconds(metrics_url)
            segment_before = scrape_segment_model_seconds(segmentation_url)
            run = run_job(client, prompt, {**JOB_PARAMS, "seed": str(seed)})
            engine_after = scrape_engine_seconds(metrics_url)
            segment_after = scrape_segment_model_seconds(segmentation_url)
            record = load_record(state["nats_url"], state["tenant"], run.job.job_id)
            requests = diffusion_requests(record)
            fetched = [(i, r, fetch_inputs(reader, r.spec, tune_dir)) for i, r in requests]
            with workload.working_size(engine, STACK_WORKING_SIZE):
                started = time.perf_counter()
                outputs = [(i, engine.run(r.spec, inputs)) for i, r, inputs in fetched]
                in_process = time.perf_counter() - started
            if any(output.cache_hit for _, output in outputs):
                raise MetricUnavailable("the in-process engine hit a pass cache")
            segmenting = segment_in_process_seconds(segmenter, record, outputs)
            in_process += segmenting
            if index == 0:
                continue
            stack_seconds.append(run.seconds)
            engine_seconds.append(in_process)
            segment_in_process.append(segmenting)
            if engine_before is not None and engine_after is not None:
                worker_engine_seconds.append(engine_after - engine_before)
            if segment_before is not None and segment_after is not None:
                segment_model_seconds.append(segment_after - segment_before)
            identical.append(
                all(_pixels_equal(reader, record.job.images[0].passes[i].output, o.image) for i, o in outputs)
            )
            per_pass = {
                r.pass_name: o.duration_seconds for (_, r, _), (_, o) in zip(fetched, outputs, strict=True)
            }
            timelines.append(timeline(record, run, per_pass))
        hop_jobs = traced_hops(state["nats_url"], client, prompt, jobs=HOP_JOBS)
        idle = device_idle_burst(stack, client, prompt, jobs=burst_jobs) if burst_jobs else None
    engine.runtime(workload.SD15).adapters.deactivate()
    ratios = [s / e for s, e in zip(stack_seconds, engine_seconds, strict=True)]
    middle = sorted(range(len(ratios)), key=ratios.__getitem__)[len(ratios) // 2]
    details = {
        "job": "two persons with a LoRA each, 256x256, 20 steps, seed varied per job (no cache hits), "
        f"person working size {STACK_WORKING_SIZE}, diffusion torch threads 1",
        "passes_in_process": [r.pass_name for _, r in requests] + ["segment (Segmenter.person_masks)"],
        "segment_in_process_seconds": [round(x, 4) for x in segment_in_process],
        "stack_seconds": [round(x, 4) for x in stack_seconds],
        "in_process_seconds": [round(x, 4) for x in engine_seconds],
        "stack_seconds_median": round(statistics.median(stack_seconds), 4),
        "in_process_seconds_median": round(statistics.median(engine_seconds), 4),
        "overhead_seconds_median": round(
            statistics.median(s - e for s, e in zip(stack_seconds, engine_seconds, strict=True)), 4
        ),
        "ratios": [round(r, 4) for r in ratios],
        "in_process_outputs_equal_stack_outputs": identical,
        "timeline_of_median_job": timelines[middle],
        "hops": hops.summarise(hop_jobs),
        "repetitions": len(ratios),
    }
    if idle is not None:
        details["device_idle"] = idle
    if len(worker_engine_seconds) != len(stack_seconds) or len(segment_model_seconds) != len(stack_seconds):
        details["figure"] = "median of the paired ratios (the services' /metrics were not readable)"
        return statistics.median(ratios), details
    details["split"] = split_overhead(
        stack_seconds,
        [e + s for e, s in zip(worker_engine_seconds, segment_model_seconds, strict=True)],
        engine_seconds,
    )
    details["split"]["worker_engine_seconds"] = [round(x, 4) for x in worker_engine_seconds]
    details["split"]["segmentation_model_seconds"] = [round(x, 4) for x in segment_model_seconds]
    # The figure at equal engine speed: (in-process seconds + what the stack added) / in-process seconds,
    # per job. A shared machine changes the engine's speed between a stack job and its in-process replay
    # by tens of percent (engine_in_stack_over_in_process); that is not orchestration, and the raw paired
    # ratio (details.ratios) carries it whole.
    equal_speed = [
        (in_process + orchestration) / in_process
        for in_process, orchestration in zip(
            engine_seconds, details["split"]["orchestration_seconds"], strict=True
        )
    ]
    details["ratios_at_equal_engine_speed"] = [round(r, 4) for r in equal_speed]
    details["raw_ratio_median"] = round(statistics.median(ratios), 4)
    details["figure"] = (
        "median over jobs of (in-process seconds + orchestration seconds) / in-process seconds, where "
        "orchestration = the job's wall time through the stack minus the compute seconds of its processes "
        "(the worker's engine, the segmentation service's model phase); the raw stack/in-process ratios "
        "are under 'ratios'"
    )
    return statistics.median(equal_speed), details


def in_process_segmenter(model_root: Path):
    """The segmentation service's ``Segmenter`` on ``model_root``'s models, built by the service's own
    code (``build_segmenter``) with one torch thread, as the stack runs it."""
    from multipass_segmentation.app import build_segmenter
    from multipass_segmentation.settings import SegmentationSettings

    return build_segmenter(SegmentationSettings(model_dir=Path(model_root), torch_threads=1))


def segment_in_process_seconds(segmenter, record, outputs) -> float:
    """Seconds of the job's segment pass in-process: person masks of the base output for the job's slots
    (what the segmentation service's model phase runs on the stack's identical base image)."""
    import numpy as np

    from multipass_segmentation.servicer import slot_from_proto

    base = next(
        (output.image for index, output in outputs if record.plans[0].passes[index].kind == "base"), None
    )
    if base is None or not record.slots:
        return 0.0
    slots = [slot_from_proto(slot) for slot in record.slots]
    image = np.asarray(base.convert("RGB"))
    started = time.perf_counter()
    segmenter.person_masks(image, slots)
    return time.perf_counter() - started


def traced_hops(nats_url: str, client, prompt: str, *, jobs: int) -> list[dict]:
    """Where the milliseconds of ``jobs`` more jobs went, from every NATS message heard on the way.

    These jobs run after the measured ones and count in no figure: the tracer hears every message the
    stack sends (one more subscriber for nats-server to serve, a thread of this process parsing them), CPU
    that a 2-core machine takes from the stack's own processes while it is on.
    """
    found = []
    with hops.HopTracer(nats_url) as tracer:
        for index in range(jobs):
            tracer.clear()
            run = run_job(client, prompt, {**JOB_PARAMS, "seed": str(90_001 + index * 17)})
            found.append(hops.job_hops(list(tracer.messages), run.job.job_id))
    return found


def split_overhead(
    stack_seconds: list[float], stack_compute_seconds: list[float], in_process_seconds: list[float]
) -> dict:
    """Split each job's stack-over-in-process difference in two, so a noisy denominator is not read as
    orchestration cost.

    ``orchestration_seconds`` = the job's wall time through the stack minus the compute seconds of the
    stack's own processes (the worker's engine on its passes, the segmentation service's model phase):
    dispatch, events, fetches, encoding and uploads, the segmentation service's reads and writes.
    ``engine_in_stack_over_in_process`` = those compute seconds over the in-process side's for the same
    passes: 1 when both ran at the same speed; away from 1 when the machine's speed changed between
    the two runs (the 2-core machine is shared) or a service's process slowed its own model thread.
    """
    jobs = list(zip(stack_seconds, stack_compute_seconds, in_process_seconds, strict=True))
    orchestration = [wall - compute for wall, compute, _ in jobs]
    engine_ratio = [compute / in_process for _, compute, in_process in jobs]
    return {
        "stack_compute_seconds": [round(x, 4) for x in stack_compute_seconds],
        "orchestration_seconds": [round(x, 4) for x in orchestration],
        "orchestration_seconds_median": round(statistics.median(orchestration), 4),
        "engine_in_stack_over_in_process": [round(x, 4) for x in engine_ratio],
        "engine_in_stack_over_in_process_median": round(statistics.median(engine_ratio), 4),
    }


def idle_gaps(intervals: list[tuple[float, float]]) -> list[float]:
    """Gaps between consecutive passes on one device: time no pass ran between one's end and the next start.

    ``intervals`` are (start, end) of every pass; overlapping ones (a pass stamped started while the one
    before had not been stamped finished) leave no gap.
    """
    gaps = []
    ordered = sorted(intervals)
    reached = ordered[0][1] if ordered else 0.0
    for start, end in ordered[1:]:
        gaps.append(max(0.0, start - reached))
        reached = max(reached, end)
    return gaps


def device_idle_burst(stack: BenchStack, client, prompt: str, *, jobs: int) -> dict:
    """Submit ``jobs`` two-person jobs at once and measure the diffusion device's idle time in the burst.

    Busy seconds and the worker's idle histogram come from its /metrics (differences over the burst); the
    burst wall time and the gaps between consecutive diffusion passes from the gateway's pass timestamps.
    ``idle_fraction_while_held`` = idle / (idle + busy) by the worker's own clock (idle counted only while
    a delivered pass waited); ``idle_fraction_of_burst`` = 1 - busy / burst wall (also counts the time the
    device waited for passes that depended on segmentation or on an earlier pass).
    """
    from multipass.v1 import jobs_pb2

    state = stack.state
    process = state.get("processes", {}).get("diffusion", {})
    url = process.get("metrics_url")
    if not url:
        return {"unavailable": "the local stack's state names no diffusion metrics URL"}
    try:
        before = scrape_device_metrics(url)
        submitted = [
            client.jobs.submit(prompt, {**JOB_PARAMS, "seed": str(9100 + index * 13)}).job_id
            for index in range(jobs)
        ]
        finished = [client.jobs.wait(job_id, timeout=600.0) for job_id in submitted]
        after = scrape_device_metrics(url)
    except (OSError, MetricUnavailable) as error:
        return {"unavailable": f"{type(error).__name__}: {error}"}
    if any(job.state != jobs_pb2.JOB_STATE_SUCCEEDED for job in finished):
        return {"unavailable": "a job of the burst did not succeed"}
    intervals = []
    for job in finished:
        record = load_record(state["nats_url"], state["tenant"], job.job_id)
        for image_index, image in enumerate(record.job.images):
            for index, planned in enumerate(record.plans[image_index].passes):
                pass_state = image.passes[index]
                if planned.runs_in != "diffusion" or not pass_state.started_at.seconds:
                    continue
                start = pass_state.started_at.ToDatetime().replace(tzinfo=UTC).timestamp()
                end = pass_state.finished_at.ToDatetime().replace(tzinfo=UTC).timestamp()
                intervals.append((start, end))
    if len(intervals) < 2:
        return {"unavailable": f"only {len(intervals)} diffusion pass(es) with timestamps in the burst"}
    busy = after["busy"] - before["busy"]
    idle = after["idle_sum"] - before["idle_sum"]
    wall = max(end for _, end in intervals) - min(start for start, _ in intervals)
    gaps = idle_gaps(intervals)
    waits = int(after["idle_count"] - before["idle_count"])
    return {
        "jobs": jobs,
        "diffusion_passes": len(intervals),
        "prefetch": clean_env().get("MULTIPASS_DIFFUSION_PREFETCH", "1 (default)"),
        "device_busy_seconds": round(busy, 4),
        "burst_wall_seconds": round(wall, 4),
        "device_idle_seconds_while_held": round(idle, 4),
        "idle_waits_while_held": waits,
        "idle_fraction_while_held": round(idle / (idle + busy), 4) if idle + busy > 0 else None,
        "idle_fraction_of_burst": round(max(0.0, 1.0 - busy / wall), 4) if wall > 0 else None,
        "idle_wait_mean_seconds": round(idle / waits, 4) if waits else None,
        "idle_wait_median_at_most_seconds": histogram_bound(before, after, 0.5),
        "idle_wait_max_at_most_seconds": histogram_bound(before, after, 1.0),
        "gap_between_passes_median_seconds": round(statistics.median(gaps), 4),
        "gap_between_passes_max_seconds": round(max(gaps), 4),
        "gaps_note": "worker waits from its histogram (bucket bounds); pass gaps from the gateway's "
        "started/finished stamps, which overlap when a held pass starts before the previous one's "
        "completed event arrives (gap 0)",
    }


def pass_cache_through_stack(stack: BenchStack, *, repetitions: int = 2, tune_dir: Path) -> dict:
    """Cold job vs the same job with person 1's prompt changed (base and person 0 from the pass cache)."""
    with stack.client() as client:
        tunes = register_tunes(client, stack.model_root, tune_dir)
        cold_seconds, changed_seconds, hits = [], [], []
        for index in range(repetitions):
            params = {**JOB_PARAMS, "seed": str(777 + index * 31)}
            cold = run_job(client, two_person_prompt(*tunes), params)
            cold_seconds.append(cold.seconds)
            changed = run_job(client, two_person_prompt(*tunes, "white dinner jacket"), params)
            changed_seconds.append(changed.seconds)
            passes = {p.name: p.cache_hit for p in changed.job.images[0].passes}
            if not passes.get("base"):
                raise MetricUnavailable("the resubmitted job's base pass was not a pass-cache hit")
            hits.append(passes)
    ratios = [c / w for c, w in zip(cold_seconds, changed_seconds, strict=True)]
    return {
        "speedup": round(statistics.median(ratios), 4),
        "cold_seconds": [round(x, 4) for x in cold_seconds],
        "changed_seconds": [round(x, 4) for x in changed_seconds],
        "ratios": [round(r, 4) for r in ratios],
        "changed_job_cache_hits": hits[-1],
        "cache": "the worker's default store-backed pass cache (multipass-jobs/cache/<hash>.png)",
    }
