"""Following a job to its end with progress bars, then downloading its results (``submit --wait``, ``demo``)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from multipass.v1 import jobs_pb2
from multipass_client.channel import Client
from multipass_client.downloads import DownloadedJob, ObjectReader, download_job
from multipass_client.jobs import state_name
from multipass_client.progress import JobProgress


def follow_job(client: Client, job_id: str, console: Console, *, show_progress: bool = True) -> jobs_pb2.Job:
    """Watch the job until it ends, with a bar per image and pass; returns the final job."""
    job = client.jobs.get(job_id)
    if not show_progress:
        return client.jobs.wait(job_id)
    with JobProgress(job, console) as progress:
        return client.jobs.wait(job_id, on_event=progress.update)


def print_outcome(job: jobs_pb2.Job, console: Console) -> None:
    colour = "green" if job.state == jobs_pb2.JOB_STATE_SUCCEEDED else "red"
    console.print(f"job {job.job_id}: [{colour}]{state_name(job.state)}[/{colour}]")
    if job.error.message:
        console.print(
            f"  error: {job.error.message}"
            + (f" (pass {job.error.pass_name})" if job.error.pass_name else "")
        )
        for violation in job.error.field_violations:
            console.print(f"    {violation.field}: {violation.description}")
    for image in job.images:
        if image.error.message:
            console.print(f"  image {image.index}: {image.error.pass_name or ''} {image.error.message}")
    for warning in job.warnings:
        console.print(f"  warning: {warning}")


def print_download(downloaded: DownloadedJob, console: Console) -> None:
    console.print(f"results in {downloaded.directory}/")
    console.print(f"  {downloaded.job_json.name}")
    for image in downloaded.images:
        files = [p.name for p in image.passes] + [p.name for p in image.masks.values()]
        files += [p.name for p in (image.final, image.contact_sheet) if p is not None]
        console.print(f"  {image.directory.name}/: {', '.join(files)}")
    for missing in downloaded.missing:
        console.print(f"  [yellow]not downloaded[/yellow]: {missing}")


def follow_and_download(
    client: Client, job_id: str, out_dir: Path, reader: ObjectReader | None, console: Console
) -> tuple[jobs_pb2.Job, DownloadedJob]:
    job = follow_job(client, job_id, console)
    print_outcome(job, console)
    downloaded = download_job(job, out_dir, reader)
    print_download(downloaded, console)
    return job, downloaded
