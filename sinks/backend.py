"""Two ClickHouse backends behind one small interface.

- `ChdbBackend`: ClickHouse in-process (chDB), data under `<TALLY_DATA_DIR>/chdb`;
  used when `TALLY_CLICKHOUSE_URL` is unset. One process at a time may open a chDB
  directory (ClickHouse locks it), and one process can open only one directory.
- `NativeBackend`: a ClickHouse server over the native protocol (clickhouse-driver),
  `clickhouse://user:password@host:9000/db`, TLS with `clickhouses://` or
  `TALLY_CLICKHOUSE_SECURE=true`.

Both take the same SQL: `{db}` stands for the (quoted) database, `%(name)s` for a
parameter escaped on the client side (ClickHouse 18.16 has no server-side
parameters). Rows come back as dicts with Python values: Decimal for Decimal
columns, `date`/`datetime` (UTC) for Date/DateTime, never float for money.

Blocking calls: run them in a thread (`asyncio.to_thread`) from async code.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import SecretStr

from tally.config import Settings


class ClickHouseError(RuntimeError):
    """A statement failed (bad SQL, schema mismatch, server-side error)."""


class ClickHouseUnavailable(ClickHouseError):
    """The server could not be reached or the connection broke: worth retrying."""


class Backend(Protocol):
    name: str  # "chdb" | "clickhouse"
    database: str

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> None: ...

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]: ...

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Insert rows (tuples in `columns` order) into `{db}.table` as one block."""
        ...

    def describe(self) -> str:
        """Where the data goes, for logs: never contains a password."""
        ...

    def close(self) -> None: ...


def connect(settings: Settings) -> Backend:
    """The backend the settings ask for: a server when TALLY_CLICKHOUSE_URL is set,
    else chDB under TALLY_DATA_DIR. Connecting is lazy for the server backend (the
    first statement connects), so this does not fail when the server is down."""
    raw: Any = settings.clickhouse_url
    url = (raw.get_secret_value() if isinstance(raw, SecretStr) else str(raw or "")).strip()
    if url:
        return NativeBackend.from_url(
            url,
            secure=settings.clickhouse_secure,
            verify=settings.clickhouse_verify,
            ca_certs=settings.clickhouse_ca_certs,
            database=settings.clickhouse_database,
        )
    return ChdbBackend(str(Path(settings.data_dir) / "chdb"), settings.clickhouse_database)


def _check_ident(name: str) -> str:
    if not name or not all(c.isalnum() or c == "_" for c in name) or name[0].isdigit():
        raise ValueError(f"not a valid ClickHouse database name: {name!r} (letters, digits, _)")
    return name


class _EscapeContext:
    """What clickhouse-driver's client-side escaping needs to know (only used for
    datetime parameters, which tally does not pass)."""

    class server_info:  # mimics clickhouse_driver's attribute
        @staticmethod
        def get_timezone() -> str:
            return "UTC"

        timezone = "UTC"

    client_settings: dict[str, Any] = {}  # noqa: RUF012 - read-only stand-in
    settings: dict[str, Any] = {}  # noqa: RUF012


def render(sql: str, database: str, params: Mapping[str, Any] | None) -> str:
    """`{db}` and `%(name)s` substituted, exactly as clickhouse-driver does it."""
    sql = sql.replace("{db}", f"`{database}`")
    if params:
        from clickhouse_driver.util.escape import escape_params

        sql = sql % escape_params(dict(params), _EscapeContext())
    return sql


# ---------------------------------------------------------------------- chDB

_CHDB_LOCK = threading.Lock()
_CHDB_SESSIONS: dict[str, Any] = {}


def _chdb_session(path: str) -> Any:
    """One chDB session per directory, shared in the process (chDB allows one
    directory per process; sessions on it are thread-safe)."""
    from chdb import session as chdb_session

    with _CHDB_LOCK:
        s = _CHDB_SESSIONS.get(path)
        if s is not None:
            return s
        Path(path).mkdir(parents=True, exist_ok=True)
        try:
            s = chdb_session.Session(path)
        except Exception as exc:
            msg = str(exc)
            if "already initialized with path" in msg:
                raise ClickHouseError(
                    f"chDB is already open on another directory in this process: {msg}"
                ) from None
            raise ClickHouseError(
                f"cannot open the embedded chDB at {path}: {msg.strip()}. Another process "
                "(a running `tally run`?) may hold it: chDB allows one process per "
                "directory. Stop it, or run a ClickHouse server and set TALLY_CLICKHOUSE_URL"
            ) from None
        _CHDB_SESSIONS[path] = s
        return s


def close_chdb(path: str | None = None) -> None:
    """Close the process's chDB session(s) (tests, CLI exit)."""
    with _CHDB_LOCK:
        for p in [path] if path else list(_CHDB_SESSIONS):
            s = _CHDB_SESSIONS.pop(str(p), None)
            if s is not None:
                s.close()


def _convert(value: Any, ctype: str) -> Any:
    if value is None:
        return None
    if ctype.startswith("Nullable("):
        return _convert(value, ctype[9:-1])
    if ctype.startswith("LowCardinality("):
        return _convert(value, ctype[15:-1])
    if ctype.startswith("Decimal"):
        return Decimal(str(value)) if not isinstance(value, Decimal) else value
    if ctype.startswith(("Int", "UInt")):
        return int(value)
    if ctype.startswith("Float"):
        return float(value)
    if ctype == "Date" or ctype == "Date32":
        return date.fromisoformat(value)
    if ctype.startswith("DateTime"):
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    if ctype.startswith("Array("):
        inner = ctype[6:-1]
        return [_convert(v, inner) for v in value]
    return value


def _json_value(v: Any) -> Any:
    if isinstance(v, Decimal):
        return str(v)
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, list):
        return [_json_value(x) for x in v]
    return v


class ChdbBackend:
    name = "chdb"

    def __init__(self, path: str, database: str = "tally") -> None:
        self.path = str(Path(path).resolve())
        self.database = _check_ident(database)
        self._session: Any = None

    @property
    def session(self) -> Any:
        if self._session is None:
            self._session = _chdb_session(self.path)
        return self._session

    def _run(self, sql: str, fmt: str = "JSONCompact") -> Any:
        try:
            return self.session.query(sql, fmt)
        except ClickHouseError:
            raise
        except Exception as exc:
            raise ClickHouseError(str(exc).strip()) from None

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        self._run(render(sql, self.database, params), "CSV")

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        res = self._run(
            render(sql, self.database, params) + " SETTINGS output_format_json_quote_decimals = 1,"
            " output_format_json_quote_64bit_integers = 1",
        )
        raw = res.bytes() if hasattr(res, "bytes") else bytes(res)
        if not raw.strip():
            return []
        doc = json.loads(raw)
        meta = [(m["name"], m["type"]) for m in doc["meta"]]
        return [
            {name: _convert(v, t) for (name, t), v in zip(meta, row, strict=True)}
            for row in doc["data"]
        ]

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        lines = [
            json.dumps(
                {c: _json_value(v) for c, v in zip(columns, row, strict=True)},
                ensure_ascii=False,
                separators=(",", ":"),
            )
            for row in rows
        ]
        sql = (
            f"INSERT INTO `{self.database}`.`{table}` ({', '.join(columns)}) "
            "FORMAT JSONEachRow\n" + "\n".join(lines)
        )
        self._run(sql, "CSV")

    def describe(self) -> str:
        return f"embedded chDB at {self.path} (database {self.database})"

    def close(self) -> None:
        self._session = None  # the process-wide session stays open for reuse


# -------------------------------------------------------------------- server


def _flag(v: str) -> bool:
    return v.lower() in ("1", "true", "yes", "on")


class NativeBackend:
    name = "clickhouse"

    def __init__(
        self,
        host: str,
        port: int | None = None,
        user: str = "default",
        password: str = "",
        database: str = "tally",
        *,
        secure: bool = False,
        verify: bool = True,
        ca_certs: str | None = None,
        connect_timeout: float = 5.0,
        send_receive_timeout: float = 60.0,
    ) -> None:
        self.host = host
        self.secure = secure
        self.port = port or (9440 if secure else 9000)
        self.user = user
        self._password = password
        self.database = _check_ident(database)
        self.verify = verify
        self.ca_certs = ca_certs
        self.connect_timeout = connect_timeout
        self.send_receive_timeout = send_receive_timeout
        self._lock = threading.Lock()
        self._client: Any = None

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        secure: bool = False,
        verify: bool = True,
        ca_certs: str | None = None,
        database: str = "tally",
    ) -> NativeBackend:
        parts = urlsplit(url)
        if parts.scheme not in ("clickhouse", "clickhouses"):
            raise ValueError(
                "TALLY_CLICKHOUSE_URL must look like clickhouse://user:password@host:9000/db "
                f"(or clickhouses:// for TLS), got scheme {parts.scheme!r}"
            )
        if not parts.hostname:
            raise ValueError("TALLY_CLICKHOUSE_URL has no host")
        q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        secure = secure or parts.scheme == "clickhouses" or _flag(q.get("secure", "false"))
        if "verify" in q:
            verify = _flag(q["verify"])
        db = unquote(parts.path.strip("/")) or database
        try:
            port = parts.port
        except ValueError:
            raise ValueError("TALLY_CLICKHOUSE_URL has an invalid port") from None
        return cls(
            parts.hostname,
            port,
            unquote(parts.username or "default"),
            unquote(parts.password or ""),
            db,
            secure=secure,
            verify=verify,
            ca_certs=q.get("ca_certs", ca_certs),
        )

    def describe(self) -> str:
        scheme = "clickhouses" if self.secure else "clickhouse"
        auth = f"{self.user}:***@" if self._password else f"{self.user}@"
        return f"{scheme}://{auth}{self.host}:{self.port}/{self.database}"

    def _connect(self) -> Any:
        from clickhouse_driver import Client

        kw: dict[str, Any] = {}
        if self.secure:
            kw.update(secure=True, verify=self.verify)
            if self.ca_certs:
                kw["ca_certs"] = self.ca_certs
        return Client(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self._password,
            database="default",
            client_name="tally",
            connect_timeout=self.connect_timeout,
            send_receive_timeout=self.send_receive_timeout,
            sync_request_timeout=self.connect_timeout,
            **kw,
        )

    def _call(self, fn: Any) -> Any:
        from clickhouse_driver import errors

        with self._lock:
            if self._client is None:
                self._client = self._connect()
            try:
                return fn(self._client)
            except errors.ServerException as exc:
                first = str(exc.message or exc).strip().splitlines()[0]
                raise ClickHouseError(f"ClickHouse error {exc.code}: {first}") from None
            except (errors.Error, OSError, EOFError) as exc:
                # network trouble (refused, reset, timeout, TLS): drop the connection
                self._disconnect()
                raise ClickHouseUnavailable(
                    f"ClickHouse at {self.host}:{self.port} unreachable: "
                    f"{type(exc).__name__}: {str(exc).strip()[:300]}"
                ) from None

    def _disconnect(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):  # the connection is gone anyway
                self._client.disconnect()
            self._client = None

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        text = render(sql, self.database, params)
        self._call(lambda c: c.execute(text))

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        text = render(sql, self.database, params)
        rows, types = self._call(lambda c: c.execute(text, with_column_types=True))
        names = [n for n, _ in types]
        out = []
        for row in rows:
            d = dict(zip(names, row, strict=True))
            for k, v in d.items():  # DateTime('UTC') arrives aware; plain DateTime naive UTC
                if isinstance(v, datetime) and v.tzinfo is None:
                    d[k] = v.replace(tzinfo=UTC)
            out.append(d)
        return out

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        sql = f"INSERT INTO `{self.database}`.`{table}` ({', '.join(columns)}) VALUES"
        data = list(rows)
        self._call(lambda c: c.execute(sql, data))

    def close(self) -> None:
        with self._lock:
            self._disconnect()
