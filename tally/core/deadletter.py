"""Dead letters: a message tally could not process, kept whole with the reason.

In: the rejected message (topic, partition, offset, key, value), the `InvalidEvent`
that rejected it and the time it was set aside (given by the caller: the core reads
no clock). Out: a `DeadLetter` and its JSON record (`payments.dead-letter`).

`InvalidEvent.code` is one of `REASON_CODES`: short machine-readable reasons, used as
a metric label and in the dead-letter record.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any

from tally.core.eventtime import iso_ms

# why a message was not processed: the contract's checks (`tally.core.validation`,
# `tally.core.events`), then what the stream itself refuses
REASON_CODES = (
    "bad_json",
    "too_large",
    "not_object",
    "missing_field",
    "wrong_type",
    "bad_id",
    "unknown_enum",
    "bad_amount",
    "negative_amount",
    "bad_currency",
    "bad_timestamp",
    "key_mismatch",
    "inconsistent",
    "unknown_topic",
    "internal_error",
)
# a message over this size is refused (too_large); a dead letter keeps at most this
DEFAULT_MAX_BYTES = 64 * 1024


class InvalidEvent(ValueError):
    """A message that does not satisfy the contract.

    `code` is one of `REASON_CODES`; `field` names the field at fault, if one is.
    """

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.code = code
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that was not processed, kept whole with the reason."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    code: str
    reason: str
    field: str | None
    dead_at_ms: int
    value_size: int = -1  # size of the original value when `value` was cut
    value_sha256: str = ""

    @classmethod
    def of(
        cls,
        *,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes,
        error: InvalidEvent,
        dead_at_ms: int,
        keep_bytes: int = DEFAULT_MAX_BYTES,
    ) -> DeadLetter:
        """Build a dead letter; values over `keep_bytes` are cut to that size (the
        record keeps the original size and SHA-256 so the cut is visible)."""
        return cls(
            topic=topic,
            partition=partition,
            offset=offset,
            key=key,
            value=value[:keep_bytes],
            code=error.code,
            reason=str(error),
            field=error.field,
            dead_at_ms=dead_at_ms,
            value_size=len(value),
            value_sha256=hashlib.sha256(value).hexdigest(),
        )

    @property
    def dead_letter_id(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"

    def to_json(self) -> dict[str, Any]:
        return {
            "dead_letter_id": self.dead_letter_id,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "key_b64": None if self.key is None else base64.b64encode(self.key).decode(),
            "value_b64": base64.b64encode(self.value).decode(),
            "value_size": self.value_size if self.value_size >= 0 else len(self.value),
            "value_truncated": 0 <= len(self.value) < self.value_size,
            "value_sha256": self.value_sha256,
            "code": self.code,
            "reason": self.reason,
            "field": self.field,
            "dead_at": iso_ms(self.dead_at_ms),
        }
