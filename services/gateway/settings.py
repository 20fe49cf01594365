"""The gateway's settings: read once from ``MULTIPASS_*`` variables, validated, frozen, passed down."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from multipass.config import EnvReader
from multipass.connections import NatsSettings, S3Settings
from multipass.errors import ConfigError, Violation
from multipass.event_loop import DEFAULT_EVENT_LOOP, EVENT_LOOPS
from multipass.ssrf import Refused, UrlPrefix
from multipass.store import PublicEndpoint
from multipass_gateway.domain.base_batching import DEFAULT_MAX_BATCH
from multipass_gateway.domain.finishing_sizes import MAX_OUTPUT_SIDE

DEFAULT_GRPC_ADDR = "127.0.0.1:50050"
DEFAULT_METRICS_PORT = 9100
DEFAULT_PARSER_ADDR = "127.0.0.1:50051"
DEFAULT_SEGMENTATION_ADDR = "127.0.0.1:50052"
DEFAULT_DIFFUSION_ADDR = "127.0.0.1:50053"
_MODEL_NAME = re.compile(r"[A-Za-z0-9_-]{1,128}")


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may cost."""

    #: Bytes of one fetched input/mask image, or of one uploaded image.
    max_image_bytes: int = 20 * 1024 * 1024
    #: Pixels (width*height) of an input/mask image.
    max_image_pixels: int = 4096 * 4096
    #: Bytes of one tune file (LoRA or checkpoint).
    max_tune_bytes: int = 512 * 1024 * 1024
    #: Tune files (chunks or a URL) one replica receives at once; one more RegisterTune is RESOURCE_EXHAUSTED.
    #: Streamed files are spooled to the temp dir, so its size bounds this times ``max_tune_bytes``.
    max_tune_uploads: int = 4
    #: Seconds an upload (a tune file, an image) may go without a chunk before it is given up (its slot freed).
    upload_idle_seconds: float = 60.0
    #: Images (UploadImage) one replica receives at once, each held in memory until decoded (at most
    #: ``max_image_bytes``); a tenant holds at most half of them. One more is RESOURCE_EXHAUSTED.
    max_image_uploads: int = 8
    #: Seconds for one HTTP fetch (connect + read) of an input image or a tune URL.
    fetch_timeout_seconds: float = 20.0
    #: Redirects followed (each re-checked against the address policy).
    max_redirects: int = 3
    #: Passes of unfinished jobs one tenant may have (a job counts its whole plan until it ends).
    tenant_max_pending_passes: int = 400
    #: Passes of unfinished jobs across every tenant.
    global_max_pending_passes: int = 5000
    #: Retry hint sent with RESOURCE_EXHAUSTED.
    retry_after_seconds: float = 10.0
    #: Attempts of a pass whose worker gave up with a transient error (UNAVAILABLE, DEADLINE_EXCEEDED).
    pass_max_attempts: int = 2
    #: Passes of one tenant released to the work queue and not finished yet; the rest wait their turn.
    tenant_max_passes_in_flight: int = 16
    #: Passes of every tenant released and not finished yet (size it to the workers' capacity).
    max_passes_in_flight: int = 64
    #: Images of one job whose first base passes go to the worker as one batch (1 = never batch).
    max_base_batch: int = DEFAULT_MAX_BATCH
    #: Uploads one tenant may hold at once (they expire, or DeleteUpload removes them).
    tenant_max_uploads: int = 500
    #: Tunes one tenant may hold (each a stored file of up to ``max_tune_bytes``); one more RegisterTune is
    #: RESOURCE_EXHAUSTED (``MULTIPASS_GATEWAY_TENANT_MAX_TUNES``).
    tenant_max_tunes: int = 1000


@dataclass(frozen=True)
class CallbackSettings:
    #: HMAC-SHA256 key of X-Multipass-Signature; empty disables callbacks (SubmitJob refuses callback_url).
    signing_key: str = ""
    max_attempts: int = 5
    #: Callback URLs under these prefixes skip the address policy (the HTTP API's relay of Astria's
    #: ``prompt[callback]``, which checks the caller's URL itself); ``MULTIPASS_CALLBACK_TRUSTED_PREFIXES``.
    trusted_prefixes: tuple[UrlPrefix, ...] = ()
    #: First retry delay; doubles per attempt.
    backoff_seconds: float = 1.0
    timeout_seconds: float = 10.0


@dataclass(frozen=True)
class PassTuning:
    """How person and face passes cut, repaint and paste (the planner's defaults; operators tune seams here)."""

    #: Context around a person's mask box, in pixels, before the crop is widened to the working aspect.
    crop_padding: int = 32
    #: The crop around the mask box, as a multiple of the box (ComfyUI Impact's crop_factor).
    crop_factor: float = 1.3
    #: Feather of the paste mask (Gaussian sigma, pixels; 0 = a hard edge); pixels outside it are kept exactly.
    mask_blur: float = 4.0
    #: Denoising strength of the faces pass (inpaint_faces).
    faces_denoising_strength: float = 0.4
    #: Pose ControlNet strength that keeps a person's pose during the person pass.
    person_pose_scale: float = 0.8
    #: Faces covering less of the image than this (0..1) are left as they are by the face passes; 0 = all.
    faces_min_area_ratio: float = 0.0
    #: At most this many faces per face pass, the largest; 0 = all.
    faces_max_count: int = 0


@dataclass(frozen=True)
class FetchAllowList:
    """Hosts and networks exempt from the private/loopback/link-local refusal (operator's choice)."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()


@dataclass(frozen=True)
class GatewaySettings:
    grpc_address: str = DEFAULT_GRPC_ADDR
    #: /metrics port; 0 picks a free port, -1 disables the endpoint.
    metrics_port: int = DEFAULT_METRICS_PORT
    nats: NatsSettings = field(default_factory=NatsSettings)
    s3: S3Settings = field(default_factory=S3Settings)
    parser_target: str = DEFAULT_PARSER_ADDR
    segmentation_target: str = DEFAULT_SEGMENTATION_ADDR
    diffusion_target: str = DEFAULT_DIFFUSION_ADDR
    #: Sent as ``x-multipass-internal`` to the internal services when set.
    internal_token: str = ""
    #: Model of the base (and hires/upscale/finish) passes; empty = the first model the worker reports.
    base_model: str = ""
    #: Model of the person and face passes; empty = the base model.
    person_model: str = ""
    limits: Limits = field(default_factory=Limits)
    #: Guards the Admin service; empty disables it.
    admin_token: str = ""
    #: Server pepper of the API key hashes (HMAC-SHA256 key); empty = plain SHA-256 of the key.
    api_key_pepper: str = ""
    #: Seconds a replica trusts an API key it found live before reading it again; a revoked key keeps
    #: working on other replicas for at most this long (``MULTIPASS_GATEWAY_AUTH_CACHE_SECONDS``; 0 = off).
    auth_cache_seconds: float = 2.0
    #: Seconds between checks that the keys of open WatchJob streams are still live; a key revoked on
    #: another replica whose note was lost ends its streams here within this long
    #: (``MULTIPASS_GATEWAY_STREAM_AUTH_RECHECK_SECONDS``).
    stream_auth_recheck_seconds: float = 2.0
    #: WatchJob streams one tenant may hold open on one replica (each is a JetStream consumer); one more
    #: is RESOURCE_EXHAUSTED (``MULTIPASS_GATEWAY_TENANT_MAX_STREAMS``).
    tenant_max_streams: int = 100
    callbacks: CallbackSettings = field(default_factory=CallbackSettings)
    fetch_allow: FetchAllowList = field(default_factory=FetchAllowList)
    presign_expiry_seconds: int = 3600
    #: Where clients outside the cluster reach the object store (``MULTIPASS_S3_PUBLIC_ENDPOINT``,
    #: ``http(s)://host[:port]``): presigned URLs point there. None = the internal endpoint.
    s3_public_endpoint: PublicEndpoint | None = None
    #: Seconds a Diffusion.Info answer is trusted before asking again.
    info_ttl_seconds: float = 30.0
    #: Upscale factor of super_resolution; hires_fix scale.
    upscale_factor: float = 4.0
    hires_scale: float = 1.5
    #: Crop, feather and strengths of the person and face passes (``MULTIPASS_GATEWAY_CROP_PADDING``, ...).
    pass_tuning: PassTuning = PassTuning()
    #: Person passes whose crops avoid each other's masks run at the same time, then one composite pass
    #: merges them (``MULTIPASS_GATEWAY_PARALLEL_PERSONS``; docs/PARALLEL_PERSONS.md).
    parallel_persons: bool = True
    #: Per-tenant usage counters on /metrics (``MULTIPASS_GATEWAY_TENANT_METRICS``; app/tenant_usage.py).
    tenant_metrics: bool = True
    #: Largest width/height a chain may reach before hires/upscale.
    max_side: int = 2048
    #: Seconds between sweeps for unpublished outboxes, unfinished callbacks and stale markers.
    sweep_interval_seconds: float = 30.0
    #: Seconds between refreshes of the pending-passes gauge.
    queue_metrics_interval_seconds: float = 10.0
    #: Seconds between pass release rounds when nothing wakes the scheduler earlier.
    scheduler_interval_seconds: float = 1.0
    #: Seconds between rebuilds of a replica's in-memory mirror of the scheduler queues from KV (release
    #: rounds read the mirror; own writes and other replicas' notes keep it current in between).
    scheduler_resync_seconds: float = 5.0
    #: Seconds between rebuilds of a replica's mirror of the pending-work markers (SubmitJob's budget check).
    budget_refresh_seconds: float = 5.0
    #: Concurrent handlers of pass events in this replica. Each handler mostly waits on NATS round trips,
    #: and events of one job that arrive together are applied in one write, so more handlers mean more
    #: overlap and more coalescing, not more CPU per event.
    event_concurrency: int = 32
    #: Bytes of copies of small segmentation outputs (masks, pose images) a replica keeps for the pass
    #: requests that read them (``PassRequest.copies``); 0 asks for none and attaches none.
    object_copies_bytes: int = 32 * 1024 * 1024
    #: Seconds an uploaded image is kept (``UploadImageResponse.expires_at``); 0 keeps uploads until
    #: DeleteUpload. Expired uploads are deleted within a sweep of ``upload_sweep_seconds``.
    upload_ttl_seconds: float = 24 * 3600.0
    upload_sweep_seconds: float = 600.0
    #: Seconds between two recorded step reports of one pass (``multipass_gateway.app.progress_gate``);
    #: 0 records every report the step throttle lets through.
    progress_interval_seconds: float = 0.5
    #: Seconds a finished job (record, events, images) is kept after it ended; 0 keeps jobs until DeleteJob.
    job_retention_seconds: float = 0.0
    #: Seconds between the sweeps that delete jobs past their retention (when one is set).
    retention_sweep_seconds: float = 600.0
    log_level: str = "INFO"
    #: ``MULTIPASS_EVENT_LOOP``: auto (uvloop where installed), uvloop or asyncio.
    event_loop: str = DEFAULT_EVENT_LOOP

    def __repr__(self) -> str:  # secrets never reach a log line
        return (
            f"GatewaySettings(grpc_address={self.grpc_address!r}, metrics_port={self.metrics_port}, nats={self.nats!r}, "
            f"s3={self.s3!r}, s3_public_endpoint={self.s3_public_endpoint!r}, parser={self.parser_target!r}, segmentation={self.segmentation_target!r}, "
            f"diffusion={self.diffusion_target!r}, base_model={self.base_model!r}, person_model={self.person_model!r}, "
            f"limits={self.limits!r}, admin_token={'***' if self.admin_token else 'unset'}, "
            f"callback_key={'***' if self.callbacks.signing_key else 'unset'}, fetch_allow={self.fetch_allow!r})"
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GatewaySettings:
        """Read every setting; one ConfigError names every bad variable."""
        reader = EnvReader(environ)
        nats = NatsSettings.from_env(reader)
        s3 = S3Settings.from_env(reader)
        parser_addr = reader.address("PARSER_GRPC_ADDR", DEFAULT_PARSER_ADDR)
        segmentation_addr = reader.address("SEGMENTATION_GRPC_ADDR", DEFAULT_SEGMENTATION_ADDR)
        diffusion_addr = reader.address("DIFFUSION_GRPC_ADDR", DEFAULT_DIFFUSION_ADDR)
        defaults = Limits()
        limits = Limits(
            max_image_bytes=reader.int("GATEWAY_MAX_IMAGE_BYTES", defaults.max_image_bytes, min=1024),
            max_image_pixels=reader.int("GATEWAY_MAX_IMAGE_PIXELS", defaults.max_image_pixels, min=64 * 64),
            max_tune_bytes=reader.int("GATEWAY_MAX_TUNE_BYTES", defaults.max_tune_bytes, min=1024),
            max_tune_uploads=reader.int("GATEWAY_MAX_TUNE_UPLOADS", defaults.max_tune_uploads, min=1, max=64),
            upload_idle_seconds=reader.float(
                "GATEWAY_UPLOAD_IDLE_SECONDS", defaults.upload_idle_seconds, min=1.0, max=3600.0
            ),
            max_image_uploads=reader.int(
                "GATEWAY_MAX_IMAGE_UPLOADS", defaults.max_image_uploads, min=1, max=256
            ),
            fetch_timeout_seconds=reader.float(
                "GATEWAY_FETCH_TIMEOUT_SECONDS", defaults.fetch_timeout_seconds, min=0.1
            ),
            max_redirects=reader.int("GATEWAY_MAX_REDIRECTS", defaults.max_redirects, min=0, max=10),
            tenant_max_pending_passes=reader.int(
                "GATEWAY_TENANT_MAX_PENDING_PASSES", defaults.tenant_max_pending_passes, min=1
            ),
            global_max_pending_passes=reader.int(
                "GATEWAY_GLOBAL_MAX_PENDING_PASSES", defaults.global_max_pending_passes, min=1
            ),
            retry_after_seconds=reader.float(
                "GATEWAY_RETRY_AFTER_SECONDS", defaults.retry_after_seconds, min=0.0
            ),
            pass_max_attempts=reader.int(
                "GATEWAY_PASS_MAX_ATTEMPTS", defaults.pass_max_attempts, min=1, max=10
            ),
            tenant_max_passes_in_flight=reader.int(
                "GATEWAY_TENANT_MAX_PASSES_IN_FLIGHT", defaults.tenant_max_passes_in_flight, min=1
            ),
            max_passes_in_flight=reader.int(
                "GATEWAY_MAX_PASSES_IN_FLIGHT", defaults.max_passes_in_flight, min=1
            ),
            max_base_batch=reader.int("GATEWAY_MAX_BASE_BATCH", defaults.max_base_batch, min=1, max=16),
            tenant_max_uploads=reader.int(
                "GATEWAY_TENANT_MAX_UPLOADS", defaults.tenant_max_uploads, min=1, max=100_000
            ),
            tenant_max_tunes=reader.int(
                "GATEWAY_TENANT_MAX_TUNES", defaults.tenant_max_tunes, min=1, max=1_000_000
            ),
        )
        tuning = PassTuning()
        callback_defaults = CallbackSettings()
        callbacks = CallbackSettings(
            signing_key=reader.str("CALLBACK_SIGNING_KEY", ""),
            max_attempts=reader.int("CALLBACK_MAX_ATTEMPTS", callback_defaults.max_attempts, min=1, max=20),
            backoff_seconds=reader.float(
                "CALLBACK_BACKOFF_SECONDS", callback_defaults.backoff_seconds, min=0.0
            ),
            timeout_seconds=reader.float(
                "CALLBACK_TIMEOUT_SECONDS", callback_defaults.timeout_seconds, min=0.1
            ),
            trusted_prefixes=_url_prefixes(
                "MULTIPASS_CALLBACK_TRUSTED_PREFIXES", reader.csv("CALLBACK_TRUSTED_PREFIXES")
            ),
        )
        allow = _allow_list(reader.csv("FETCH_ALLOW_HOSTS"), reader.csv("FETCH_ALLOW_CIDRS"))
        public_endpoint, public_problem = _public_endpoint(reader.str("S3_PUBLIC_ENDPOINT", ""))
        settings = cls(
            grpc_address=reader.address("GATEWAY_GRPC_ADDR", DEFAULT_GRPC_ADDR),
            metrics_port=reader.int("GATEWAY_METRICS_PORT", DEFAULT_METRICS_PORT, min=-1, max=65535),
            nats=nats,
            s3=s3,
            parser_target=reader.address("PARSER_TARGET", parser_addr),
            segmentation_target=reader.address("SEGMENTATION_TARGET", segmentation_addr),
            diffusion_target=reader.address("DIFFUSION_TARGET", diffusion_addr),
            internal_token=reader.str("INTERNAL_TOKEN", ""),
            base_model=reader.str("GATEWAY_BASE_MODEL", ""),
            person_model=reader.str("GATEWAY_PERSON_MODEL", ""),
            limits=limits,
            admin_token=reader.str("ADMIN_TOKEN", ""),
            api_key_pepper=reader.str("API_KEY_PEPPER", ""),
            auth_cache_seconds=reader.float("GATEWAY_AUTH_CACHE_SECONDS", 2.0, min=0.0, max=60.0),
            stream_auth_recheck_seconds=reader.float(
                "GATEWAY_STREAM_AUTH_RECHECK_SECONDS", 2.0, min=0.1, max=60.0
            ),
            tenant_max_streams=reader.int("GATEWAY_TENANT_MAX_STREAMS", 100, min=1, max=100_000),
            callbacks=callbacks,
            fetch_allow=allow,
            presign_expiry_seconds=reader.int(
                "GATEWAY_PRESIGN_EXPIRY_SECONDS", 3600, min=60, max=7 * 24 * 3600
            ),
            s3_public_endpoint=public_endpoint,
            info_ttl_seconds=reader.float("GATEWAY_INFO_TTL_SECONDS", 30.0, min=0.0),
            upscale_factor=reader.float("GATEWAY_UPSCALE_FACTOR", 4.0, min=1.0, max=8.0),
            hires_scale=reader.float("GATEWAY_HIRES_SCALE", 1.5, min=1.0, max=4.0),
            pass_tuning=PassTuning(
                crop_padding=reader.int("GATEWAY_CROP_PADDING", tuning.crop_padding, min=1, max=1024),
                crop_factor=reader.float("GATEWAY_CROP_FACTOR", tuning.crop_factor, min=1.0, max=4.0),
                mask_blur=reader.float("GATEWAY_MASK_BLUR", tuning.mask_blur, min=0.0, max=64.0),
                faces_denoising_strength=reader.float(
                    "GATEWAY_FACES_DENOISING_STRENGTH", tuning.faces_denoising_strength, min=0.0, max=1.0
                ),
                person_pose_scale=reader.float(
                    "GATEWAY_PERSON_POSE_SCALE", tuning.person_pose_scale, min=0.0, max=2.0
                ),
                faces_min_area_ratio=reader.float(
                    "GATEWAY_FACES_MIN_AREA_RATIO", tuning.faces_min_area_ratio, min=0.0, max=1.0
                ),
                faces_max_count=reader.int("GATEWAY_FACES_MAX_COUNT", tuning.faces_max_count, min=0, max=64),
            ),
            parallel_persons=reader.bool("GATEWAY_PARALLEL_PERSONS", True),
            tenant_metrics=reader.bool("GATEWAY_TENANT_METRICS", True),
            max_side=reader.int("GATEWAY_MAX_SIDE", 2048, min=256, max=MAX_OUTPUT_SIDE),
            sweep_interval_seconds=reader.float("GATEWAY_SWEEP_INTERVAL_SECONDS", 30.0, min=0.1),
            queue_metrics_interval_seconds=reader.float(
                "GATEWAY_QUEUE_METRICS_INTERVAL_SECONDS", 10.0, min=0.1
            ),
            scheduler_interval_seconds=reader.float("GATEWAY_SCHEDULER_INTERVAL_SECONDS", 1.0, min=0.05),
            scheduler_resync_seconds=reader.float("GATEWAY_SCHEDULER_RESYNC_SECONDS", 5.0, min=0.1),
            budget_refresh_seconds=reader.float("GATEWAY_BUDGET_REFRESH_SECONDS", 5.0, min=0.1),
            event_concurrency=reader.int("GATEWAY_EVENT_CONCURRENCY", 32, min=1, max=256),
            object_copies_bytes=reader.int("GATEWAY_OBJECT_COPIES_MB", 32, min=0, max=4096) * 1024 * 1024,
            upload_ttl_seconds=reader.float(
                "GATEWAY_UPLOAD_TTL_SECONDS", 24 * 3600.0, min=0.0, max=366 * 24 * 3600.0
            ),
            upload_sweep_seconds=reader.float("GATEWAY_UPLOAD_SWEEP_SECONDS", 600.0, min=1.0),
            progress_interval_seconds=reader.float(
                "GATEWAY_PROGRESS_INTERVAL_SECONDS", 0.5, min=0.0, max=60.0
            ),
            job_retention_seconds=reader.float(
                "GATEWAY_JOB_RETENTION_SECONDS", 0.0, min=0.0, max=10 * 366 * 24 * 3600.0
            ),
            retention_sweep_seconds=reader.float("GATEWAY_RETENTION_SWEEP_SECONDS", 600.0, min=1.0),
            log_level=reader.choice("LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
            event_loop=reader.choice("EVENT_LOOP", DEFAULT_EVENT_LOOP, EVENT_LOOPS),
        )
        reader.check()
        problems = [
            Violation(
                f"MULTIPASS_GATEWAY_{name.upper()}", f"got {value!r}; expected letters, digits, '-' or '_'"
            )
            for name, value in (("base_model", settings.base_model), ("person_model", settings.person_model))
            if value and not _MODEL_NAME.fullmatch(value)
        ] + public_problem
        if problems:
            raise ConfigError(
                "bad configuration: " + ", ".join(v.field for v in problems), violations=problems
            )
        return settings


def _public_endpoint(raw: str) -> tuple[PublicEndpoint | None, list[Violation]]:
    if not raw:
        return None, []
    try:
        return PublicEndpoint.parse(raw), []
    except ValueError as error:
        return None, [Violation("MULTIPASS_S3_PUBLIC_ENDPOINT", str(error))]


def _url_prefixes(name: str, entries: tuple[str, ...]) -> tuple[UrlPrefix, ...]:
    prefixes, problems = [], []
    for entry in entries:
        try:
            prefixes.append(UrlPrefix.parse(entry))
        except Refused as error:
            problems.append(Violation(name, f"got {entry[:200]!r}; {error}"))
    if problems:
        raise ConfigError(f"bad configuration: {name}", violations=problems)
    return tuple(prefixes)


def _allow_list(hosts: tuple[str, ...], cidrs: tuple[str, ...]) -> FetchAllowList:
    """Hostnames go to ``hosts``; IP addresses and CIDRs (in either variable) to ``networks``."""
    names: set[str] = set()
    networks = []
    problems = []
    for entry in hosts:
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
        except ValueError:
            names.add(entry.lower().rstrip("."))
    for entry in cidrs:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            problems.append(
                Violation("MULTIPASS_FETCH_ALLOW_CIDRS", f"got {entry!r}; expected an IP address or CIDR")
            )
    if problems:
        raise ConfigError("bad configuration: MULTIPASS_FETCH_ALLOW_CIDRS", violations=problems)
    return FetchAllowList(hosts=frozenset(names), networks=tuple(networks))
