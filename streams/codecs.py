"""Faust codecs for the table values: the domain objects keep their own JSON form
(`to_json` / `from_json`), so a changelog record is readable with kcat."""

from __future__ import annotations

import json
from typing import Any

from faust.serializers import codecs

from tally.breaks import ChannelTxnClaim
from tally.clearing import Balance
from tally.orders import OrderState


class _JsonObjectCodec(codecs.Codec):
    def _dumps(self, obj: Any) -> bytes:
        return json.dumps(self.to_json(obj), separators=(",", ":")).encode()

    def _loads(self, s: bytes) -> Any:
        return self.from_json(json.loads(s))

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


def register() -> None:
    """Register the codecs with Faust (idempotent; called by `create_app`)."""
    codecs.register(ORDER, OrderCodec())
    codecs.register(BALANCE, BalanceCodec())
    codecs.register(CLAIM, ClaimCodec())
