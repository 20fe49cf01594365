"""Range checks of the public requests' numeric, enum, timestamp and repeated fields, before anything uses them.

Protobuf lets a client send any 64-bit integer, any enum number (unknown ones included) and any
``Timestamp``, while ``Timestamp.ToSeconds()`` raises on seconds outside years 0001..9999 or nanos outside
0..999999999: every such field is checked here into field violations naming the field, the value and
what is allowed. The string fields are checked where their meaning lives (ids, tokens, URLs).
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import EnumDescriptor

from multipass.errors import Violation, echo
from multipass.v1 import jobs_pb2

#: ``google.protobuf.Timestamp``'s range: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999999999Z.
TIMESTAMP_MIN_SECONDS = -62_135_596_800
TIMESTAMP_MAX_SECONDS = 253_402_300_799
MAX_NANOS = 999_999_999
#: ListJobs/ListTunes page sizes (0 = the default).
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20
#: Entries of ListJobsRequest.states (there are six states; repeats are harmless up to this many).
MAX_STATES = 16
#: Distinct bad values one violation lists.
SHOWN_BAD_VALUES = 3


def timestamp(field: str, value: timestamp_pb2.Timestamp) -> list[Violation]:
    """Violations of a Timestamp outside the range every protobuf runtime accepts."""
    problems = []
    if not TIMESTAMP_MIN_SECONDS <= value.seconds <= TIMESTAMP_MAX_SECONDS:
        problems.append(
            Violation(
                f"{field}.seconds",
                f"got {value.seconds}; expected {TIMESTAMP_MIN_SECONDS}..{TIMESTAMP_MAX_SECONDS} "
                "(0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z)",
            )
        )
    if not 0 <= value.nanos <= MAX_NANOS:
        problems.append(Violation(f"{field}.nanos", f"got {value.nanos}; expected 0..{MAX_NANOS}"))
    return problems


def timestamp_seconds(value: timestamp_pb2.Timestamp) -> float:
    """Seconds since the epoch of a Timestamp that passed :func:`timestamp`."""
    return value.seconds + value.nanos / 1e9


def enum_values(
    field: str,
    values: Iterable[int],
    enum: EnumDescriptor,
    *,
    max_count: int,
    allow_unspecified: bool = False,
) -> list[Violation]:
    """One violation for too many entries, one listing unknown (or UNSPECIFIED) numbers and the allowed names."""
    values = list(values)
    if len(values) > max_count:
        return [Violation(field, f"got {len(values)} entries; at most {max_count}")]
    allowed = [v for v in enum.values if allow_unspecified or v.number != 0]
    numbers = {v.number for v in allowed}
    bad = list(dict.fromkeys(value for value in values if value not in numbers))
    if not bad:
        return []
    shown = ", ".join(str(value) for value in bad[:SHOWN_BAD_VALUES])
    more = f" and {len(bad) - SHOWN_BAD_VALUES} more" if len(bad) > SHOWN_BAD_VALUES else ""
    names = ", ".join(f"{v.name} ({v.number})" for v in allowed)
    return [Violation(field, f"got {shown}{more}; expected {enum.name} values: {names}")]


def page_size(value: int, field: str = "page_size") -> list[Violation]:
    if 0 <= value <= MAX_PAGE_SIZE:
        return []
    return [Violation(field, f"got {echo(value)}; expected 1..{MAX_PAGE_SIZE} (0 = {DEFAULT_PAGE_SIZE})")]


#: Longest ``ListJobsRequest.idempotency_key_prefix``.
MAX_KEY_PREFIX_CHARS = 128


def list_jobs(request: jobs_pb2.ListJobsRequest) -> list[Violation]:
    """Every problem of a ListJobsRequest's page size, states and time bounds (the page token aside)."""
    problems = page_size(request.page_size)
    problems += enum_values("states", request.states, jobs_pb2.JobState.DESCRIPTOR, max_count=MAX_STATES)
    for field in ("created_after", "created_before"):
        if request.HasField(field):
            problems += timestamp(field, getattr(request, field))
    if len(request.idempotency_key_prefix) > MAX_KEY_PREFIX_CHARS:
        problems.append(
            Violation(
                "idempotency_key_prefix",
                f"has {len(request.idempotency_key_prefix)} characters; at most {MAX_KEY_PREFIX_CHARS} are allowed",
            )
        )
    return problems
