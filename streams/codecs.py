"""Faust codecs for the table values: the domain objects keep their own JSON form
(`to_json` / `from_json`), so a changelog record is readable with kcat."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from faust.serializers import codecs

from tally.breaks import ChannelTxnClaim
from tally.clearing import Balance
from tally.orders import OrderState


class _JsonObjectCodec(codecs.Codec):
    def _dumps(self, obj: Any) -> bytes:
        return orjson.dumps(self.to_json(obj))

    def _loads(self, s: bytes) -> Any:
        return self.from_json(orjson.loads(s))

    def to_json(self, obj: Any) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def from_json(self, d: Any) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError


class OrderCodec(_JsonObjectCodec):
    def to_json(self, obj: OrderState) -> Any:
        return obj.to_json()

    def from_json(self, d: Any) -> OrderState:
        return OrderState.from_json(d)


class BalanceCodec(_JsonObjectCodec):
    def to_json(self, obj: Balance) -> Any:
        return obj.to_json()

    def from_json(self, d: Any) -> Balance:
        return Balance.from_json(d)


class ClaimCodec(_JsonObjectCodec):
    def to_json(self, obj: ChannelTxnClaim) -> Any:
        return [obj.txn_id, obj.merchant_id, obj.occurred_at_ms]

    def from_json(self, d: Any) -> ChannelTxnClaim:
        return ChannelTxnClaim(d[0], d[1], d[2])


ORDER = "tally_order"
BALANCE = "tally_balance"
CLAIM = "tally_claim"


_CODECS: dict[str, _JsonObjectCodec] = {
    ORDER: OrderCodec(),
    BALANCE: BalanceCodec(),
    CLAIM: ClaimCodec(),
}


def encoder(codec: str) -> Callable[[Any], bytes]:
    """The bytes of a table value as Faust's `value_serializer=codec` writes them (and
    reads them back when it recovers the table): our codecs, or plain JSON."""
    if codec == "json":
        return orjson.dumps
    return _CODECS[codec]._dumps


def register() -> None:
    """Register the codecs with Faust (idempotent; called by `create_app`)."""
    for name, codec in _CODECS.items():
        codecs.register(name, codec)
