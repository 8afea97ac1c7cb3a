"""ClickHouse for the sink tests: a real clickhouse-server (Debian's 18.16) started
by the suite as a child process, and the in-process chDB.

Use from a test module with `pytest_plugins = ("tests.clickhouse",)`.

- `clickhouse_server` (session): `clickhouse-server` with its own config in a temp
  dir, on free ports (native, HTTP, native over TLS with a self-signed
  certificate), users `default` (no password) and `tally` (password). Installed
  with apt-get when missing. When it cannot be started the tests that need it are
  skipped, except under CI=true, where they fail.
- `chdb_dir` (session): the directory every chDB test of this process uses (chDB
  opens one directory per process); tests keep apart by database name.
- `unique_db()`: a fresh database name.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

USER = "tally"
PASSWORD = "s3cret-Pa55:word@x"  # characters that must survive URL quoting


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need(ok: bool, reason: str) -> None:
    """Skip a test whose precondition is missing; under CI=true, fail instead."""
    if ok:
        return
    if in_ci():
        pytest.fail(f"CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unique_db(prefix: str = "t") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def server_binary(install: bool = True) -> str | None:
    found = shutil.which("clickhouse-server")
    if found:
        return found
    if not install or os.geteuid() != 0 or not shutil.which("apt-get"):
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "clickhouse-server"],
    ):
        r = subprocess.run(cmd, env=env, capture_output=True, timeout=900, check=False)
        if r.returncode != 0:
            return None
    return shutil.which("clickhouse-server")


_CONFIG = """<?xml version="1.0"?>
<yandex>
  <logger>
    <level>warning</level>
    <log>{root}/log/server.log</log>
    <errorlog>{root}/log/server.err.log</errorlog>
    <size>10M</size>
    <count>2</count>
  </logger>
  <listen_host>127.0.0.1</listen_host>
  <tcp_port>{tcp}</tcp_port>
  <http_port>{http}</http_port>
  {tls}
  <path>{root}/data/</path>
  <tmp_path>{root}/tmp/</tmp_path>
  <user_files_path>{root}/user_files/</user_files_path>
  <format_schema_path>{root}/format_schemas/</format_schema_path>
  <users_config>{root}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mark_cache_size>268435456</mark_cache_size>
  <uncompressed_cache_size>268435456</uncompressed_cache_size>
  <max_concurrent_queries>100</max_concurrent_queries>
  <max_connections>256</max_connections>
</yandex>
"""

_TLS = """<tcp_port_secure>{port}</tcp_port_secure>
  <openSSL>
    <server>
      <certificateFile>{root}/server.crt</certificateFile>
      <privateKeyFile>{root}/server.key</privateKeyFile>
      <verificationMode>none</verificationMode>
      <loadDefaultCAFile>false</loadDefaultCAFile>
      <cacheSessions>true</cacheSessions>
      <disableProtocols>sslv2,sslv3</disableProtocols>
      <preferServerCiphers>true</preferServerCiphers>
    </server>
  </openSSL>"""

_USERS = """<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>4000000000</max_memory_usage></default></profiles>
  <users>
    <default>
      <password></password>
      <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
      <profile>default</profile><quota>default</quota>
    </default>
    <{user}>
      <password>{password}</password>
      <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
      <profile>default</profile><quota>default</quota>
    </{user}>
  </users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
  <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time>
  </interval></default></quotas>
</yandex>
"""


class ClickHouseServer:
    """clickhouse-server as a child process with its own config and data dir."""

    def __init__(self, binary: str, root: Path) -> None:
        self.binary = binary
        self.root = root
        self.tcp_port = free_port()
        self.http_port = free_port()
        self.tls_port: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.cert: Path | None = None
        for d in ("log", "data", "tmp", "user_files", "format_schemas"):
            (root / d).mkdir(parents=True, exist_ok=True)
        tls = ""
        if shutil.which("openssl"):
            self.cert = root / "server.crt"
            subprocess.run(
                [
                    "openssl",
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=localhost",
                    "-keyout",
                    str(root / "server.key"),
                    "-out",
                    str(self.cert),
                ],
                check=True,
                capture_output=True,
            )
            self.tls_port = free_port()
            tls = _TLS.format(port=self.tls_port, root=root)
        (root / "config.xml").write_text(
            _CONFIG.format(root=root, tcp=self.tcp_port, http=self.http_port, tls=tls)
        )
        (root / "users.xml").write_text(_USERS.format(user=USER, password=PASSWORD))

    def url(self, database: str, password: bool = True) -> str:
        from urllib.parse import quote

        auth = f"{USER}:{quote(PASSWORD, safe='')}" if password else USER
        return f"clickhouse://{auth}@127.0.0.1:{self.tcp_port}/{database}"

    def tls_url(self, database: str) -> str:
        from urllib.parse import quote

        assert self.tls_port is not None
        return (
            f"clickhouses://{USER}:{quote(PASSWORD, safe='')}@localhost:{self.tls_port}/{database}"
        )

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def start(self, timeout: float = 60.0) -> ClickHouseServer:
        out = open(self.root / "log" / "stdout.log", "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [self.binary, f"--config-file={self.root / 'config.xml'}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=self.root,
        )
        out.close()
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"clickhouse-server exited with {self.proc.returncode}: " + self.log_tail()
                )
            try:
                self.query("SELECT 1")
                return self
            except Exception as exc:
                last = exc
                time.sleep(0.2)
        self.kill9()
        raise RuntimeError(f"clickhouse-server did not answer within {timeout}s: {last}")

    def query(self, sql: str) -> list[Any]:
        from clickhouse_driver import Client

        c = Client("127.0.0.1", port=self.tcp_port, connect_timeout=2, send_receive_timeout=30)
        try:
            rows: list[Any] = c.execute(sql)
            return rows
        finally:
            c.disconnect()

    def kill9(self) -> None:
        """SIGKILL, as a crash would: no shutdown, no flush."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def log_tail(self, n: int = 20) -> str:
        lines: list[str] = []
        for name in ("stdout.log", "server.err.log"):
            p = self.root / "log" / name
            if p.exists():
                lines += p.read_text(errors="replace").splitlines()[-n:]
        return "\n".join(lines)


_SERVER: list[ClickHouseServer] = []


def get_server(request: pytest.FixtureRequest) -> ClickHouseServer:
    """The suite's clickhouse-server, started on first use, stopped when the session
    ends (skips the test when it cannot start; fails it under CI=true)."""
    if _SERVER:
        return _SERVER[0]
    binary = server_binary()
    need(binary is not None, "clickhouse-server is not installed and apt-get could not install it")
    assert binary is not None
    root = request.config._tmp_path_factory.mktemp("clickhouse-server")  # type: ignore[attr-defined]
    server = ClickHouseServer(binary, root)
    try:
        server.start()
    except Exception as exc:
        need(False, f"clickhouse-server did not start: {exc}")
    _SERVER.append(server)

    def stop() -> None:
        server.stop()
        _SERVER.clear()

    request.config.add_cleanup(stop)
    return server


@pytest.fixture()
def clickhouse_server(request: pytest.FixtureRequest) -> ClickHouseServer:
    """The suite's clickhouse-server (see `get_server`)."""
    return get_server(request)


_CHDB_DIR: list[Path] = []


def get_chdb_dir(request: pytest.FixtureRequest) -> Path:
    """The data dir of this process's chDB (Settings.data_dir; chDB under <dir>/chdb):
    one per process, since chDB opens one directory per process."""
    if not _CHDB_DIR:
        d = request.config._tmp_path_factory.mktemp("tally-data")  # type: ignore[attr-defined]
        _CHDB_DIR.append(d)

        def close() -> None:
            from sinks.backend import close_chdb

            close_chdb()
            _CHDB_DIR.clear()

        request.config.add_cleanup(close)
    return _CHDB_DIR[0]


@pytest.fixture()
def chdb_dir(request: pytest.FixtureRequest) -> Path:
    """See `get_chdb_dir`."""
    return get_chdb_dir(request)


def storage_values(request: pytest.FixtureRequest, kind: str) -> dict[str, Any]:
    """Settings overrides for a fresh database on backend `kind` (chdb | server)."""
    db = unique_db()
    values: dict[str, Any] = {"data_dir": str(get_chdb_dir(request)), "clickhouse_database": db}
    if kind == "server":
        values["clickhouse_url"] = get_server(request).url(db)
    return values


def env_of(values: dict[str, Any]) -> dict[str, str]:
    """The same settings as TALLY_* environment variables (for the CLI)."""
    return {f"TALLY_{k.upper()}": str(v) for k, v in values.items()}


@pytest.fixture(params=["chdb", "server"])
def backend_kind(request: pytest.FixtureRequest) -> str:
    """Run a test against both backends."""
    kind: str = request.param
    return kind


@pytest.fixture()
def storage(backend_kind: str, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """Settings overrides for a fresh database on the chosen backend."""
    values = storage_values(request, backend_kind)
    yield values
    drop_database(values)


def connect_to(values: dict[str, Any]) -> Any:
    from sinks.backend import connect
    from tally.config import Settings

    return connect(Settings(_env_file=None, **values))  # type: ignore[call-arg]


def drop_database(values: dict[str, Any]) -> None:
    import contextlib

    db = connect_to(values)
    with contextlib.suppress(Exception):
        db.execute("DROP DATABASE IF EXISTS {db}")
    db.close()


@pytest.fixture()
def backend(storage: dict[str, Any]) -> Iterator[Any]:
    """A connected backend (chDB or the server) on a fresh database."""
    db = connect_to(storage)
    yield db
    db.close()


# ------------------------------------------------------------ what must be stored


async def read_values(bootstrap: str, topic: str) -> list[tuple[int, Any]]:
    """(partition, JSON value) of every message of a topic, to its true end."""
    import json

    from streams.offsets import read_to_end

    out = []
    for m in await read_to_end(bootstrap, topic):
        try:
            out.append((m.partition, json.loads(m.value)))
        except ValueError:
            continue  # not something a tally worker wrote (a test's garbage)
    return out


async def expected_results(settings: Any) -> dict[str, Any]:
    """What ClickHouse must hold, computed from the output topics (each id once)."""
    from sinks.rows import order_version
    from streams.app import account_balances
    from tally.core.ledger import Balance

    s = settings
    b = s.bootstrap_servers()
    breaks = {d["break_id"] for _, d in await read_values(b, s.topic_breaks)}
    postings: dict[str, Any] = {}
    for _, d in await read_values(b, s.topic_postings):
        postings[d["posting_id"]] = d
    legs: dict[tuple[str, str, str, str], int] = {}
    for d in postings.values():
        for leg in d["legs"]:
            k = (leg["account"], leg["bucket"], leg["component"], d["currency"])
            legs[k] = legs.get(k, 0) + int(leg["amount_minor"])
    orders: dict[str, tuple[int, str | None, str]] = {}
    for _, d in await read_values(b, s.topic_order_states):
        v = order_version(d["version"], d["queries_sent"], len(d["breaks"]))
        if d["txn_id"] not in orders or v >= orders[d["txn_id"]][0]:
            orders[d["txn_id"]] = (v, d["our_status"], d["standing"])
    shards: dict[str, tuple[int, Balance]] = {}
    for _, d in await read_values(b, s.topic_balances):
        bal = Balance(d["account"], d["currency"], dict(d["amounts_minor"]), d["version"])
        if d["key"] not in shards or d["version"] >= shards[d["key"]][0]:
            shards[d["key"]] = (d["version"], bal)
    balances = {
        (x.account, x.currency): _summary(x.summary())
        for x in account_balances((k, v[1]) for k, v in shards.items()).values()
    }
    return {
        "breaks": breaks,
        "postings": set(postings),
        "legs": {k: v for k, v in legs.items() if v},
        "queries": {d["query_id"] for _, d in await read_values(b, s.topic_status_queries)},
        "dead_letters": {d["dead_letter_id"] for _, d in await read_values(b, s.topic_dead_letter)},
        "orders": orders,
        "balances": balances,
    }


def _summary(d: dict[str, Any]) -> dict[str, Any]:
    keys = ("provisional", "confirmed", "gross", "refunds", "fees", "coupon_funding", "net")
    return {k: d[k] for k in (*keys, "postings")}


def stored_results(db: Any) -> dict[str, Any]:
    """The same figures as ClickHouse's queries see them (FINAL)."""
    from sinks import queries

    legs = {
        (r["account"], r["bucket"], r["component"], r["currency"]): int(r["n"])
        for r in db.query(
            "SELECT account, bucket, component, currency, sum(amount_minor) AS n "
            "FROM {db}.postings FINAL GROUP BY account, bucket, component, currency"
        )
    }
    return {
        "breaks": {r["break_id"] for r in db.query("SELECT break_id FROM {db}.breaks FINAL")},
        "postings": {
            r["posting_id"] for r in db.query("SELECT DISTINCT posting_id FROM {db}.postings FINAL")
        },
        "legs": {k: v for k, v in legs.items() if v},
        "queries": {
            r["query_id"] for r in db.query("SELECT query_id FROM {db}.status_queries FINAL")
        },
        "dead_letters": {
            r["dead_letter_id"]
            for r in db.query("SELECT dead_letter_id FROM {db}.dead_letters FINAL")
        },
        "orders": {
            r["txn_id"]: (int(r["version"]), r["our_status"], r["standing"])
            for r in db.query(
                "SELECT txn_id, version, our_status, standing FROM {db}.order_states FINAL"
            )
        },
        "balances": {(r["account"], r["currency"]): _summary(r) for r in queries.balances(db)},
    }


def assert_same_results(expected: dict[str, Any], stored: dict[str, Any]) -> None:
    for k in expected:
        e, s = expected[k], stored[k]
        if e != s:
            diff: dict[Any, Any]
            if isinstance(e, dict):
                diff = {x: (e.get(x), s.get(x)) for x in set(e) | set(s) if e.get(x) != s.get(x)}
            else:
                diff = {"missing": sorted(e - s)[:10], "extra": sorted(s - e)[:10]}
            raise AssertionError(f"{k}: {len(e)} expected, {len(s)} stored; first diffs {diff}")
