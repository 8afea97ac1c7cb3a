"""The state every command shares (tally/cli/common.py): settings read once by the root
group's object, `--database` applied without touching the environment, invalid settings
named only for the commands that need settings."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from tally.cli import config, main
from tally.cli.common import CliState, check_date, read_settings


def test_settings_are_read_once_with_the_database_applied(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./.env
    monkeypatch.delenv("TALLY_CLICKHOUSE_DATABASE", raising=False)
    state = CliState("elsewhere")
    assert state.settings is state.settings
    assert state.settings.clickhouse_database == "elsewhere"
    assert state.settings_for("demo").clickhouse_database == "demo"
    assert CliState().settings.clickhouse_database == "tally"


def test_database_option_reaches_the_command_and_leaves_the_environment_alone() -> None:
    r = CliRunner().invoke(main, ["--database", "mine", "config", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["clickhouse_database"] == "mine"
    assert os.environ.get("TALLY_CLICKHOUSE_DATABASE") != "mine"


def test_invalid_settings_are_named_for_commands_that_need_them(tmp_path: Path) -> None:
    env = {"TALLY_BROKER": "localhost:9092", "TALLY_PARTITIONS": "0"}
    r = CliRunner().invoke(main, ["config"], env=env)
    assert r.exit_code == 1
    assert "invalid settings" in r.output
    assert "TALLY_BROKER" in r.output and "TALLY_PARTITIONS" in r.output
    # a command that needs no settings still works
    out = str(tmp_path / "dash")
    r = CliRunner().invoke(main, ["dashboards", "build", "--out", out], env=env)
    assert r.exit_code == 0, r.output
    with pytest.raises(click.ClickException, match="TALLY_BROKER"):
        read_settings(broker="localhost:9092")


def test_a_command_on_another_group_reads_the_settings_itself() -> None:
    @click.group()
    def other() -> None: ...

    config.register(other)
    r = CliRunner().invoke(other, ["config", "--json"], env={"TALLY_PARTITIONS": "3"})
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["partitions"] == 3


def test_check_date() -> None:
    assert check_date(None, None, "2026-11-24") == "2026-11-24"
    assert check_date(None, None, None) is None
    with pytest.raises(click.BadParameter, match="not a date"):
        check_date(None, None, "2026-13-01")
