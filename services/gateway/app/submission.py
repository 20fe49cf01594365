"""SubmitJob: validate everything up front, prepare the inputs, plan, persist, queue; return the id.

Order of checks (each collects every problem it can before failing): request fields → idempotency key
(a repeat returns the existing job at once) → the prompt (PromptParser; its field violations reach the
user unchanged) → installed models and capabilities (Diffusion.Info) → tunes (exist, belong to the
tenant, match the family of the model their pass runs on) → input images (fetched under the address
policy, decoded safely, stored) → pending-work budget. Only then is the job written and its first passes
published, so nothing that can be known at submit time fails mid-job.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import TypeVar

from multipass.bus import KvBucket, KvConflict
from multipass.errors import (
    FailedPrecondition,
    InvalidInput,
    MultipassError,
    Reason,
    Violation,
    echo,
)
from multipass.store import ObjectStore
from multipass.v1 import common_pb2, diffusion_pb2, events_pb2, jobs_pb2, prompt_pb2, segmentation_pb2
from multipass_gateway.app.default_layouts import DefaultLayouts
from multipass_gateway.app.job_end import JobEnd
from multipass_gateway.app.job_inputs import JobInputs, Prepared, native_side
from multipass_gateway.app.prompt_tunes import check_prompt_tunes
from multipass_gateway.app.submit_cleanup import SubmitCleanup
from multipass_gateway.domain import (
    idempotency,
    job_state,
    person_stages,
    planner,
    requirements,
)
from multipass_gateway.domain.tune_checks import valid_upload_id
from multipass_gateway.infra import metrics
from multipass_gateway.infra.clients import InternalClients
from multipass_gateway.infra.diffusion_info import DiffusionInfo
from multipass_gateway.infra.fetch import FetchError, SafeHttp
from multipass_gateway.infra.job_store import JobStore
from multipass_gateway.infra.pending_budget import PendingBudget
from multipass_gateway.infra.tenant_limits import TenantLimitsCache
from multipass_gateway.infra.tune_store import TuneStore
from multipass_gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

A = TypeVar("A")
B = TypeVar("B")

MAX_IDEMPOTENCY_KEY = 200
#: Bounds of SubmitJobRequest.params: entries, characters of a name, characters of a value.
MAX_PARAMS = 64
MAX_PARAM_NAME_CHARS = 64
MAX_PARAM_VALUE_CHARS = 8192
_PRINTABLE = re.compile(r"^[\x21-\x7e]+$")


async def _both(first: Awaitable[A], second: Awaitable[B]) -> tuple[A, B]:
    """Run both to their end; then raise the first one's error, else the second one's, else return both."""
    one, two = await asyncio.gather(first, second, return_exceptions=True)
    _raise_first(one, two)
    return one, two  # type: ignore[return-value]


def _raise_first(*results: object) -> None:
    for result in results:
        if isinstance(result, BaseException):
            raise result


def new_job_id() -> str:
    """24 hex digits: milliseconds since the epoch, then random (ids sort by creation time)."""
    return f"{int(time.time() * 1000):012x}{secrets.token_hex(6)}"


def job_id_time(job_id: str) -> float | None:
    """Creation time (seconds since the epoch) encoded in a job id."""
    try:
        return int(job_id[:12], 16) / 1000.0
    except ValueError:
        return None


def idempotency_kv_key(tenant: str, key: str) -> str:
    return f"{tenant}.{hashlib.sha256(key.encode('utf-8')).hexdigest()[:48]}"


def faceid_capabilities(
    parsed: prompt_pb2.ParsedPrompt, base_model: str, person_model: str
) -> list[tuple[str, str]]:
    """(``faceid:<model>``, tag) for every ``<faceid:...>`` tag and model its passes run on.

    The diffusion worker lists ``faceid:<model>`` when the IP-Adapter FaceID of the model's family and
    the face embedder are installed; without them it could not condition the pass on the identity.
    """
    models = requirements.tune_models(parsed, base_model, person_model)
    return [
        (f"faceid:{model}", ref.tag or f"<faceid:{ref.tune_id}>")
        for ref in requirements.tune_ids(parsed)
        if ref.kind == "faceid"
        for model in models[(ref.kind, ref.tune_id)]
    ]


def check_request(request: jobs_pb2.SubmitJobRequest) -> list[Violation]:
    problems = []
    if len(request.idempotency_key) > MAX_IDEMPOTENCY_KEY or (
        request.idempotency_key and not _PRINTABLE.match(request.idempotency_key)
    ):
        problems.append(
            Violation(
                "idempotency_key",
                f"got {echo(request.idempotency_key)}; expected "
                f"1..{MAX_IDEMPOTENCY_KEY} printable ASCII characters without spaces",
            )
        )
    for field in ("input_image_id", "mask_image_id"):
        value = getattr(request, field)
        if value and not valid_upload_id(value):
            problems.append(
                Violation(field, f"got {echo(value)}; expected an image_id returned by UploadImage")
            )
    return problems + check_params(request.params)


def check_params(params: Mapping[str, str]) -> list[Violation]:
    """Bounds of the params map (the prompt parser judges the names and values themselves)."""
    if len(params) > MAX_PARAMS:
        return [Violation("params", f"got {len(params)} entries; at most {MAX_PARAMS}")]
    problems = []
    for name, value in params.items():
        if len(name) > MAX_PARAM_NAME_CHARS:
            problems.append(
                Violation(
                    "params", f"parameter name {echo(name)} is longer than {MAX_PARAM_NAME_CHARS} characters"
                )
            )
        elif len(value) > MAX_PARAM_VALUE_CHARS:
            problems.append(
                Violation(f"params.{name}", f"got {len(value)} characters; at most {MAX_PARAM_VALUE_CHARS}")
            )
    return problems


def in_request_terms(error: InvalidInput, request: jobs_pb2.SubmitJobRequest) -> InvalidInput:
    """The parser's violations named by the submit request's own fields: its ``text`` is the request's
    ``prompt``, and an image the request gave by upload id is that id's field, not the URL parameter."""
    renamed = {"text": "prompt"}
    if request.input_image_id:
        renamed["params.input_image_url"] = "input_image_id"
    if request.mask_image_id:
        renamed["params.mask_image_url"] = "mask_image_id"
    violations = [Violation(renamed.get(v.field, v.field), v.description) for v in error.violations]
    if violations == list(error.violations):
        return error
    return InvalidInput.of(violations, reason=error.reason, metadata=error.metadata)


class Submitter:
    def __init__(
        self,
        *,
        settings: GatewaySettings,
        clients: InternalClients,
        info: DiffusionInfo,
        tunes: TuneStore,
        jobs: JobStore,
        objects: ObjectStore,
        http: SafeHttp,
        idempotency: KvBucket,
        budget: PendingBudget,
        job_end: JobEnd,
        cleanup: SubmitCleanup,
        limits: TenantLimitsCache | None = None,
        layouts: DefaultLayouts | None = None,
    ):
        self.settings = settings
        #: Removes what a submit that did not go through wrote (retried while NATS or S3 is down).
        self.cleanup = cleanup
        self.clients = clients
        self.info = info
        self.tunes = tunes
        self.jobs = jobs
        self.objects = objects
        self.http = http
        self.idempotency = idempotency
        self.budget = budget
        self.job_end = job_end
        #: Tenants' own quotas (a tenant's ``max_pending_passes`` replaces the gateway's setting).
        self.limits = limits
        #: Reads, sizes and stores the job's images and lays out its persons.
        self.inputs = JobInputs(
            settings=settings, objects=objects, http=http, clients=clients, layouts=layouts
        )

    async def _replay(
        self, tenant: str, request: jobs_pb2.SubmitJobRequest, fingerprint: str
    ) -> jobs_pb2.SubmitJobResponse | None:
        """The answer of the job the request's key is bound to, or None when the key is free."""
        found = await self.idempotency.get(idempotency_kv_key(tenant, request.idempotency_key))
        if found is None:
            return None
        binding = idempotency.Binding.decode(found.value)
        record = await self.jobs.load(tenant, binding.job_id)
        if record is None:
            return None
        response = idempotency.replay(binding, request.idempotency_key, fingerprint)
        if not binding.fingerprint:  # bound before fingerprints: the job's own warnings
            response.warnings[:] = list(record.job.warnings)
        return response

    async def submit(
        self,
        tenant: str,
        request: jobs_pb2.SubmitJobRequest,
        *,
        still_authorised: Callable[[], Awaitable[None]] | None = None,
    ) -> jobs_pb2.SubmitJobResponse:
        """Plan, store and queue the job. ``still_authorised`` raises when the caller's key was revoked
        meanwhile; it runs once the record is stored, so a job either shows in the listing that a tenant's
        removal makes after the revocation, or is discarded here (Unauthenticated)."""
        started = datetime.now(UTC)
        problems = check_request(request)
        if request.callback_url:
            problems += await self._check_callback(request.callback_url)
        if problems:
            raise InvalidInput.of(problems)
        fingerprint = idempotency.fingerprint(request)
        if request.idempotency_key:
            replayed = await self._replay(tenant, request, fingerprint)
            if replayed is not None:
                return replayed
        own_limit = (await self.limits.get(tenant)).max_pending_passes if self.limits is not None else 0
        await self.budget.check(tenant, 1, own_limit)

        params = dict(request.params)
        if request.input_image_id:
            params.pop("input_image_url", None)
        if request.mask_image_id:
            params.pop("mask_image_url", None)
        info = await self.info.get()
        try:
            parsed = await self.clients.parse(
                request.prompt,
                params,
                has_input_image=bool(request.input_image_id),
                has_mask_image=bool(request.mask_image_id),
                native_size=native_side(info, self._base_model(info)),
            )
        except InvalidInput as error:
            raise in_request_terms(error, request) from error
        base_model, person_model = self._models(info)
        has_input = bool(request.input_image_id or parsed.params.input_image_url)
        self._check_capabilities(parsed, info, has_input, (base_model, person_model))

        job_id = new_job_id()
        record_written = False  # whether the record's write was attempted (it may exist even if it failed)
        try:
            # The tunes are checked while the inputs are prepared and the persons laid out (a refused
            # tune discards what the other stored).
            (tune_files, references), (prepared, layout) = await _both(
                check_prompt_tunes(self.tunes, tenant, parsed, info, base_model, person_model),
                self.inputs.prepare_and_lay_out(tenant, job_id, request, parsed, info, base_model),
            )
            record = self._plan(
                tenant,
                job_id,
                request,
                parsed,
                prepared,
                layout,
                tune_files=tune_files,
                references=references,
                info=info,
                models=(base_model, person_model),
                started=started,
            )
            outcome = job_state.start(
                record, datetime.now(UTC), max_batch=self.settings.limits.max_base_batch
            )
            job_state.commit(record, outcome, datetime.now(UTC))
            cost = job_state.remaining_passes(record)
            await self.budget.check(tenant, cost, own_limit)
            record_written = True
            await self._store(record, cost)
            if still_authorised is not None:
                await still_authorised()
        except BaseException:
            await self.cleanup.discard(tenant, job_id, record=record_written)
            raise
        if request.idempotency_key:
            binding = idempotency.Binding(job_id, fingerprint, tuple(record.job.warnings))
            winner = await self._claim_idempotency(tenant, request.idempotency_key, binding)
            if winner is not None:
                await self.cleanup.discard(tenant, job_id, record=True)
                return idempotency.replay(winner, request.idempotency_key, fingerprint)
        try:
            await self.jobs.flush(record)
        except MultipassError as error:
            # The job is stored with its outbox: the sweeper publishes it, so the id stands.
            log.warning(
                "first passes not published yet; the sweeper will",
                extra={"job_id": job_id, "error": str(error)},
            )
        metrics.JOBS_SUBMITTED.inc()
        self.job_end.usage.submitted(tenant)
        log.info(
            "job submitted",
            extra={"job_id": job_id, "tenant": tenant, "images": len(record.job.images), "passes": cost},
        )
        if outcome.finished:
            await self.job_end.finished(record)
        return jobs_pb2.SubmitJobResponse(job_id=job_id, existing=False, warnings=list(record.job.warnings))

    # checks ----------------------------------------------------------------------------------------

    async def _check_callback(self, url: str) -> list[Violation]:
        if not self.settings.callbacks.signing_key:
            raise FailedPrecondition(
                "callbacks are disabled on this gateway (MULTIPASS_CALLBACK_SIGNING_KEY is not set)",
                violations=[Violation("callback_url", "callbacks are disabled on this gateway")],
                reason=Reason.CALLBACKS_DISABLED,
            )
        try:
            await self.http.check_url(url)
        except FetchError as error:
            return [Violation("callback_url", error.reason)]
        return []

    def _base_model(self, info: diffusion_pb2.InfoResponse) -> str:
        return self.settings.base_model or (info.models[0] if info.models else "")

    def _models(self, info: diffusion_pb2.InfoResponse) -> tuple[str, str]:
        base = self._base_model(info)
        person = self.settings.person_model or base
        missing = [name for name in dict.fromkeys((base, person)) if name not in info.models]
        if missing:
            installed = ", ".join(info.models) or "none"
            raise FailedPrecondition(
                f"model {', '.join(missing) or '(none)'} is not served by the diffusion workers (served: {installed})",
                reason=Reason.MODEL_NOT_SERVED,
            )
        return base, person

    def _check_capabilities(
        self,
        parsed: prompt_pb2.ParsedPrompt,
        info: diffusion_pb2.InfoResponse,
        has_input: bool,
        models: tuple[str, str],
    ) -> None:
        installed = set(info.capabilities)
        needs = requirements.required_capabilities(
            parsed, has_input_image=has_input, complete=requirements.is_capability_complete(installed)
        )
        needs = requirements.per_model(needs, installed, models[0])  # the base pass's model
        needs += faceid_capabilities(parsed, *models)

        def family_of(capability: str) -> str:
            """The family a fix must fit: the model a FaceID capability names, else the base model's."""
            kind, _, model = capability.partition(":")
            return requirements.model_family(info, model if kind == "faceid" and model else models[0])

        missing = requirements.missing_components(needs, installed, family_of)
        if missing:
            fix = requirements.pull_command(missing)
            features = ",".join(dict.fromkeys(m.feature for m in missing if m.feature))
            metadata = {"capabilities": ",".join(m.capability for m in missing)}
            metadata.update({"features": features} if features else {})
            metadata.update({"fixCommand": fix} if fix else {})
            raise FailedPrecondition(
                "the request needs components that are not installed: "
                + "; ".join(m.field for m in missing)
                + (f" (install them with `{fix}`)" if fix else ""),
                violations=[m.violation() for m in missing],
                reason=Reason.COMPONENT_NOT_INSTALLED,
                metadata=metadata,
            )

    # the record --------------------------------------------------------------------------------------

    async def _store(self, record: events_pb2.JobRecord, cost: int) -> None:
        """Write the job's pending-work marker and its record together; on a failure of either, the caller's
        cleanup removes both (a write that timed out may still have been stored)."""
        marked, created = await asyncio.gather(
            self.budget.add(record.tenant, record.job.job_id, cost),
            self.jobs.create(record),
            return_exceptions=True,
        )
        _raise_first(marked, created)

    def _plan(
        self,
        tenant: str,
        job_id: str,
        request: jobs_pb2.SubmitJobRequest,
        parsed: prompt_pb2.ParsedPrompt,
        prepared: Prepared,
        layout: segmentation_pb2.LayoutResponse | None,
        *,
        tune_files: dict[str, common_pb2.ObjectRef],
        references: dict[str, list[common_pb2.ImageRef]],
        info: diffusion_pb2.InfoResponse,
        models: tuple[str, str],
        started: datetime,
    ) -> events_pb2.JobRecord:
        """The job's record, planned from its prompt, inputs and person layout."""
        base_model, person_model = models
        capabilities = frozenset(info.capabilities)
        seed = parsed.params.seed if parsed.params.HasField("seed") else secrets.randbelow(2**32)
        slots: list[segmentation_pb2.Slot] = []
        pose_image = None
        warnings: list[str] = []
        if layout is not None:
            slots = list(layout.slots)
            if layout.HasField("pose_image") and layout.pose_image.key:
                pose_image = layout.pose_image
            warnings = [f"layout: {w}" for w in layout.warnings]
        config = planner.PlannerConfig(
            base_model=base_model,
            person_model=person_model,
            capabilities=capabilities,
            hires_scale=self.settings.hires_scale,
            upscale_factor=self.settings.upscale_factor,
            crop_padding=self.settings.pass_tuning.crop_padding,
            crop_factor=self.settings.pass_tuning.crop_factor,
            mask_blur=self.settings.pass_tuning.mask_blur,
            faces_denoising_strength=self.settings.pass_tuning.faces_denoising_strength,
            person_pose_scale=self.settings.pass_tuning.person_pose_scale,
            parallel_working_size=person_stages.parallel_working_size(
                info, person_model, enabled=self.settings.parallel_persons
            ),
        )
        inputs = planner.JobInputs(
            seed=seed,
            width=prepared.width,
            height=prepared.height,
            input_image=prepared.input_image,
            mask_image=prepared.mask_image,
            pose_image=pose_image,
            slots=slots,
            tune_files=tune_files,
            reference_images=references,
        )
        return planner.job_record(
            tenant, job_id, request, parsed, inputs, config, created=started, warnings=warnings
        )

    async def _claim_idempotency(
        self, tenant: str, key: str, binding: idempotency.Binding
    ) -> idempotency.Binding | None:
        """None when we bound the key first, else the binding of the submit that did."""
        store_key = idempotency_kv_key(tenant, key)
        try:
            await self.idempotency.create(store_key, binding.encode())
            return None
        except KvConflict:
            found = await self.idempotency.get(store_key)
            if found is None:
                raise
            return idempotency.Binding.decode(found.value)
