"""Money: ISO 4217 currencies and exact amounts in integer minor units.

Amounts travel on the wire as decimal strings in major units ("12.34"). Inside
tally they are integers in the currency's minor unit (1234 fen), so arithmetic is
exact and cheap; they are turned back into decimal strings only at the edges.
Floats never appear.

In: a decimal string in major units and a currency code. Out: the integer
amount in minor units (or `MoneyError`), and back: the decimal string or Decimal.
"""

from __future__ import annotations

import re
from decimal import Decimal

# ISO 4217 active codes with their minor-unit exponent. Codes not listed here are
# rejected as unknown. Exponent 2 unless stated.
_EXPONENT_0 = {
    "BIF",
    "CLP",
    "DJF",
    "GNF",
    "ISK",
    "JPY",
    "KMF",
    "KRW",
    "PYG",
    "RWF",
    "UGX",
    "UYI",
    "VND",
    "VUV",
    "XAF",
    "XOF",
    "XPF",
}
_EXPONENT_3 = {"BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"}
_EXPONENT_4 = {"CLF", "UYW"}
_EXPONENT_2 = {
    "AED",
    "AFN",
    "ALL",
    "AMD",
    "ANG",
    "AOA",
    "ARS",
    "AUD",
    "AWG",
    "AZN",
    "BAM",
    "BBD",
    "BDT",
    "BGN",
    "BMD",
    "BND",
    "BOB",
    "BRL",
    "BSD",
    "BTN",
    "BWP",
    "BYN",
    "BZD",
    "CAD",
    "CDF",
    "CHF",
    "CNY",
    "COP",
    "CRC",
    "CUP",
    "CVE",
    "CZK",
    "DKK",
    "DOP",
    "DZD",
    "EGP",
    "ERN",
    "ETB",
    "EUR",
    "FJD",
    "FKP",
    "GBP",
    "GEL",
    "GHS",
    "GIP",
    "GMD",
    "GTQ",
    "GYD",
    "HKD",
    "HNL",
    "HTG",
    "HUF",
    "IDR",
    "ILS",
    "INR",
    "IRR",
    "JMD",
    "KES",
    "KGS",
    "KHR",
    "KPW",
    "KYD",
    "KZT",
    "LAK",
    "LBP",
    "LKR",
    "LRD",
    "LSL",
    "MAD",
    "MDL",
    "MGA",
    "MKD",
    "MMK",
    "MNT",
    "MOP",
    "MRU",
    "MUR",
    "MVR",
    "MWK",
    "MXN",
    "MYR",
    "MZN",
    "NAD",
    "NGN",
    "NIO",
    "NOK",
    "NPR",
    "NZD",
    "PAB",
    "PEN",
    "PGK",
    "PHP",
    "PKR",
    "PLN",
    "QAR",
    "RON",
    "RSD",
    "RUB",
    "SAR",
    "SBD",
    "SCR",
    "SDG",
    "SEK",
    "SGD",
    "SHP",
    "SLE",
    "SOS",
    "SRD",
    "SSP",
    "STN",
    "SVC",
    "SYP",
    "SZL",
    "THB",
    "TJS",
    "TMT",
    "TOP",
    "TRY",
    "TTD",
    "TWD",
    "TZS",
    "UAH",
    "USD",
    "UYU",
    "UZS",
    "VES",
    "WST",
    "XCD",
    "YER",
    "ZAR",
    "ZMW",
    "ZWG",
}

EXPONENTS: dict[str, int] = {
    **{c: 2 for c in _EXPONENT_2},
    **{c: 0 for c in _EXPONENT_0},
    **{c: 3 for c in _EXPONENT_3},
    **{c: 4 for c in _EXPONENT_4},
}

# Largest amount accepted on the wire, in major units: 10^13 (ten trillion) keeps
# every value well inside ClickHouse Decimal(18, 4) and Int64 minor units.
MAX_MAJOR_DIGITS = 13
_AMOUNT_RE = re.compile(r"^(0|[1-9][0-9]{0,12})(\.[0-9]{1,4})?$")


class MoneyError(ValueError):
    """An amount or currency that is not valid money."""


def is_currency(code: object) -> bool:
    return isinstance(code, str) and code in EXPONENTS


def exponent(currency: str) -> int:
    try:
        return EXPONENTS[currency]
    except KeyError:
        raise MoneyError(f"unknown ISO 4217 currency {currency!r}") from None


def to_minor(amount: str, currency: str) -> int:
    """Parse a major-unit decimal string ("12.34") into integer minor units.

    Rejects signs, exponents, whitespace, more fractional digits than the currency
    has, and more than 13 integer digits.
    """
    if not isinstance(amount, str):
        raise MoneyError(f"must be a decimal string, got {type(amount).__name__}")
    if not _AMOUNT_RE.fullmatch(amount):
        if amount.startswith("-"):
            raise MoneyError(f"must not be negative: {amount[:40]!r}")
        raise MoneyError(f"not a decimal amount: {amount[:40]!r}")
    exp = exponent(currency)
    whole, _, frac = amount.partition(".")
    if len(frac) > exp:
        if frac[exp:].strip("0"):
            raise MoneyError(f"{amount!r} has more than {exp} decimal places for {currency}")
        frac = frac[:exp]
    return int(whole) * 10**exp + (int(frac.ljust(exp, "0")) if exp else 0)


def to_decimal(minor: int, currency: str) -> Decimal:
    """Integer minor units to an exact Decimal in major units."""
    return Decimal(minor).scaleb(-exponent(currency))


def format_minor(minor: int, currency: str) -> str:
    """Integer minor units to the wire format: a plain decimal string."""
    exp = exponent(currency)
    sign = "-" if minor < 0 else ""
    q, r = divmod(abs(minor), 10**exp) if exp else (abs(minor), 0)
    return f"{sign}{q}.{r:0{exp}d}" if exp else f"{sign}{q}"
