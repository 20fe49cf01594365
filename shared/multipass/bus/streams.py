"""A stream's stored messages by sequence: read one back, or delete one (withdraw a queued request)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import nats.js.errors

from multipass.bus.base import BusBase
from multipass.bus.errors import nats_errors


@dataclass(frozen=True)
class StoredMessage:
    stream: str
    sequence: int
    subject: str
    data: bytes
    headers: Mapping[str, str]


class StoredMessages(BusBase):
    async def get_message(self, stream: str, sequence: int) -> StoredMessage | None:
        """The message at ``sequence`` of ``stream``; None when there is none (acked, deleted, expired)."""
        with nats_errors(f"read message {sequence} of {stream}"):
            try:
                raw = await self.js.get_msg(stream, sequence)
            except nats.js.errors.NotFoundError:
                return None
        return StoredMessage(
            stream=stream,
            sequence=sequence,
            subject=raw.subject or "",
            data=raw.data or b"",
            headers=dict(raw.headers or {}),
        )

    async def purge_subject(self, stream: str, subject: str) -> None:
        """Remove every message of ``stream`` on ``subject`` (a deleted job's events, say)."""
        with nats_errors(f"purge {subject} from {stream}"):
            await self.js.purge_stream(stream, subject=subject)

    async def delete_message(self, stream: str, sequence: int) -> bool:
        """Delete the message at ``sequence`` of ``stream``; False when there was none to delete."""
        with nats_errors(f"delete message {sequence} of {stream}"):
            try:
                return bool(await self.js.delete_msg(stream, sequence))
            except nats.js.errors.NotFoundError:
                return False
