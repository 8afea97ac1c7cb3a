"""The `tally` command as a user runs it: real processes, the real embedded broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tally.breaks import BreakKind
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent


def tally(
    *args: str, env: dict[str, str] | None = None, timeout: float = 600, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "tally", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=cwd or ROOT,
    )


def test_help_everywhere() -> None:
    for cmd in (
        [],
        ["run"],
        ["simulate"],
        ["produce"],
        ["demo"],
        ["config"],
        ["bench"],
        ["bench", "stream"],
        ["bench", "core"],
    ):
        r = tally(*cmd, "--help")
        assert r.returncode == 0, r.stderr
        assert "Usage:" in r.stdout


def test_config_prints_effective_settings_and_masks_secrets(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("TALLY_PARTITIONS=6\n", encoding="utf-8")
    r = tally(
        "config", "--json", cwd=tmp_path, env={"TALLY_BROKER": "kafka://u:s3cret@kafka-1:9092"}
    )
    assert r.returncode == 0, r.stderr
    values = json.loads(r.stdout)
    assert values["partitions"] == 6  # from .env
    assert "s3cret" not in r.stdout


def test_bad_setting_is_named() -> None:
    r = tally("config", env={"TALLY_BROKER": "localhost:9092"})
    assert r.returncode != 0
    assert "TALLY_BROKER" in r.stderr and "kafka://" in r.stderr


@pytest.mark.broker
def test_simulate_to_file_produce_and_run_until_idle(tmp_path: Path, broker) -> None:
    out = tmp_path / "sim"
    r = tally("simulate", "--events", "3000", "--seed", "4", "--out", str(out))
    assert r.returncode == 0, r.stderr
    expected = {tuple(x) for x in json.loads((out / "expected-breaks.json").read_text())}
    # the file's envelopes name the default topics; only this test uses them on the
    # session broker
    run_id = free_port()
    env = {
        "TALLY_BROKER": broker.url,
        "TALLY_APP_ID": f"cli-{run_id}",
        "TALLY_WEB_PORT": "0",
        "TALLY_DATA_DIR": str(tmp_path / "data"),
    }
    r = tally("produce", str(out / "events.jsonl"), env=env)
    assert r.returncode == 0, r.stderr
    assert "sent" in r.stdout
    r = tally("run", "--until-idle", "3", "--json", env=env)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["events"] >= 3000
    assert sum(summary["breaks_by_kind"].values()) == len(expected)
    assert summary["dead_letters"] > 0 and summary["invariant_holds"]
    # ... and `tally run` stored every break in ClickHouse (chDB under the data dir)
    assert "restore skipped" in r.stderr
    assert str(tmp_path / "data" / "chdb") in summary["clickhouse"]["where"]
    r = tally("breaks", "--format", "json", env=env)
    assert r.returncode == 0, r.stderr
    assert {(b["kind"], b["txn_id"]) for b in json.loads(r.stdout)} == expected


@pytest.mark.broker
def test_run_stopped_and_started_on_a_fresh_embedded_broker_keeps_balances(
    tmp_path: Path,
) -> None:
    """`tally run` twice, each time on a new, empty embedded broker (the memory-only
    Tansu loses everything between runs): the second run restores its state from
    ClickHouse, so re-delivered events change nothing and the balances equal one
    uninterrupted pass of the pure core over the same events."""
    from streams.broker import EmbeddedBroker
    from tally.pipeline import LocalPipeline
    from tally.policy import Policies
    from tally.simulate import SimConfig, generate, write_jsonl

    events = generate(SimConfig(events=4_000, seed=5), Policies()).envelopes
    cut = int(len(events) * 0.6)
    parts = [events[:cut], events[cut - 300 :]]  # 300 events delivered again after the restart
    ref = LocalPipeline(partitions=4)
    ref.feed_all(events)
    expected = {
        (b.account, b.currency): {k: b.summary()[k] for k in ("confirmed", "provisional", "net")}
        for b in ref.book.balances.values()
    }
    env = {
        "TALLY_APP_ID": "restart",
        "TALLY_WEB_PORT": "0",
        "TALLY_DATA_DIR": str(tmp_path / "data"),
        "TALLY_IDLE_TICK_SECONDS": "3600",  # event time only, as the pure core
    }
    reports = []
    for i, part in enumerate(parts):
        broker = EmbeddedBroker("127.0.0.1", free_port(), str(tmp_path / f"broker{i}"))
        broker.start()
        try:
            env["TALLY_BROKER"] = broker.url
            write_jsonl(part, tmp_path / f"part{i}.jsonl")
            r = tally("produce", str(tmp_path / f"part{i}.jsonl"), env=env)
            assert r.returncode == 0, r.stderr
            r = tally("run", "--until-idle", "3", "--json", env=env)
            assert r.returncode == 0, r.stderr[-3000:]
            reports.append(r.stderr)
        finally:
            broker.stop()
    assert "restore skipped" in reports[0]
    assert "restored from embedded chDB" in reports[1]
    r = tally("balances", "--format", "json", env=env)
    assert r.returncode == 0, r.stderr
    got = {
        (b["account"], b["currency"]): {k: b[k] for k in ("confirmed", "provisional", "net")}
        for b in json.loads(r.stdout)
    }
    assert got == expected


def test_produce_names_the_bad_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text(
        '{"topic": "payments.callbacks", "key": "a", "value": {}}\n{oops\n', encoding="utf-8"
    )
    r = tally("produce", str(f), env={"TALLY_EMBEDDED_BROKER_PORT": str(free_port())})
    assert r.returncode != 0
    assert "line 2" in r.stderr


def test_demo_on_the_embedded_broker_finds_every_break_kind(tmp_path: Path) -> None:
    r = tally(
        "demo",
        "--events",
        "20000",
        "--json",
        cwd=tmp_path,
        env={"TALLY_EMBEDDED_BROKER_PORT": str(free_port()), "TALLY_WEB_PORT": "0"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    kinds = summary["breaks_by_kind"]
    assert set(kinds) == {k.value for k in BreakKind}
    assert all(v > 0 for v in kinds.values())
    assert summary["injected"]["missed"] == 0 and summary["injected"]["unexpected"] == 0
    assert summary["dead_letters"] == summary["injected"]["malformed"]
    # every result is in the embedded ClickHouse, where the summary says
    stored = summary["clickhouse"]
    assert str(tmp_path / "data" / "chdb") in stored["where"] and "tally_demo" in stored["where"]
    assert stored["rows"]["breaks"] >= sum(kinds.values())
    r = tally(
        "breaks", "--format", "json", cwd=tmp_path, env={"TALLY_CLICKHOUSE_DATABASE": "tally_demo"}
    )
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)) == sum(kinds.values())
