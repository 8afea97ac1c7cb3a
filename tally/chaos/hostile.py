"""Hostile input messages: a seeded generator (pure `random.Random`, no hypothesis).

In: a seed, a count and valid envelopes to start from (the simulator's traffic). Out:
`Hostile` messages, each one of `KINDS`: random bytes and text, deep or huge JSON,
numbers as 1e9999 / NaN / -0 / 30 digits, unknown unicode in ids, enums and field
names, keys that disagree with the body, duplicated event ids with different bodies,
wrong types, missing fields, odd timestamps and encodings, broken JSON, an unknown
topic; each with what must become of it (`expect`: processed, dead-lettered with a
given reason code or any, or either). `tally.chaos.hostile_check` feeds them.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tally.core.pipeline import CALLBACKS, TRANSACTIONS, Envelope

DEAD = "dead"  # expectation: dead-lettered, any documented code
PROCESSED = "processed"
ANY = "any"  # either is right (the message is odd but within the contract)
OUTSIDE = "outside"  # outside the contract, yet harmless either way; counted when processed
MAX_BYTES = 64 * 1024
_TXN_IDS = ("event_id", "txn_id", "merchant_id", "channel_id")
_CB_IDS = ("event_id", "txn_id", "channel_id", "channel_txn_id")
_OPTIONAL = ("original_txn_id", "coupon_amount", "terminal_id", "fee")
WEIRD_NUMBERS = ("1e9999", "-1e9999", "NaN", "Infinity", "-Infinity", "-0", "-0.0", "1E400")
WEIRD_AMOUNTS = {  # as JSON strings: the code each must get (None: a valid amount)
    "1e9999": "bad_amount",
    "NaN": "bad_amount",
    "Infinity": "bad_amount",
    "-0": "negative_amount",
    "-0.00": "negative_amount",
    "-12.50": "negative_amount",
    "1" * 30: "bad_amount",
    "0." + "0" * 29 + "1": "bad_amount",
    "1" * 13 + ".00": None,
    "1" * 14: "bad_amount",
    " 1.00": "bad_amount",
    "1.00\n": "bad_amount",
    "1_000": "bad_amount",
    "１２.００": "bad_amount",  # full-width digits
    "٣.٥": "bad_amount",  # Arabic-Indic digits
    "0x10": "bad_amount",
    "": "bad_amount",
    "0": None,
}
WEIRD_TEXT = (
    "t\u200b1",  # zero-width space
    "\U0010ffff",
    "\ud800",  # a lone surrogate (escaped in the JSON)
    "\u202eevil",  # right-to-left override
    "ＣＮＹ",
    "t\x00",
    "t\x7f",
    "",
    "x" * 65,
    "é",
    "\ufeffT1",
    "😀" * 10,
)
WEIRD_TIMES = {  # occurred_at: expectation
    "9999-12-31T23:59:59Z": "bad_timestamp",
    "9999-12-31T23:59:59-23:59": "bad_timestamp",
    "0001-01-01T00:00:00Z": "bad_timestamp",
    "0001-01-01T00:00:00+23:59": "bad_timestamp",
    "1970-01-01T00:00:00Z": "bad_timestamp",
    "1969-12-31T23:59:59Z": "bad_timestamp",
    "2026-02-30T10:00:00Z": "bad_timestamp",
    "2026-11-24T24:00:00Z": "bad_timestamp",
    "2026-11-24T23:59:60Z": "bad_timestamp",
    "2026-11-24T10:00:00": "bad_timestamp",
    "2026-11-24T10:00:00." + "9" * 30 + "Z": ANY,
    "2026-11-24T10:00:00.000+24:00": "bad_timestamp",
    "２０２６-11-24T10:00:00Z": "bad_timestamp",
    "1e9999": "bad_timestamp",
}
# RFC 3339, but outside the instants an event may carry (docs/events.md: 1970-01-02
# inclusive to 2100-01-01 exclusive): each raised inside the core before the range was
# checked (a business date outside datetime's years 1-9999; an instant before the
# epoch); now `bad_timestamp`. `extreme_times=False` still leaves them out.
EXTREME_TIMES = frozenset(
    [
        "9999-12-31T23:59:59Z",
        "9999-12-31T23:59:59-23:59",
        "0001-01-01T00:00:00Z",
        "0001-01-01T00:00:00+23:59",
        "1969-12-31T23:59:59Z",
    ]
)


@dataclass(frozen=True, slots=True)
class Hostile:
    kind: str  # one of KINDS
    topic: str
    key: str | None
    value: bytes
    expect: str  # PROCESSED, DEAD, ANY or a reason code

    def envelope(self) -> Envelope:
        return Envelope(self.topic, self.key, self.value)

    def reproducer(self) -> str:
        v = self.value if len(self.value) <= 200 else self.value[:200] + b"..."
        return f"{self.kind}: topic={self.topic} key={self.key!r} value={v!r} ({len(self.value)} B)"


def as_key(text: str) -> str:
    """A message key is bytes: a lone surrogate cannot be one (it arrives as U+FFFD)."""
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def dump(d: Any) -> bytes:
    return json.dumps(d, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")


class Generator:
    """Hostile messages, seeded: `Generator(seed, templates).take(n)`. `templates` are
    valid envelopes (the simulator's); most kinds start from a copy of one under a fresh
    txn id, `duplicate_event` reuses a template's own ids with another body."""

    def __init__(
        self,
        seed: int,
        templates: list[Envelope],
        *,
        kinds: tuple[str, ...] | None = None,
        extreme_times: bool = True,
        max_bytes: int | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.templates = [t for t in templates if isinstance(t.value, dict)]
        self.kinds = kinds or KINDS
        self.times = [t for t in WEIRD_TIMES.items() if extreme_times or t[0] not in EXTREME_TIMES]
        self.max_bytes = max_bytes  # larger messages are not made (a broker's limit)
        self.n = 0

    def take(self, n: int) -> Iterator[Hostile]:
        made = 0
        while made < n:
            h: Hostile = getattr(self, self.rng.choice(self.kinds))()
            if self.max_bytes is None or len(h.value) <= self.max_bytes:
                made += 1
                yield h

    # ------------------------------------------------------------ helpers

    def _template(self) -> tuple[str, dict[str, Any]]:
        t = self.rng.choice(self.templates)
        assert isinstance(t.value, dict)
        return t.topic, dict(t.value)

    def _fresh(self) -> tuple[str, dict[str, Any]]:
        """A valid message about a new order (its own txn and event id)."""
        topic, d = self._template()
        self.n += 1
        d["txn_id"] = f"h{self.n}-{d['txn_id']}"[:64]
        d["event_id"] = f"h{self.n}-{d['event_id']}"[:64]
        if d.get("original_txn_id"):
            d["original_txn_id"] = f"h{self.n}-o"
        return topic, d

    def _made(self, kind: str, topic: str, d: dict[str, Any], expect: str) -> Hostile:
        return Hostile(kind, topic, str(d.get("txn_id")), dump(d), expect)

    def _field(self, topic: str, d: dict[str, Any]) -> str:
        return self.rng.choice([k for k in d if k != "txn_id"])

    # ------------------------------------------------------------- kinds

    def random_bytes(self) -> Hostile:
        size = self.rng.choice((0, 1, 2, 8, 64, 512, 4096))
        value = self.rng.randbytes(size)
        return Hostile("random_bytes", self._topic(), self._key(), value, DEAD)

    def random_text(self) -> Hostile:
        alphabet = '{}[]:,"\\ 0123456789.-eEtrufalsn' + "".join(WEIRD_TEXT[:4])
        text = "".join(self.rng.choice(alphabet) for _ in range(self.rng.randint(1, 300)))
        value = text.encode("utf-8", "surrogatepass")
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError):
            parsed = None
        expect = ANY if isinstance(parsed, dict) else DEAD
        return Hostile("random_text", self._topic(), self._key(), value, expect)

    def deep_json(self) -> Hostile:
        depth = self.rng.choice((50, 500, 1000, 5000, 20000, 30000))
        op, close = self.rng.choice((("[", "]"), ('{"a":', "}")))
        nested = op * depth + ("1" if op != "[" else "") + close * depth
        if self.rng.random() < 0.5:  # the whole value
            return Hostile("deep_json", self._topic(), self._key(), nested.encode(), DEAD)
        topic, d = self._fresh()  # a valid message with a deep extra field
        head = dump(d)[:-1]
        value = head + b',"extra":' + nested.encode() + b"}"
        expect = "too_large" if len(value) > MAX_BYTES else ANY
        return Hostile("deep_json", topic, d["txn_id"], value, expect)

    def huge_json(self) -> Hostile:
        topic, d = self._fresh()
        size = self.rng.choice((MAX_BYTES - 400, MAX_BYTES + 1, 1024 * 1024, 4 * 1024 * 1024))
        if self.rng.random() < 0.5:
            d["memo"] = "x" * size
        else:  # many keys
            for i in range(size // 12):
                d[f"k{i}"] = i
        value = dump(d)
        expect = "too_large" if len(value) > MAX_BYTES else PROCESSED
        return Hostile("huge_json", topic, d["txn_id"], value, expect)

    def weird_number(self) -> Hostile:
        topic, d = self._fresh()
        name = self.rng.choice([k for k in d if k not in ("txn_id",)])
        token = self.rng.choice(WEIRD_NUMBERS)
        d[name] = "@@N@@"
        value = dump(d).replace(b'"@@N@@"', token.encode())
        expect = DEAD if name not in _OPTIONAL else ANY
        return Hostile("weird_number", topic, d["txn_id"], value, expect)

    def weird_amount(self) -> Hostile:
        topic, d = self._fresh()
        text, code = self.rng.choice(list(WEIRD_AMOUNTS.items()))
        names = ["amount"] + [k for k in ("fee", "coupon_amount") if k in d]
        d[self.rng.choice(names)] = text
        return self._made("weird_amount", topic, d, code or ANY)

    def weird_unicode(self) -> Hostile:
        topic, d = self._fresh()
        text = self.rng.choice(WEIRD_TEXT)
        where = self.rng.random()
        if where < 0.4:  # an id (the key follows the txn id)
            name = self.rng.choice(_TXN_IDS if topic == TRANSACTIONS else _CB_IDS)
            d[name] = text
            key = as_key(text) if name == "txn_id" else str(d["txn_id"])
            return Hostile("weird_unicode", topic, key, dump(d), "bad_id")
        if where < 0.6:  # an enum or the currency
            name = self.rng.choice(
                ["currency", "status"] + (["type"] if topic == TRANSACTIONS else ["source"])
            )
            d[name] = text
            return self._made("weird_unicode", topic, d, DEAD)
        if where < 0.8:  # a field name that looks like another (Cyrillic о)
            name, lookalike = self.rng.choice(list(_HOMOGLYPHS.items()))
            d[lookalike] = d.pop(name)
            return self._made("weird_unicode", topic, d, "missing_field")
        d[text or "empty"] = text  # unknown extra fields are ignored
        return self._made("weird_unicode", topic, d, PROCESSED)

    def key_mismatch(self) -> Hostile:
        topic, d = self._fresh()
        txn = str(d["txn_id"])
        key = self.rng.choice(
            (None, "", txn + " ", txn.upper() + "X", txn + "\x00", "\U0010ffff", "other-order")
        )
        return Hostile("key_mismatch", topic, key, dump(d), "key_mismatch")

    def duplicate_event(self) -> Hostile:
        """A template's own event id and txn id with another body: whichever of the two
        arrives first is applied, the other is a duplicate (docs/events.md)."""
        topic, d = self._template()
        change = self.rng.choice(("amount", "status", "currency", "merchant", "channel"))
        if change == "amount":
            d["amount"] = "9999.00" if d.get("currency") != "JPY" else "9999"
        elif change == "status":
            d["status"] = self.rng.choice(("failed", "success", "pending"))
        elif change == "currency":
            d["currency"] = "USD" if d.get("currency") != "USD" else "EUR"
        elif change == "merchant" and "merchant_id" in d:
            d["merchant_id"] = "M-HOSTILE"
        else:
            d["channel_id"] = "hostile-channel"
        return self._made("duplicate_event", topic, d, ANY)

    def wrong_type(self) -> Hostile:
        topic, d = self._fresh()
        name = self._field(topic, d)
        v = self.rng.choice((None, True, 1, 1.5, [], {}, [d.get(name)], {"v": d.get(name)}))
        d[name] = v
        expect = ANY if (name in _OPTIONAL and v is None) else DEAD
        return self._made("wrong_type", topic, d, expect)

    def missing_field(self) -> Hostile:
        topic, d = self._fresh()
        name = self._field(topic, d)
        del d[name]
        return self._made("missing_field", topic, d, ANY if name in _OPTIONAL else DEAD)

    def weird_time(self) -> Hostile:
        topic, d = self._fresh()
        text, expect = self.rng.choice(self.times)
        d["occurred_at"] = text
        return self._made("weird_time", topic, d, expect)

    def encoding(self) -> Hostile:
        topic, d = self._fresh()
        d.setdefault("memo", "商户 café")
        text = json.dumps(d, ensure_ascii=False)
        how = self.rng.choice(("bom", "utf-16", "utf-32", "latin-1", "gbk"))
        value = ("\ufeff" + text).encode("utf-8") if how == "bom" else text.encode(how, "replace")
        # not UTF-8: the contract says bad_json, but json.loads reads UTF-16/32 and a BOM,
        # and msgspec skips an ignored field without checking its UTF-8 (docs/reliability)
        return Hostile("encoding", topic, d["txn_id"], value, OUTSIDE)

    def broken_json(self) -> Hostile:
        topic, d = self._fresh()
        raw = dump(d)
        how = self.rng.choice(("cut", "trailing", "two", "comment", "single", "scalar"))
        if how == "cut":
            value = raw[: self.rng.randint(0, len(raw) - 1)]
        elif how == "trailing":
            value = raw + b" x"
        elif how == "two":
            value = raw + raw
        elif how == "comment":
            value = b"/* c */" + raw
        elif how == "single":
            value = raw.replace(b'"', b"'")
        else:
            return Hostile(
                "broken_json", topic, d["txn_id"], self.rng.choice(_SCALARS), "not_object"
            )
        return Hostile("broken_json", topic, d["txn_id"], value, DEAD)

    def unknown_topic(self) -> Hostile:
        _topic, d = self._fresh()
        return Hostile("unknown_topic", "payments.other", d["txn_id"], dump(d), "unknown_topic")

    def _topic(self) -> str:
        return self.rng.choice((TRANSACTIONS, CALLBACKS))

    def _key(self) -> str | None:
        return self.rng.choice((None, "k", "\U0010ffff", "x" * 300))


_HOMOGLYPHS = {"amount": "аmount", "currency": "currenсy", "status": "stаtus"}  # Cyrillic а, с
_SCALARS = (b"[]", b"null", b"1", b'"s"', b"true", b"1e9999", b"[{}]")
KINDS = (
    "random_bytes",
    "random_text",
    "deep_json",
    "huge_json",
    "weird_number",
    "weird_amount",
    "weird_unicode",
    "key_mismatch",
    "duplicate_event",
    "wrong_type",
    "missing_field",
    "weird_time",
    "encoding",
    "broken_json",
    "unknown_topic",
)
STREAM_KINDS = tuple(k for k in KINDS if k != "unknown_topic")  # the worker reads 2 topics
