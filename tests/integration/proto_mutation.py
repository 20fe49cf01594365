"""Protobuf-aware mutation of request messages, driven by their descriptors (for fuzzing public rpcs).

:class:`Mutator` takes a valid seed message and changes a few of its fields to values a careless or
hostile client may send: integers at and past their bounds, enum numbers no enum names, well-known types
out of their range (``Timestamp`` seconds past year 9999, nanos of 1e9 or -1), huge strings and bytes,
huge repeated fields and maps, odd unicode, ids of other kinds. :func:`wire_mutation` works on the
encoded bytes instead: wrong wire types for known field numbers, invalid UTF-8 in string fields,
overlong varints, truncations, unknown fields. Everything is drawn from one seeded ``random.Random``,
so a run is reproducible from its seed.
"""

from __future__ import annotations

import random
import struct

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

F = FieldDescriptor
INT32_EDGES = (0, 1, -1, 2, 7, 20, 100, 101, 1000, 2**31 - 1, -(2**31), 2**30)
INT64_EDGES = INT32_EDGES + (2**63 - 1, -(2**63), 2**32, 2**53 + 1, -(2**53))
UINT_EDGES = (0, 1, 2**31, 2**32 - 1)
FLOATS = (0.0, -0.0, 1.0, -1.0, 1e-45, 3.4e38, float("inf"), float("-inf"), float("nan"))
#: Timestamp and Duration seconds/nanos at and just past their valid ranges.
TIMESTAMP_SECONDS = (
    0, 1, -1, 1_700_000_000, 253_402_300_799, 253_402_300_800, -62_135_596_800, -62_135_596_801,
    2**63 - 1, -(2**63), 2**40,
)  # fmt: skip
DURATION_SECONDS = (0, 1, -1, 315_576_000_000, 315_576_000_001, -315_576_000_001, 2**63 - 1, -(2**63))
NANOS = (0, 1, 999_999_999, 1_000_000_000, -1, -999_999_999, 2**31 - 1, -(2**31))
ODD_STRINGS = (
    "", " ", "a", "0", "-1", "..", "../../etc/passwd", "*", ">", "a.b", "a b", "\x00", "\x00abc", "\n", "\t",
    "\u202e\u0645", "\ud7ff", "é" * 50, "😀" * 20, "%00", "%s%s%n", "${jndi:ldap://x/a}", "<script>", "'; --",
    "ｆｕｌｌ", "0" * 24, "f" * 24, "9" * 16, "x" * 129, "Bearer x", "null", "true", "NaN",
)  # fmt: skip
ODD_BYTES = (
    b"", b"\x00", b"\xff" * 16, b"\x89PNG\r\n\x1a\n", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, b"GIF89a" + b"\x00" * 8,
    b"\xff\xd8\xff\xe0" + b"\x00" * 32, b"RIFF\x00\x00\x00\x00WEBP", b"BM" + b"\x00" * 20, b"\x80\x02}q\x00.",
    b"<html>not an image</html>", b"\x10\x00\x00\x00\x00\x00\x00\x00{}",
)  # fmt: skip
HUGE_CHARS = 100_000
HUGE_COUNT = 10_000


class Mutator:
    """Mutations of one message type's instances; ``known`` are strings worth trying in string fields
    (real ids of jobs, tunes, uploads, tenants), so that mutations also reach past the id checks."""

    def __init__(self, rng: random.Random, known: tuple[str, ...] = (), *, huge_share: float = 0.03):
        self.rng = rng
        self.known = known
        self.huge_share = huge_share
        self._huge_allowed = True

    def _huge(self) -> bool:
        """Whether this value is huge (never inside a huge repeated field: requests stay under 1 MiB or so)."""
        return self._huge_allowed and self.rng.random() < self.huge_share

    # scalars -----------------------------------------------------------------------------------------

    def string(self) -> str:
        roll = self.rng.random()
        if self._huge():
            return self.rng.choice(("x", "é", "😀", "a/")) * HUGE_CHARS
        if roll < 0.35 and self.known:
            value = self.rng.choice(self.known)
            return self.rng.choice((value, value.upper(), value + "x", value[:-1], f" {value}", value * 2))
        if roll < 0.75:
            return self.rng.choice(ODD_STRINGS)
        alphabet = "abcXYZ019_-. /:%\u00e9\u4e2d\U0001f600\x01"
        return "".join(self.rng.choice(alphabet) for _ in range(self.rng.randint(1, 80)))

    def bytes_value(self) -> bytes:
        if self._huge():
            return bytes(self.rng.getrandbits(8) for _ in range(256)) * (HUGE_CHARS // 256)
        if self.rng.random() < 0.6:
            return self.rng.choice(ODD_BYTES)
        return bytes(self.rng.getrandbits(8) for _ in range(self.rng.randint(1, 300)))

    def integer(self, field: FieldDescriptor) -> int:
        if field.type in (F.TYPE_UINT32, F.TYPE_FIXED32):
            return self.rng.choice(UINT_EDGES)
        if field.type in (F.TYPE_UINT64, F.TYPE_FIXED64):
            return self.rng.choice(UINT_EDGES + (2**64 - 1,))
        if field.type in (F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64):
            return self.rng.choice(INT64_EDGES)
        return self.rng.choice(INT32_EDGES)

    def enum(self, field: FieldDescriptor) -> int:
        numbers = [value.number for value in field.enum_type.values]
        unknown = (max(numbers) + 1, 99, -1, 2**31 - 1, -(2**31))
        return self.rng.choice(numbers + list(unknown))

    def scalar(self, field: FieldDescriptor):
        if field.type == F.TYPE_STRING:
            return self.string()
        if field.type == F.TYPE_BYTES:
            return self.bytes_value()
        if field.type == F.TYPE_BOOL:
            return self.rng.random() < 0.5
        if field.type in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
            return self.rng.choice(FLOATS)
        if field.type == F.TYPE_ENUM:
            return self.enum(field)
        return self.integer(field)

    # messages ----------------------------------------------------------------------------------------

    def well_known(self, message: Message) -> bool:
        """Set a Timestamp or Duration to edge values; False for any other message type."""
        name = message.DESCRIPTOR.full_name
        if name == "google.protobuf.Timestamp":
            message.seconds = self.rng.choice(TIMESTAMP_SECONDS)
        elif name == "google.protobuf.Duration":
            message.seconds = self.rng.choice(DURATION_SECONDS)
        else:
            return False
        message.nanos = self.rng.choice(NANOS)
        return True

    def fill(self, message: Message, depth: int = 0) -> Message:
        """Random values in about half of ``message``'s fields (recursing into messages)."""
        if self.well_known(message):
            return message
        for oneof in message.DESCRIPTOR.oneofs:
            chosen = self.rng.choice(oneof.fields)
            self.set_field(message, chosen, depth)
        for field in message.DESCRIPTOR.fields:
            if field.containing_oneof is None and self.rng.random() < 0.5:
                self.set_field(message, field, depth)
        return message

    def count(self) -> int:
        if self._huge():
            return HUGE_COUNT
        return self.rng.choice((0, 1, 2, 3, 4, 11, 17, 65))

    def set_field(self, message: Message, field: FieldDescriptor, depth: int = 0) -> None:
        outer = self._huge_allowed
        try:
            self._set_field(message, field, depth)
        finally:
            self._huge_allowed = outer

    def _set_field(self, message: Message, field: FieldDescriptor, depth: int) -> None:
        message.ClearField(field.name)
        if field.is_repeated:
            size = self.count()
            self._huge_allowed = self._huge_allowed and size < HUGE_COUNT
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field, value_field = (
                field.message_type.fields_by_name["key"],
                field.message_type.fields_by_name["value"],
            )
            target = getattr(message, field.name)
            for _ in range(size):
                key = self.scalar(key_field)
                if value_field.message_type is not None:
                    self.fill(target[key], depth + 1)
                else:
                    target[key] = self.scalar(value_field)
            return
        if field.is_repeated:
            target = getattr(message, field.name)
            for _ in range(size):
                if field.message_type is not None:
                    self.fill(target.add(), depth + 1)
                else:
                    target.append(self.scalar(field))
            return
        if field.message_type is not None:
            child = getattr(message, field.name)
            child.SetInParent()
            if depth < 3:
                self.fill(child, depth + 1)
            return
        setattr(message, field.name, self.scalar(field))

    def mutate(self, seed: Message) -> Message:
        """A copy of ``seed`` with one to three of its fields (or oneof members) set to mutated values."""
        message = type(seed)()
        message.CopyFrom(seed)
        fields = list(message.DESCRIPTOR.fields)
        for field in self.rng.sample(fields, k=min(len(fields), self.rng.randint(1, 3))):
            self.set_field(message, field)
        return message


# the wire -------------------------------------------------------------------------------------------------------


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint((number << 3) | wire_type)


def wire_mutation(rng: random.Random, descriptor: Descriptor, valid: bytes) -> bytes:
    """Bytes near ``valid`` (an encoded ``descriptor`` message) that a protobuf decoder may refuse or read oddly."""
    fields = list(descriptor.fields)
    field = rng.choice(fields) if fields else None
    number = field.number if field is not None else 1
    kind = rng.randrange(9)
    if kind == 0 and field is not None:  # a varint where a length-delimited field belongs, or the reverse
        wrong = 0 if field.type in (F.TYPE_STRING, F.TYPE_BYTES, F.TYPE_MESSAGE) else 2
        payload = varint(rng.choice((1, 2**63, 2**64 - 1))) if wrong == 0 else varint(3) + b"abc"
        return valid + tag(number, wrong) + payload
    if kind == 1:  # invalid UTF-8 in a string field
        strings = [f for f in fields if f.type == F.TYPE_STRING] or fields
        target = rng.choice(strings).number if strings else 1
        junk = rng.choice((b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"))
        return valid + tag(target, 2) + varint(len(junk)) + junk
    if kind == 2:  # an overlong varint (11 bytes)
        return valid + tag(number, 0) + b"\xff" * 10 + b"\x01"
    if kind == 3:  # a length past the end of the message
        return valid + tag(number, 2) + varint(rng.choice((5, 2**31, 2**62))) + b"ab"
    if kind == 4 and valid:  # a truncation
        return valid[: rng.randrange(len(valid))]
    if kind == 5 and valid:  # one flipped byte
        position = rng.randrange(len(valid))
        return valid[:position] + bytes([valid[position] ^ (1 << rng.randrange(8))]) + valid[position + 1 :]
    if kind == 6:  # unknown fields of every wire type
        return (
            valid
            + tag(999, 0)
            + varint(7)
            + tag(1000, 1)
            + struct.pack("<d", 1.5)
            + tag(1001, 2)
            + varint(2)
            + b"hi"
            + tag(1002, 5)
            + b"\x00" * 4
        )
    if kind == 7:  # a deprecated group wire type, and an invalid wire type (6)
        return valid + tag(number, rng.choice((3, 4, 6, 7))) + b"\x00"
    return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64)))  # noise
