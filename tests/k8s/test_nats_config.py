"""The NATS configuration in the nats-config ConfigMap, checked by the real nats-server.

The rendered nats.conf of each overlay must pass ``nats-server -t``; the dev configuration then runs on
loopback with the dev Secret's passwords, and the per-user subject permissions are exercised with
nats-py: what the gateway and the diffusion worker do is allowed, the rest is refused.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nats
import pytest
from k8s_manifests import env_of, generated_base_name, main_container, of_kind, one, pod_spec
from k8s_render import rendered

from multipass import names
from multipass.bus import Bus
from multipass.errors import Unavailable
from multipass_dev.local.process import reserve_ports

NATS_SERVER = Path(sys.executable).with_name("nats-server")


def nats_config(resources: list[dict]) -> dict[str, str]:
    statefulset = one(resources, "StatefulSet", "nats")
    name = next(v["configMap"]["name"] for v in pod_spec(statefulset)["volumes"] if "configMap" in v)
    return one(resources, "ConfigMap", name)["data"]


def dev_passwords() -> dict[str, str]:
    secret = next(
        s
        for s in of_kind(rendered("dev"), "Secret")
        if generated_base_name(s["metadata"]["name"]) == "nats-users"
    )
    return {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}


def server_environment(resources: list[dict], passwords: dict[str, str]) -> dict[str, str]:
    """The NATS container's environment as Kubernetes would set it, from the dev Secret's values."""
    env = {}
    for item in main_container(one(resources, "StatefulSet", "nats"))["env"]:
        source = item.get("valueFrom", {})
        if "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "metadata.name"
            env[item["name"]] = "nats-0"
        elif "secretKeyRef" in source:
            env[item["name"]] = passwords[source["secretKeyRef"]["key"]]
        else:
            env[item["name"]] = item["value"]
    return env


def write_config(resources: list[dict], directory: Path) -> Path:
    for file_name, content in nats_config(resources).items():
        (directory / file_name).write_text(content)
    return directory / "nats.conf"


def test_config_variables_are_all_provided_by_the_statefulset(resources):
    text = "\n".join(nats_config(resources).values())
    referenced = set(re.findall(r"\$([A-Z_][A-Z0-9_]*)", re.sub(r"\"[^\"]*\"", "", text)))
    provided = {item["name"] for item in main_container(one(resources, "StatefulSet", "nats"))["env"]}
    assert referenced == provided


def test_nats_server_accepts_the_rendered_config(resources, tmp_path):
    config = write_config(resources, tmp_path)
    env = {"PATH": os.environ["PATH"], **server_environment(resources, dev_passwords())}
    result = subprocess.run(
        [str(NATS_SERVER), "-t", "-c", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert "is valid" in result.stderr + result.stdout


def test_prod_config_clusters_jetstream(prod):
    text = "\n".join(nats_config(prod).values())
    assert re.search(r"^jetstream \{", text, re.M)
    assert re.search(r"^\s*cluster \{", text, re.M)
    assert re.search(r"^server_name: \$POD_NAME$", text, re.M), (
        "JetStream clustering needs unique server names"
    )


@pytest.fixture(scope="module")
def dev_nats(tmp_path_factory):
    """nats-server with the dev nats.conf on loopback; only addresses and paths are overridden."""
    yield from _dev_nats_server(tmp_path_factory.mktemp("nats"))


@pytest.fixture
def fresh_dev_nats(tmp_path):
    """The same, empty: no stream exists yet."""
    yield from _dev_nats_server(tmp_path)


def _dev_nats_server(directory: Path):
    resources = rendered("dev")
    config = write_config(resources, directory)
    port, monitor = reserve_ports(2)
    env = {"PATH": os.environ["PATH"], **server_environment(resources, dev_passwords())}
    command = [str(NATS_SERVER), "-c", str(config), "-a", "127.0.0.1", "-p", str(port), "-m", str(monitor)]
    command += ["-sd", str(directory / "js"), "-P", str(directory / "nats.pid")]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(
                    f"http://127.0.0.1:{monitor}/healthz?js-enabled-only=true", timeout=1
                ).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("nats-server did not start with the dev config") from None
                time.sleep(0.1)
        yield f"nats://127.0.0.1:{port}", dev_passwords()
    finally:
        process.terminate()
        process.wait(timeout=10)


async def _connect(url: str, user: str | None, password: str | None, errors: list[str]):
    async def on_error(error):
        errors.append(str(error))

    return await nats.connect(
        url, user=user, password=password, error_cb=on_error, allow_reconnect=False, connect_timeout=2
    )


def _service_url(resources: list[dict], service: str, server_url: str, passwords: dict[str, str]) -> str:
    """The service's MULTIPASS_NATS_URL as its pod sees it, pointed at the test server."""
    env = {item["name"]: item for item in main_container(one(resources, "Deployment", service))["env"]}
    password_key = env["NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"]
    url = env["MULTIPASS_NATS_URL"]["value"].replace("$(NATS_PASSWORD)", passwords[password_key])
    return url.replace("@nats:4222", "@" + server_url.removeprefix("nats://"))


def _nats_errors(caplog) -> list[str]:
    return [str(getattr(r, "error", "")).lower() for r in caplog.records if r.name == "multipass.bus"]


async def test_a_worker_started_before_the_gateway_waits_for_the_streams_it_may_not_create(fresh_dev_nats):
    """The diffusion worker's own start-up call, with its pod's credentials: its user may not create
    streams, so it waits until the gateway has (it used to fail its start on the refused create)."""
    server_url, passwords = fresh_dev_nats
    resources = rendered("dev")
    gateway = await Bus.connect(_service_url(resources, "gateway", server_url, passwords), name="gateway")
    diffusion = await Bus.connect(
        _service_url(resources, "diffusion", server_url, passwords), name="diffusion"
    )
    wanted = (names.STREAM_PASSES, names.STREAM_EVENTS)
    try:
        with pytest.raises(Unavailable, match="is the gateway running"):
            await diffusion.await_streams(wanted, timeout=0.5, poll=0.1)
        waiting = asyncio.create_task(diffusion.await_streams(wanted, timeout=60, poll=0.1))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await gateway.ensure_topology()
        await asyncio.wait_for(waiting, 20)
        await asyncio.wait_for(diffusion.await_streams(wanted, timeout=1), 5)  # present: returns at once
    finally:
        await diffusion.close()
        await gateway.close()


async def test_gateway_and_diffusion_do_their_work_and_nothing_more(dev_nats, caplog):
    """The services' own bus code, with the credentials and URLs of their pods."""
    caplog.set_level(logging.WARNING, logger="multipass.bus")
    server_url, passwords = dev_nats
    resources = rendered("dev")
    model = env_of(main_container(one(resources, "Deployment", "diffusion")), resources)[
        "MULTIPASS_DIFFUSION_MODELS"
    ]
    gateway = await Bus.connect(_service_url(resources, "gateway", server_url, passwords), name="gateway")
    diffusion = await Bus.connect(
        _service_url(resources, "diffusion", server_url, passwords), name="diffusion"
    )
    try:
        # the gateway creates the streams and KV buckets, records a job, enqueues a pass
        await gateway.ensure_topology()
        await diffusion.await_streams((names.STREAM_PASSES, names.STREAM_EVENTS), timeout=5)
        await gateway.kv_update(names.KV_JOBS, "j1", lambda current: b"record")
        await gateway.publish(
            names.diffusion_pass_subject(model), b"pass-1", msg_id=names.pass_msg_id("j1", 0, "base", 1)
        )
        await gateway.publish(names.job_event_subject("j1"), b"accepted", msg_id="j1:accepted")
        events = await gateway.js.pull_subscribe(
            names.EVENTS_SUBJECTS, durable="gateway-events", stream=names.STREAM_EVENTS
        )
        cancels: asyncio.Queue = asyncio.Queue()
        await diffusion.subscribe_core(names.CANCEL_ALL, cancels.put)

        # the worker creates its durable consumer, pulls, acks, reports
        durable = names.diffusion_durable(model)
        await diffusion.ensure_consumer(
            stream=names.STREAM_PASSES,
            durable=durable,
            filter_subject=names.diffusion_pass_subject(model),
            ack_wait=30,
            max_deliver=3,
            max_ack_pending=4,
        )
        passes = await diffusion.js.pull_subscribe_bind(durable=durable, stream=names.STREAM_PASSES)
        (message,) = await passes.fetch(1, timeout=2)
        assert message.data == b"pass-1"
        await message.in_progress()
        await message.ack()
        await diffusion.publish(
            names.event_subject("j1", names.EVENT_COMPLETED),
            b"done",
            msg_id=names.pass_msg_id("j1", 0, "base", 1, "completed"),
        )
        (event,) = await events.fetch(1, timeout=2)
        assert event.data == b"done"
        await event.ack()

        # the gateway pulls its own passes (segment, mask, faces) from the work queue and acks them
        await gateway.ensure_consumer(
            stream=names.STREAM_PASSES,
            durable=names.GATEWAY_PASS_DURABLE,
            filter_subject=names.GATEWAY_PASS_SUBJECT,
            ack_wait=30,
            max_deliver=3,
            max_ack_pending=4,
        )
        await gateway.publish(
            names.GATEWAY_PASS_SUBJECT, b"segment-1", msg_id=names.pass_msg_id("j1", 0, "segment", 1)
        )
        own = await gateway.js.pull_subscribe_bind(
            durable=names.GATEWAY_PASS_DURABLE, stream=names.STREAM_PASSES
        )
        (step,) = await own.fetch(1, timeout=2)
        assert step.data == b"segment-1"
        await step.in_progress()
        await step.ack_sync(timeout=2)  # refused (and so timed out) without the permission
        info = await gateway.js.consumer_info(names.STREAM_PASSES, names.GATEWAY_PASS_DURABLE)
        assert info.num_ack_pending == 0 and info.num_redelivered == 0

        # a cancel from the gateway reaches the worker
        await gateway.publish_core(names.cancel_subject("j1"), b"")
        cancel = await asyncio.wait_for(cancels.get(), 2)
        assert cancel.subject == "multipass.cancel.j1"
        assert not _nats_errors(caplog), _nats_errors(caplog)

        # gateway replicas tell each other their scheduler and budget writes on core NATS
        notes: asyncio.Queue = asyncio.Queue()
        peer = await Bus.connect(_service_url(resources, "gateway", server_url, passwords), name="gateway-2")
        try:
            await peer.nc.subscribe(names.GATEWAY_NOTES, cb=notes.put)
            await peer.nc.flush(timeout=2)
            # Notes are core NATS, at most once, and the product tolerates a lost one: the first note
            # published right after a new connection subscribed was seen to never arrive (about 1 run in
            # 15, the flush notwithstanding), so the note goes again until one arrives.
            note = None
            for _ in range(10):
                await gateway.publish_core(names.GATEWAY_NOTES, b"+ sched.ready.t.j.0.base.1")
                with contextlib.suppress(TimeoutError):
                    note = await asyncio.wait_for(notes.get(), 0.5)
                    break
            assert note is not None and note.data == b"+ sched.ready.t.j.0.base.1"
        finally:
            await peer.close()
        assert not _nats_errors(caplog), _nats_errors(caplog)

        # a pass nobody finished: its max-deliveries advisory is kept in a stream; the gateway pulls it,
        # withdraws the abandoned request and acks the advisory
        await gateway.ensure_consumer(
            stream=names.STREAM_PASSES,
            durable="abandoned-probe",
            filter_subject="multipass.pass.diffusion.probe",
            ack_wait=1,
            max_deliver=1,
            max_ack_pending=1,
        )
        await gateway.publish("multipass.pass.diffusion.probe", b"pass-2", msg_id="probe:0:base:1")
        probe = await gateway.js.pull_subscribe_bind(durable="abandoned-probe", stream=names.STREAM_PASSES)
        (never_answered,) = await probe.fetch(1, timeout=2)
        await gateway.ensure_consumer(
            stream=names.STREAM_ADVISORIES,
            durable=names.ABANDONED_PASSES_DURABLE,
            filter_subject=names.PASS_MAX_DELIVERIES_ADVISORY,
            ack_wait=30,
            max_deliver=20,
            max_ack_pending=8,
        )
        advisories = await gateway.js.pull_subscribe_bind(
            durable=names.ABANDONED_PASSES_DURABLE, stream=names.STREAM_ADVISORIES
        )
        (advisory,) = await advisories.fetch(1, timeout=10)
        content = json.loads(advisory.data)
        assert content["consumer"] == "abandoned-probe"
        assert content["stream_seq"] == never_answered.metadata.sequence.stream
        assert await gateway.delete_message(names.STREAM_PASSES, content["stream_seq"])
        await advisory.ack_sync(timeout=2)
        await probe.unsubscribe()
        await advisories.unsubscribe()
        assert not _nats_errors(caplog), _nats_errors(caplog)

        # the worker may not enqueue passes, read events, touch job records, manage streams or forge notes
        await diffusion.nc.publish(names.GATEWAY_NOTES, b"forged")
        await diffusion.nc.publish(names.diffusion_pass_subject(model), b"forged")
        await diffusion.nc.publish(f"$KV.{names.KV_JOBS}.j1", b"forged")
        await diffusion.nc.subscribe(names.EVENTS_SUBJECTS)
        await diffusion.nc.flush(timeout=2)
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.Error)):
            await diffusion.nc.jetstream(timeout=1).delete_stream(names.STREAM_PASSES)
        # the gateway's own passes (segment, mask, faces) report their results as pass events
        await gateway.publish(
            names.event_subject("j1", names.EVENT_COMPLETED),
            b"segmented",
            msg_id=names.pass_msg_id("j1", 0, "segment", 1, "completed"),
        )
        (event,) = await events.fetch(1, timeout=2)
        assert event.data == b"segmented"
        await event.ack()
        refused = [
            f'publish to "{names.diffusion_pass_subject(model)}"',
            f'publish to "{names.GATEWAY_NOTES}"',
            f'publish to "$kv.{names.KV_JOBS}.j1"',
            f'subscription to "{names.EVENTS_SUBJECTS}"',
            f'publish to "$js.api.stream.delete.{names.STREAM_PASSES.lower()}"',
        ]

        def unreported() -> list[str]:
            errors = _nats_errors(caplog)
            return [r for r in refused if not any("permissions violation" in e and r in e for e in errors)]

        deadline = time.monotonic() + 5  # the server's -ERR lines reach the error callback asynchronously
        while unreported() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not unreported(), (unreported(), _nats_errors(caplog))
        info = await gateway.js.stream_info(names.STREAM_PASSES)
        assert info.state.messages == 0
        assert (await (await gateway.kv(names.KV_JOBS)).get("j1")).value == b"record"
    finally:
        await diffusion.close()
        await gateway.close()


async def test_anonymous_and_wrong_passwords_are_refused(dev_nats):
    url, passwords = dev_nats
    for user, password in ((None, None), ("gateway", passwords["diffusion-password"]), ("admin", "admin")):
        errors: list[str] = []
        with pytest.raises(Exception):  # noqa: B017 - nats-py raises different types per transport state
            await _connect(url, user, password, errors)
        assert any("authorization" in e.lower() for e in errors), errors


def test_store_and_pid_file_live_on_their_volumes(resources):
    container = main_container(one(resources, "StatefulSet", "nats"))
    command = container["command"]
    options = dict(zip(command[1::2], command[2::2], strict=True))
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert options["--config"] == f"{mounts['config']}/nats.conf"
    assert options["--store_dir"].startswith(mounts["data"] + "/")
    assert options["--pid"].startswith(mounts["pid"] + "/")
    assert container["lifecycle"]["preStop"]["exec"]["command"] == [
        "nats-server",
        "--signal",
        f"ldm={options['--pid']}",
    ]
