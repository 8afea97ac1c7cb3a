"""How the worker's tables are written to and read back from their changelog topics.

Two tables publish their changelog as an output topic, so that one record serves
both the sink and a worker's recovery:

- `orders` → `payments.order-states`: the order-state snapshot
  (`tally.core.messages.order_snapshot`: what the sink stores, with the full state in
  `state`), plus the order's outbox (`outbox`, `outbox_seq`) when it has one;
- `balances` → `payments.balances`: the balance shard snapshot
  (`tally.core.messages.balance_snapshot`).

Their keys are the plain text key (a txn id, `<account>|<currency>|<partition>`).
The other two tables (`watermarks`, `channel-txn-claims`) keep Faust's changelog
topics, JSON keys and compact JSON values. Every record is readable with kcat.

Encoding an order's snapshot needs its channel's policy (the view: standing,
resolved, fee): `register(policies)` gives the codecs the policies of the settings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from faust.serializers import codecs

from tally.core.breaks import ChannelTxnClaim
from tally.core.ledger import Balance
from tally.core.messages import balance_snapshot, order_snapshot
from tally.core.orders import OrderState, view
from tally.core.policy import Policies

Encoder = Callable[[Any, Any, int], bytes]  # (key, value, partition) -> record value


class _Codec(codecs.Codec):
    """Faust's side: decoding records when it recovers a table."""

    def _dumps(self, obj: Any) -> bytes:  # pragma: no cover - tally writes the records
        raise NotImplementedError("tally writes table records with streams.codecs.encoder")


class TextCodec(_Codec):
    """Plain UTF-8 text keys."""

    def _dumps(self, obj: Any) -> bytes:
        return str(obj).encode()

    def _loads(self, s: bytes) -> str:
        return s.decode()


class OrderCodec(_Codec):
    def _loads(self, s: bytes) -> OrderState:
        return order_from_record(orjson.loads(s))


class BalanceCodec(_Codec):
    def _loads(self, s: bytes) -> Balance:
        d = orjson.loads(s)
        amounts = d["amounts_minor"] if "amounts_minor" in d else d["amounts"]
        version = d["version"] if "version" in d else d["postings"]
        return Balance(d["account"], d["currency"], dict(amounts), int(version))


class ClaimCodec(_Codec):
    def _dumps(self, obj: ChannelTxnClaim) -> bytes:
        return orjson.dumps([obj.txn_id, obj.merchant_id, obj.occurred_at_ms])

    def _loads(self, s: bytes) -> ChannelTxnClaim:
        d = orjson.loads(s)
        return ChannelTxnClaim(d[0], d[1], d[2])


TEXT = "tally_text"
ORDER = "tally_order"
BALANCE = "tally_balance"
CLAIM = "tally_claim"
_CODECS: dict[str, codecs.Codec] = {
    TEXT: TextCodec(),
    ORDER: OrderCodec(),
    BALANCE: BalanceCodec(),
    CLAIM: ClaimCodec(),
}
_POLICIES: list[Policies] = [Policies()]  # the settings' policies, set by register()


def order_record(state: OrderState, policies: Policies | None = None) -> dict[str, Any]:
    """An order's changelog record: its snapshot, and its outbox when it has one."""
    channel = state.channel_id or (state.evidence[0].channel_id if state.evidence else "")
    v = view(state, (policies or _POLICIES[0])[channel])
    at = state.our_status_at_ms
    for e in state.evidence:
        if e.occurred_at_ms > at:
            at = e.occurred_at_ms
    record = order_snapshot(state, v, at)
    if state.outbox_seq:
        record["outbox"] = state.outbox
        record["outbox_seq"] = state.outbox_seq
    return record


def order_from_record(d: dict[str, Any]) -> OrderState:
    """The state in an order record (or a bare `OrderState.to_json()`)."""
    state = OrderState.from_json(d.get("state", d))
    if "outbox_seq" in d:
        state.outbox = d.get("outbox") or []
        state.outbox_seq = int(d["outbox_seq"])
    return state


def _order(_key: Any, state: OrderState, _partition: int) -> bytes:
    return orjson.dumps(order_record(state))


def _balance(key: str, bal: Balance, partition: int) -> bytes:
    return orjson.dumps(balance_snapshot(key, bal, partition))


def _claim(_key: Any, claim: ChannelTxnClaim, _partition: int) -> bytes:
    return orjson.dumps([claim.txn_id, claim.merchant_id, claim.occurred_at_ms])


def _json(_key: Any, value: Any, _partition: int) -> bytes:
    return orjson.dumps(value)


_ENCODERS: dict[str, Encoder] = {ORDER: _order, BALANCE: _balance, CLAIM: _claim, "json": _json}


def encoder(codec: str) -> Encoder:
    """A table record's value as the table's `value_serializer=codec` reads it back."""
    return _ENCODERS[codec]


def key_encoder(codec: str) -> Callable[[Any], bytes]:
    """A table record's key: plain text, or JSON (Faust's `json` key serializer)."""
    if codec == TEXT:
        return lambda k: str(k).encode()
    return orjson.dumps


def register(policies: Policies | None = None) -> None:
    """Register the codecs with Faust (idempotent; called by `create_app` and the
    restore); `policies` are the channel policies order records are made with."""
    if policies is not None:
        _POLICIES[0] = policies
    for name, codec in _CODECS.items():
        codecs.register(name, codec)
