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


@pytest.fixture(scope="session")
def clickhouse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseServer]:
    binary = server_binary()
    need(binary is not None, "clickhouse-server is not installed and apt-get could not install it")
    assert binary is not None
    server = ClickHouseServer(binary, tmp_path_factory.mktemp("clickhouse-server"))
    try:
        server.start()
    except Exception as exc:
        need(False, f"clickhouse-server did not start: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def chdb_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The data dir of this process's chDB (Settings.data_dir; chDB under <dir>/chdb)."""
    d = tmp_path_factory.mktemp("tally-data")
    yield d
    from sinks.backend import close_chdb

    close_chdb()


@pytest.fixture(params=["chdb", "server"])
def backend_kind(request: pytest.FixtureRequest) -> str:
    """Run a test against both backends."""
    kind: str = request.param
    return kind


@pytest.fixture()
def storage(
    backend_kind: str, request: pytest.FixtureRequest, chdb_dir: Path
) -> Iterator[dict[str, Any]]:
    """Settings overrides for a fresh database on the chosen backend."""
    db = unique_db()
    values: dict[str, Any] = {"data_dir": str(chdb_dir), "clickhouse_database": db}
    if backend_kind == "server":
        server: ClickHouseServer = request.getfixturevalue("clickhouse_server")
        values["clickhouse_url"] = server.url(db)
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
