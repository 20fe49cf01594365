"""The NATS JetStream port of Multipass: the only code that talks to NATS.

Callers write ``from multipass.bus import Bus, Delivery, Ack, ...``: every type they see is ours (no
NATS type or exception crosses this package's edge). Names of streams, subjects and buckets live in
:mod:`multipass.names`; the protocol is described in docs/CONTRACTS.md and docs/RELIABILITY.md.
"""

from multipass.bus.connection import Bus
from multipass.bus.consume import DEFAULT_BACKOFF, Ack, Decision, Delivery, Handler, Nak, Term, backoff_delay
from multipass.bus.consumers import ConsumerState
from multipass.bus.core import CoreMessage, CoreSubscription
from multipass.bus.errors import KeyExists, KeyVanished, KvConflict, RevisionMismatch
from multipass.bus.kv import KvBucket, KvEntry
from multipass.bus.pass_events import pass_event, publish_pass_event
from multipass.bus.publish import MSG_ID_HEADER, PublishAck
from multipass.bus.replay import Replay
from multipass.bus.streams import StoredMessage

__all__ = [
    "Ack",
    "Bus",
    "ConsumerState",
    "CoreMessage",
    "CoreSubscription",
    "DEFAULT_BACKOFF",
    "Decision",
    "Delivery",
    "Handler",
    "KeyExists",
    "KeyVanished",
    "KvBucket",
    "KvConflict",
    "KvEntry",
    "MSG_ID_HEADER",
    "Nak",
    "PublishAck",
    "Replay",
    "RevisionMismatch",
    "StoredMessage",
    "Term",
    "backoff_delay",
    "pass_event",
    "publish_pass_event",
]
