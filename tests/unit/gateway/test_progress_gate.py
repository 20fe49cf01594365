"""Step reports kept to a client's refresh rate, before they cost the job record anything."""

from __future__ import annotations

from multipass.v1 import events_pb2
from multipass_gateway.app.progress_gate import ProgressGate


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def event(kind: str, *, step: int = 0, total: int = 30, attempt: int = 1, pass_name: str = "base"):
    message = events_pb2.PassEvent(
        tenant="t", job_id="j", image_index=0, pass_name=pass_name, attempt=attempt
    )
    if kind == "started":
        message.started.steps_total = total
    elif kind == "progress":
        message.progress.step, message.progress.steps_total = step, total
    elif kind == "completed":
        message.completed.SetInParent()
    else:
        message.failed.retriable = True
    return message


def test_reports_soon_after_the_last_recorded_one_wait_but_the_last_step_never_does():
    clock = Clock()
    gate = ProgressGate(0.5, clock=clock)
    assert gate.admit(event("started"))
    clock.now += 0.2
    assert not gate.admit(event("progress", step=3))  # 0.2 s after the start
    clock.now += 0.4
    assert gate.admit(event("progress", step=9))  # 0.6 s after it
    clock.now += 0.1
    assert not gate.admit(event("progress", step=12))
    assert gate.admit(event("progress", step=30))  # the last step
    assert gate.admit(event("completed"))
    # Other passes and other attempts are gated apart; a failure forgets the attempt.
    assert gate.admit(event("progress", step=3, pass_name="person-0"))
    assert gate.admit(event("progress", step=3, attempt=2))
    assert gate.admit(event("failed", attempt=2))
    assert gate.admit(event("progress", step=4, attempt=2))


def test_a_report_of_an_attempt_this_replica_has_not_seen_is_recorded():
    gate = ProgressGate(0.5, clock=Clock())
    assert gate.admit(event("progress", step=5))  # its start went to another replica
    assert not gate.admit(event("progress", step=6))


def test_interval_zero_admits_everything_and_memory_is_bounded():
    clock = Clock()
    assert all(ProgressGate(0, clock=clock).admit(event("progress", step=s)) for s in range(1, 30))
    gate = ProgressGate(10, clock=clock, remembered=2)
    for name in ("a", "b", "c"):
        gate.admit(event("started", pass_name=name))
    assert gate.admit(event("progress", step=2, pass_name="a"))  # forgotten, so recorded
    assert not gate.admit(event("progress", step=2, pass_name="c"))
