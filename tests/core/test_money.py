"""Money parsing and formatting (`tally.core.money`): minor units per currency, exact
decimals, never a float."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tally.core.money import (
    EXPONENTS,
    MoneyError,
    exponent,
    format_minor,
    is_currency,
    to_decimal,
    to_minor,
)

# -------------------------------------------------------------------- money


def test_money_basic_conversions() -> None:
    assert to_minor("12.34", "CNY") == 1234
    assert to_minor("12.3", "CNY") == 1230
    assert to_minor("12", "CNY") == 1200
    assert to_minor("0.01", "USD") == 1
    assert to_minor("12.3400", "CNY") == 1234
    assert to_minor("9999999999999.99", "CNY") == 999999999999999
    assert format_minor(1234, "CNY") == "12.34"
    assert format_minor(5, "CNY") == "0.05"
    assert format_minor(0, "CNY") == "0.00"
    assert format_minor(-1234, "CNY") == "-12.34"
    assert format_minor(-5, "CNY") == "-0.05"


def test_money_jpy_has_no_decimals() -> None:
    assert exponent("JPY") == 0
    assert to_minor("1000", "JPY") == 1000
    assert to_minor("1000.00", "JPY") == 1000
    assert format_minor(1000, "JPY") == "1000"
    assert format_minor(-7, "JPY") == "-7"
    with pytest.raises(MoneyError, match="more than 0 decimal places"):
        to_minor("1000.5", "JPY")


def test_money_kwd_has_three_decimals() -> None:
    assert exponent("KWD") == 3
    assert to_minor("1.234", "KWD") == 1234
    assert to_minor("1.5", "KWD") == 1500
    assert to_minor("0.001", "KWD") == 1
    assert format_minor(1234, "KWD") == "1.234"
    assert format_minor(1, "KWD") == "0.001"
    with pytest.raises(MoneyError):
        to_minor("1.2345", "KWD")


def test_money_exact_decimal_and_never_float() -> None:
    d = to_decimal(1234, "CNY")
    assert isinstance(d, Decimal) and d == Decimal("12.34")
    assert to_decimal(1234, "KWD") == Decimal("1.234")
    assert to_decimal(1234, "JPY") == Decimal("1234")
    # 0.1 + 0.2 is exact in minor units
    assert to_minor("0.1", "CNY") + to_minor("0.2", "CNY") == to_minor("0.3", "CNY")
    for not_a_string in (12.34, Decimal("12.34"), 1234, None):
        with pytest.raises(MoneyError, match="decimal string"):
            to_minor(not_a_string, "CNY")  # type: ignore[arg-type]


def test_money_rejections() -> None:
    for bad in ("-1", "1e2", "1.", ".1", "01", " 1", "1 ", "1\n", "1_000", "١٢", "1" * 14):
        with pytest.raises(MoneyError):
            to_minor(bad, "CNY")
    with pytest.raises(MoneyError, match="negative"):
        to_minor("-0.01", "CNY")
    with pytest.raises(MoneyError, match="unknown ISO 4217"):
        to_minor("1", "XYZ")
    with pytest.raises(MoneyError):
        exponent("usd")
    assert is_currency("CNY") and not is_currency("cny") and not is_currency(156)


def test_exponent_table_spot_checks() -> None:
    assert {c: EXPONENTS[c] for c in ("CNY", "USD", "EUR", "JPY", "KRW", "KWD", "BHD", "CLF")} == {
        "CNY": 2,
        "USD": 2,
        "EUR": 2,
        "JPY": 0,
        "KRW": 0,
        "KWD": 3,
        "BHD": 3,
        "CLF": 4,
    }
    assert all(re.fullmatch(r"[A-Z]{3}", c) for c in EXPONENTS)


@given(
    minor=st.integers(min_value=0, max_value=10**13 - 1),
    currency=st.sampled_from(sorted(EXPONENTS)),
)
def test_money_round_trip(minor: int, currency: str) -> None:
    s = format_minor(minor, currency)
    assert to_minor(s, currency) == minor
    assert Decimal(s) == to_decimal(minor, currency)
    assert format_minor(-minor, currency) == ("-" + s if minor else s)
