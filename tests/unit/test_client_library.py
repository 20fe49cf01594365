"""The typed client and the client commands against an in-process gRPC server that records every call.

The server is a scripted test double of the public API (the real gateway is exercised in tests/e2e); it
lets these tests pin what the client sends (credentials, chunks, page tokens, resume sequence numbers)
and how it reports failures.
"""

from __future__ import annotations

import hashlib
import io
import json
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from PIL import Image

from multipass.v1 import admin_pb2, admin_pb2_grpc, common_pb2, jobs_pb2, jobs_pb2_grpc
from multipass_client import connect, describe_rpc_error
from multipass_client.cli.main import main
from multipass_client.downloads import download_job

MiB = 1024 * 1024


def _invalid(context, field: str, description: str) -> None:
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=f"invalid {field}: {description}")
    bad = error_details_pb2.BadRequest(
        field_violations=[error_details_pb2.BadRequest.FieldViolation(field=field, description=description)]
    )
    status.details.add().Pack(bad)
    context.abort_with_status(rpc_status.to_status(status))


class RecordingApi(jobs_pb2_grpc.JobsServicer, jobs_pb2_grpc.TunesServicer, admin_pb2_grpc.AdminServicer):
    def __init__(self):
        self.metadata: list[dict[str, str]] = []
        self.uploads: list[list[jobs_pb2.UploadImageRequest]] = []
        self.registrations: list[list[jobs_pb2.RegisterTuneRequest]] = []
        self.submits: list[jobs_pb2.SubmitJobRequest] = []
        self.deleted_uploads: list[str] = []
        self.list_requests: list[jobs_pb2.ListJobsRequest] = []
        self.watch_requests: list[jobs_pb2.WatchJobRequest] = []
        self.job = jobs_pb2.Job(job_id="job-1", state=jobs_pb2.JOB_STATE_SUCCEEDED, progress=1.0)
        self.events = [
            jobs_pb2.JobEvent(
                sequence=1, job_id="job-1", accepted=jobs_pb2.JobAccepted(num_images=1, num_persons=2)
            ),
            jobs_pb2.JobEvent(
                sequence=2, job_id="job-1", pass_started=jobs_pb2.JobPassStarted(pass_name="base")
            ),
            jobs_pb2.JobEvent(
                sequence=3,
                job_id="job-1",
                step_progress=jobs_pb2.JobStepProgress(pass_name="base", step=1, steps_total=2),
            ),
            jobs_pb2.JobEvent(
                sequence=4,
                job_id="job-1",
                progress=1.0,
                finished=jobs_pb2.JobFinished(state=jobs_pb2.JOB_STATE_SUCCEEDED),
            ),
        ]
        self.break_watch_after: int | None = None
        self.all_jobs = [
            jobs_pb2.Job(job_id=f"job-{i}", state=jobs_pb2.JOB_STATE_SUCCEEDED) for i in range(7)
        ]

    def _seen(self, context) -> None:
        self.metadata.append({k: v for k, v in context.invocation_metadata()})

    def SubmitJob(self, request, context):
        self._seen(context)
        self.submits.append(request)
        if request.params.get("steps") == "0":
            _invalid(context, "params.steps", "got '0'; expected an integer in 1..50")
        if "<lora:849330" in request.prompt:
            status = status_pb2.Status(code=code_pb2.NOT_FOUND, message="unknown tune 849330")
            status.details.add().Pack(error_details_pb2.ErrorInfo(reason="UNKNOWN_TUNE", domain="multipass"))
            context.abort_with_status(rpc_status.to_status(status))
        return jobs_pb2.SubmitJobResponse(job_id="job-1", warnings=["hires_fix implied by super_resolution"])

    def UploadImage(self, request_iterator, context):
        self._seen(context)
        parts = list(request_iterator)
        self.uploads.append(parts)
        return jobs_pb2.UploadImageResponse(image_id="upload-1")

    def DeleteUpload(self, request, context):
        self._seen(context)
        self.deleted_uploads.append(request.image_id)
        if request.image_id != "upload-1":
            context.abort(grpc.StatusCode.NOT_FOUND, f"no uploaded image {request.image_id!r}")
        return jobs_pb2.DeleteUploadResponse()

    def GetJob(self, request, context):
        self._seen(context)
        if request.job_id != self.job.job_id:
            context.abort(grpc.StatusCode.NOT_FOUND, f"job {request.job_id} not found")
        return self.job

    def WatchJob(self, request, context):
        self._seen(context)
        self.watch_requests.append(request)
        for event in self.events:
            if event.sequence <= request.after_sequence:
                continue
            if self.break_watch_after is not None and event.sequence > self.break_watch_after:
                self.break_watch_after = None  # break once, then serve the rest on the resumed call
                context.abort(grpc.StatusCode.UNAVAILABLE, "gateway restarting")
            yield event

    def ListJobs(self, request, context):
        self._seen(context)
        self.list_requests.append(request)
        start = int(request.page_token or 0)
        page = self.all_jobs[start : start + request.page_size]
        following = start + request.page_size
        return jobs_pb2.ListJobsResponse(
            jobs=page, next_page_token=str(following) if following < len(self.all_jobs) else ""
        )

    def CancelJob(self, request, context):
        self._seen(context)
        return jobs_pb2.CancelJobResponse(state=jobs_pb2.JOB_STATE_CANCELLED, cancelled=True)

    def DeleteJob(self, request, context):
        self._seen(context)
        self.deleted = getattr(self, "deleted", []) + [request.job_id]
        return jobs_pb2.DeleteJobResponse(
            state=jobs_pb2.JOB_STATE_SUCCEEDED, objects_deleted=4, message="deleted with 4 stored object(s)"
        )

    def RegisterTune(self, request_iterator, context):
        self._seen(context)
        parts = list(request_iterator)
        self.registrations.append(parts)
        data = b"".join(p.chunk for p in parts[1:])
        return jobs_pb2.Tune(
            tune_id="123", name=parts[0].metadata.name, file=common_pb2.ObjectRef(size=len(data))
        )

    def CreateTenant(self, request, context):
        self._seen(context)
        return admin_pb2.CreateTenantResponse(tenant=request.name, api_key="mpk_new", key_id="k1")


@pytest.fixture
def api():
    servicer = RecordingApi()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4), options=[("grpc.max_receive_message_length", 8 * MiB)]
    )
    jobs_pb2_grpc.add_JobsServicer_to_server(servicer, server)
    jobs_pb2_grpc.add_TunesServicer_to_server(servicer, server)
    admin_pb2_grpc.add_AdminServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    servicer.address = f"127.0.0.1:{port}"
    yield servicer
    server.stop(grace=None)


def test_every_call_carries_the_api_key_as_a_bearer_token(api):
    with connect(api.address, api_key="mpk_abc") as client:
        client.jobs.submit("a cat", {"steps": "2"})
        client.jobs.get("job-1")
        list(client.jobs.watch("job-1"))
    assert [m.get("authorization") for m in api.metadata] == ["Bearer mpk_abc"] * 3
    assert api.submits[0].params == {"steps": "2"}


def test_admin_calls_carry_the_admin_token(api):
    with connect(api.address, admin_token="mpa_secret") as client:
        created = client.admin.create_tenant("acme")
    assert created.api_key == "mpk_new"
    assert api.metadata[-1]["x-multipass-admin-token"] == "mpa_secret"
    assert "authorization" not in api.metadata[-1]


def test_uploads_stream_the_filename_then_chunks_of_at_most_one_mebibyte(api, tmp_path):
    data = bytes(range(256)) * (10 * 1024 + 1)  # 2.5 MiB and a bit
    path = tmp_path / "photo.png"
    path.write_bytes(data)
    with connect(api.address, api_key="k") as client:
        assert client.jobs.upload_image(path).image_id == "upload-1"
    parts = api.uploads[0]
    assert parts[0].WhichOneof("part") == "filename" and parts[0].filename == "photo.png"
    chunks = [p.chunk for p in parts[1:]]
    assert [len(c) for c in chunks] == [MiB, MiB, len(data) - 2 * MiB]
    assert b"".join(chunks) == data


def test_tune_registration_sends_metadata_with_the_sha256_first(api, tmp_path):
    lora = tmp_path / "anna.safetensors"
    lora.write_bytes(b"\x01" * (MiB + 5))
    with connect(api.address, api_key="k") as client:
        tune = client.tunes.register(
            lora, token="ohwx", class_name="woman", base_family="sd15", characteristics={"eye_color": "green"}
        )
    metadata = api.registrations[0][0].metadata
    assert dict(metadata.characteristics) == {"eye_color": "green"}
    assert (metadata.token, metadata.class_name, metadata.base_family, metadata.kind) == (
        "ohwx",
        "woman",
        "sd15",
        "lora",
    )
    assert metadata.name == "anna"
    assert metadata.sha256 == hashlib.sha256(lora.read_bytes()).hexdigest()
    assert tune.file.size == MiB + 5


def test_listing_follows_page_tokens_and_stops_at_the_limit(api):
    with connect(api.address, api_key="k") as client:
        assert [j.job_id for j in client.jobs.list(page_size=3)] == [f"job-{i}" for i in range(7)]
        api.list_requests.clear()
        assert [
            j.job_id for j in client.jobs.list(limit=4, page_size=3, states=[jobs_pb2.JOB_STATE_SUCCEEDED])
        ] == [
            "job-0",
            "job-1",
            "job-2",
            "job-3",
        ]
    assert [(r.page_size, r.page_token) for r in api.list_requests] == [(3, ""), (1, "3")]
    assert list(api.list_requests[0].states) == [jobs_pb2.JOB_STATE_SUCCEEDED]


def test_a_broken_watch_resumes_after_the_last_sequence_received(api):
    api.break_watch_after = 2
    with connect(api.address, api_key="k") as client:
        sequences = [e.sequence for e in client.jobs.watch("job-1", resume_delay=0.01)]
    assert sequences == [1, 2, 3, 4]
    assert [r.after_sequence for r in api.watch_requests] == [0, 2]


def test_errors_show_the_code_and_every_field_violation(api):
    with connect(api.address, api_key="k") as client, pytest.raises(grpc.RpcError) as caught:
        client.jobs.submit("a cat", {"steps": "0"})
    text = describe_rpc_error(caught.value)
    assert text.splitlines()[0].startswith("INVALID_ARGUMENT: invalid params.steps")
    assert "  params.steps: got '0'; expected an integer in 1..50" in text.splitlines()


def test_cli_submit_prints_the_job_id_and_reports_failures(api, capsys):
    assert main(["submit", "a cat", "--param", "steps=2", "--addr", api.address, "--api-key", "mpk_x"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "job-1"
    assert "warning: hires_fix implied by super_resolution" in err
    assert main(["submit", "a cat", "--param", "steps=0", "--addr", api.address, "--api-key", "mpk_x"]) == 1
    _, err = capsys.readouterr()
    assert "INVALID_ARGUMENT" in err and "params.steps: got '0'" in err
    assert main(["submit", "a cat", "--param", "steps", "--addr", api.address, "--api-key", "mpk_x"]) == 2
    # A tune id the tenant does not have (the examples' placeholders): where tunes come from.
    assert (
        main(["submit", "x BREAK BREAK ohwx woman <lora:849330:1>", "--addr", api.address, "--api-key", "k"])
        == 1
    )
    _, err = capsys.readouterr()
    assert "UNKNOWN_TUNE" in err and "multipass tunes list" in err and "multipass demo --prompt-file" in err


def test_cli_input_image_is_uploaded_when_local_and_passed_as_url_otherwise(api, tmp_path, capsys):
    image = tmp_path / "in.png"
    Image.new("RGB", (8, 8)).save(image)
    common = ["--addr", api.address, "--api-key", "k"]
    assert (
        main(
            ["submit", "x", "--input-image", str(image), "--mask-image", "https://example.com/m.png", *common]
        )
        == 0
    )
    request = api.submits[-1]
    assert request.input_image_id == "upload-1"
    assert request.params["mask_image_url"] == "https://example.com/m.png"
    assert "input_image_url" not in request.params
    # The job has its copy: the upload (a photo, maybe of a person) is deleted at once, also when the
    # submit is refused.
    assert api.deleted_uploads == ["upload-1"]
    assert main(["submit", "x", "--input-image", str(image), "--param", "steps=0", *common]) == 1
    assert api.deleted_uploads == ["upload-1", "upload-1"]


def test_cli_get_json_uses_proto_field_names_and_not_found_exits_non_zero(api, capsys):
    assert main(["get", "job-1", "--json", "--addr", api.address, "--api-key", "k"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["job_id"] == "job-1" and data["state"] == "JOB_STATE_SUCCEEDED"
    assert main(["get", "nope", "--addr", api.address, "--api-key", "k"]) == 1
    assert "NOT_FOUND: job nope not found" in capsys.readouterr().err


def test_cli_watch_prints_events_from_the_given_sequence(api, capsys):
    assert main(["watch", "job-1", "--from-seq", "2", "--addr", api.address, "--api-key", "k"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["#3", "#4"]
    assert "finished: SUCCEEDED" in lines[-1]


def test_cli_tenants_create_prints_only_the_key_on_stdout(api, capsys):
    assert main(["tenants", "create", "acme", "--addr", api.address, "--admin-token", "mpa_t"]) == 0
    out, err = capsys.readouterr()
    assert out == "mpk_new\n"
    assert "key id k1" in err


def test_cli_callback_key_help_names_every_callback_the_key_signs(capsys):
    with pytest.raises(SystemExit):
        main(["callback-key", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "callback_url" in text and "prompt[callback]" in text and "tune[callback]" in text


def test_cli_without_credentials_says_how_to_get_them(api, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MULTIPASS_STACK_DIR", str(tmp_path / "none"))
    monkeypatch.delenv("MULTIPASS_API_KEY", raising=False)
    assert main(["get", "job-1", "--addr", api.address]) == 2
    assert "MULTIPASS_API_KEY" in capsys.readouterr().err


class DictReader:
    def __init__(self, objects: dict[tuple[str, str], bytes]):
        self.objects = objects

    def read(self, bucket: str, key: str) -> bytes:
        return self.objects[(bucket, key)]


def png(colour, mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (32, 24), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_download_writes_passes_in_chain_order_masks_final_and_a_contact_sheet(tmp_path):
    bucket, prefix = "multipass-jobs", "jobs/t/job-9/image-0"
    objects = {
        (bucket, f"{prefix}/base.png"): png((200, 0, 0)),
        (bucket, f"{prefix}/person-0.png"): png((0, 200, 0)),
        (bucket, f"{prefix}/person-1.png"): png((0, 0, 200)),
        (bucket, f"{prefix}/mask-person-0.png"): png(255, "L"),
        (bucket, f"{prefix}/mask-person-1.png"): png(0, "L"),
        (bucket, f"{prefix}/final.png"): png((9, 9, 9)),
    }

    def ref(name):
        return common_pb2.ImageRef(bucket=bucket, key=f"{prefix}/{name}.png")

    job = jobs_pb2.Job(
        job_id="job-9",
        state=jobs_pb2.JOB_STATE_SUCCEEDED,
        images=[
            jobs_pb2.OutputImage(
                index=0,
                passes=[
                    jobs_pb2.PassState(name="prepare", kind="prepare"),
                    jobs_pb2.PassState(name="base", kind="base", output=ref("base")),
                    # The segment pass hands the base image on: no second copy is written.
                    jobs_pb2.PassState(name="segment", kind="segment", output=ref("base")),
                    jobs_pb2.PassState(name="person-0", output=ref("person-0")),
                    jobs_pb2.PassState(name="person-1", output=ref("person-1")),
                ],
                masks={"person-0": ref("mask-person-0"), "person-1": ref("mask-person-1")},
                final=ref("final"),
            )
        ],
    )
    result = download_job(job, tmp_path, DictReader(objects))
    image_dir = tmp_path / "job-9" / "image-0"
    assert sorted(p.name for p in image_dir.iterdir()) == [
        "00-base.png",
        "02-person-0.png",
        "03-person-1.png",
        "contact-sheet.png",
        "final.png",
        "mask-person-0.png",
        "mask-person-1.png",
    ]
    assert Image.open(image_dir / "02-person-0.png").getpixel((0, 0)) == (0, 200, 0)
    assert (
        json.loads((tmp_path / "job-9" / "job.json").read_text())["images"][0]["passes"][1]["name"] == "base"
    )
    assert result.missing == []
    sheet = Image.open(result.images[0].contact_sheet)
    assert sheet.width > 2 * 192 and sheet.height > 4 * 192  # masks and persons rows hold two tiles each


def test_download_reports_what_it_could_not_fetch(tmp_path):
    job = jobs_pb2.Job(
        job_id="job-8",
        images=[
            jobs_pb2.OutputImage(
                index=0,
                passes=[jobs_pb2.PassState(name="base", output=common_pb2.ImageRef(bucket="b", key="k.png"))],
            )
        ],
    )
    result = download_job(job, tmp_path, DictReader({}))
    assert len(result.missing) == 1 and result.missing[0].startswith("image-0/00-base.png: b/k.png")
    assert not (tmp_path / "job-8" / "image-0" / "00-base.png").exists()
    assert (tmp_path / "job-8" / "job.json").exists()


def test_demo_placeholders_map_to_new_tune_ids():
    from multipass_dev.stack.demo import find_placeholders, substitute_tunes

    prompt = Path(__file__).resolve().parents[2].joinpath("examples", "multi-person.prompt").read_text()
    placeholders = find_placeholders(prompt)
    assert [(p.tune_id, p.token, p.class_name) for p in placeholders] == [
        ("849330", "ohwx", "woman"),
        ("861629", "ohwx", "man"),
    ]
    replaced = substitute_tunes(prompt, {"849330": "17", "861629": "18"})
    assert "<lora:17:1>" in replaced and "<lora:18:1>" in replaced
    assert "849330" not in replaced and "861629" not in replaced
    assert (
        replaced.replace("<lora:17:1>", "<lora:849330:1>").replace("<lora:18:1>", "<lora:861629:1>") == prompt
    )


def test_cli_names_a_directory_given_as_a_file(tmp_path, capsys):
    assert (
        main(
            [
                "tunes",
                "register",
                str(tmp_path),
                "--token",
                "ohwx",
                "--class",
                "woman",
                "--family",
                "sd15",
                "--api-key",
                "k",
            ]
        )
        == 2
    )
    assert capsys.readouterr().err == f"multipass tunes: {tmp_path}: is a directory, not a tune file\n"


@pytest.mark.parametrize("value", ["-1", "x"])
def test_cli_watch_takes_only_a_sequence_from_zero_up(value, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["watch", "job-1", "--from-seq", value, "--api-key", "k"])
    assert exited.value.code == 2 and "expected a whole number >= 0" in capsys.readouterr().err


def test_cli_delete_deletes_the_job_and_says_what_it_was(api, capsys):
    assert main(["delete", "job-1", "--addr", api.address, "--api-key", "mpk_x"]) == 0
    assert capsys.readouterr().out.strip() == (
        "job-1: deleted (it was SUCCEEDED); deleted with 4 stored object(s)"
    )
    assert api.deleted == ["job-1"]


def test_a_faceid_tune_is_registered_from_reference_images_alone(api):
    with connect(api.address, api_key="k") as client:
        client.tunes.register(
            None,
            token="ohwx",
            class_name="woman",
            base_family="",
            kind="faceid",
            reference_image_ids=("a" * 24,),
        )
        with pytest.raises(ValueError, match="needs reference_image_ids"):
            client.tunes.register(None, token="ohwx", class_name="woman", base_family="", kind="faceid")
    (parts,) = api.registrations
    assert len(parts) == 1 and parts[0].metadata.kind == "faceid"
    assert list(parts[0].metadata.reference_image_ids) == ["a" * 24]


def test_submit_with_a_prompt_file_that_cannot_be_read_says_so_and_exits_2(tmp_path, capsys):
    missing = tmp_path / "missing.prompt"
    assert main(["submit", "-f", str(missing)]) == 2
    error = capsys.readouterr().err
    assert "cannot read" in error and str(missing) in error and "Traceback" not in error
