"""Collecting every problem of one prompt before failing, and reporting them within a size budget.

Violations travel back to gRPC clients in the status's trailing metadata, which clients refuse past a
few kilobytes. The report therefore keeps the first problems that fit :data:`REPORT_BUDGET_BYTES`
(at most :data:`MAX_REPORTED`) and sums up the rest in one last violation.
"""

from __future__ import annotations

from multipass.errors import InvalidInput, Violation

MAX_REPORTED = 8
REPORT_BUDGET_BYTES = 1000


class Problems:
    """The problems found so far; :meth:`raise_if_any` raises them as one InvalidInput."""

    def __init__(self) -> None:
        self._found: list[Violation] = []

    def add(self, field: str, description: str) -> None:
        self._found.append(Violation(field, description))

    def __len__(self) -> int:
        return len(self._found)

    def __iter__(self):
        return iter(self._found)

    def raise_if_any(self) -> None:
        if self._found:
            raise InvalidInput.of(report(self._found))


def report(found: list[Violation]) -> list[Violation]:
    """The violations to send: the first ones within the budget, then a count of the others."""
    kept: list[Violation] = []
    used = 0
    for violation in found:
        size = len(violation.field.encode()) + len(violation.description.encode())
        if len(kept) == MAX_REPORTED or (kept and used + size > REPORT_BUDGET_BYTES):
            break
        kept.append(violation)
        used += size
    left = len(found) - len(kept)
    if left:
        kept.append(
            Violation(
                "request", f"{left} more problem{'s' if left > 1 else ''} not listed; fix the above first"
            )
        )
    return kept
