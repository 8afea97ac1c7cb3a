"""The `tally` command as a user runs it: real processes, the real embedded broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from streams.broker import EmbeddedBroker
from tally.core.breaks import BreakKind
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


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


def test_every_command_has_parsing_examples_in_its_help(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every command's --help ends with examples, and each example parses: the
    command exists, its options and values are accepted (nothing is run)."""
    import shlex

    import click
    from click.testing import CliRunner

    from tally.cli import main
    from tally.cli.examples import EXAMPLES, commands

    monkeypatch.chdir(tmp_path)
    for f in (
        "sim/events.jsonl",
        "data/demo/statements/wechat/wechat-2026-12-02.csv",
        "bank-2026-12-02.sta",
        "payouts-2026-12-02.csv",
    ):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("", encoding="utf-8")
    tree = commands(main)
    assert set(tree) == set(EXAMPLES), set(tree) ^ set(EXAMPLES)
    runner = CliRunner()
    for path in tree:
        r = runner.invoke(main, [*path.split(), "--help"])
        assert r.exit_code == 0 and "Examples:" in r.output, path
    for path, examples in EXAMPLES.items():
        for example in examples:
            words = shlex.split(example, comments=True)
            words = words[3:] if words[:3] == ["python3", "-m", "tally"] else words[1:]
            plain = [w for w in words if w not in ("--database", "tally_demo")]
            assert plain[: len(path.split())] == path.split(), (path, example)
            ctx = main.make_context("tally", list(words))
            cmd: click.Command = main
            rest = [*ctx.protected_args, *ctx.args]
            while isinstance(cmd, click.Group) and rest:
                name, sub, rest = cmd.resolve_command(ctx, rest)
                assert sub is not None and name is not None, example
                cmd, ctx = sub, sub.make_context(name, rest, parent=ctx)
                rest = [*ctx.protected_args, *ctx.args] if isinstance(sub, click.Group) else []
            assert rest == [], example


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
def test_simulate_to_file_produce_and_run_until_idle(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
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
    from tally.core.pipeline import LocalPipeline
    from tally.core.policy import Policies
    from tally.sim.traffic import SimConfig, generate, write_jsonl

    events = generate(SimConfig(events=4_000, seed=5), Policies()).envelopes
    cut = int(len(events) * 0.6)
    parts = [events[:cut], events[cut - 300 :]]  # 300 events delivered again after the restart
    ref = LocalPipeline(partitions=4, clock=lambda: 0)
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


def _as_installed(tmp_path: Path) -> dict[str, str]:
    """A shell environment as after `pip install -e .`: `python3` is this interpreter
    and finds tally; no TALLY_* variable set."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if not (bin_dir / "python3").exists():
        (bin_dir / "python3").symlink_to(sys.executable)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    return env


def test_demo_runs_the_whole_day_and_its_next_commands_work_as_printed(tmp_path: Path) -> None:
    """The README's first command, from a fresh directory: the stream and the next
    morning, a story with what was found, and 4-6 commands that then work exactly as
    printed, from the same directory, with nothing set. A second run starts clean."""
    env = _as_installed(tmp_path)
    ports = {"TALLY_EMBEDDED_BROKER_PORT": str(free_port()), "TALLY_WEB_PORT": "0"}
    demo = "python3 -m tally demo --events 20000 --seed 2"
    r = subprocess.run(
        demo,
        shell=True,
        cwd=tmp_path,
        env={**env, **ports},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    _check_story(r.stdout, tmp_path)
    commands = [line[4:] for line in r.stdout.splitlines() if line.startswith("  $ ")]
    assert 4 <= len(commands) <= 6, commands
    for cmd in commands:
        c = subprocess.run(
            cmd, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        assert c.returncode == 0, (cmd, c.stderr[-2000:])
        assert c.stdout.strip(), cmd
    # the obvious next step without the flag names the command that works
    c = subprocess.run(
        "python3 -m tally breaks",
        shell=True,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert c.returncode != 0 and "tally --database tally_demo breaks" in c.stderr, c.stderr

    # again, as JSON: a fresh start (every statement loaded anew, same findings)
    r = tally(
        "demo",
        "--events",
        "20000",
        "--seed",
        "2",
        "--json",
        cwd=tmp_path,
        env={**ports, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    _check_summary(summary, tmp_path)
    r = tally(
        "--database",
        "tally_demo",
        "breaks",
        "--format",
        "json",
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)) == sum(summary["breaks_by_kind"].values())


def _check_story(story: str, tmp_path: Path) -> None:
    """The demo's printed story: the stream and the next morning, all found."""
    assert "backlog drain" in story and "tally demo --live" in story
    assert story.count("precision 1.000, recall 1.000") == 2, story
    for fmt in ("wechat", "alipay", "mt940", "camt053", "csv"):
        assert f"  {fmt} " in story, fmt
    assert "(not " not in story  # every channel in its own format, no fallback
    assert "agrees with the stream's postings" in story and "DISAGREES" not in story
    reports = sorted((tmp_path / "data" / "demo").glob("morning-report-*.html"))
    assert len(reports) == 2 and all(str(p.relative_to(tmp_path)) in story for p in reports)


def _check_summary(summary: dict[str, Any], tmp_path: Path) -> None:
    """The demo's --json summary: every break kind, nothing missed, the end of day."""
    kinds = summary["breaks_by_kind"]
    assert set(kinds) == {k.value for k in BreakKind} and all(v > 0 for v in kinds.values())
    inj = summary["injected"]
    assert inj["missed"] == 0 and inj["unexpected"] == 0
    assert summary["dead_letters"] == inj["malformed"]
    assert "backlog" in summary["latency_measures"]
    eod = summary["end_of_day"]
    assert eod["precision"] == 1.0 and eod["recall"] == 1.0
    assert {s["status"] for s in eod["statements"]} == {"loaded"}
    assert eod["settlement_agrees_with_postings"] and len(eod["written_off"]) == 3
    stored = summary["clickhouse"]
    assert str(tmp_path / "data" / "chdb") in stored["where"] and "tally_demo" in stored["where"]
    assert summary["next_commands"] and summary["timing"]["wall_seconds"] > 0


def test_demo_never_writes_into_a_database_it_did_not_create(tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(ROOT)}
    r = tally("--database", "mine", "db", "migrate", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    r = tally("demo", "--events", "1000", "--database", "mine", cwd=tmp_path, env=env)
    assert r.returncode != 0
    assert "was not created by `tally demo`" in r.stderr
    r = tally("--database", "mine", "db", "status", cwd=tmp_path, env=env)
    assert r.returncode == 0 and "tally_demo_marker" not in r.stdout, r.stderr


def test_demo_live_reports_real_event_to_break_latency(tmp_path: Path) -> None:
    r = tally(
        "demo",
        "--live",
        "--rate",
        "300",
        "--seconds",
        "8",
        "--json",
        cwd=tmp_path,
        env={
            "PYTHONPATH": str(ROOT),
            "TALLY_EMBEDDED_BROKER_PORT": str(free_port()),
            "TALLY_WEB_PORT": "0",
        },
    )
    assert r.returncode == 0, r.stderr[-3000:]
    live = json.loads(r.stdout)
    assert live["events"] > 0 and live["samples"] > 0
    assert live["p50_ms"] is not None and live["p99_ms"] >= live["p50_ms"] > 0
    assert "live event-to-break latency" in live["measures"]
    assert not (tmp_path / "data" / "chdb").exists()  # --live stores nothing
