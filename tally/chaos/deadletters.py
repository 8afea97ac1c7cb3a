"""Dead letters compared by what was refused, not by where it was read.

A dead letter's id is its input's topic:partition:offset. When the inputs are fed
again to a fresh broker (the embedded broker restarted: `tally.chaos.outage`), each
is a new message at its own offset there, so the same malformed message is refused
again under another id. What must hold is that every malformed message is
dead-lettered, with the same reason: compared as (input topic, code, SHA-256 of the
raw value), the topic less the run's prefix.
"""

from __future__ import annotations

import json

from sinks.backend import Backend


def _content(topic: str, code: str, sha: str) -> str:
    return f"{topic.split('.', 1)[-1]}|{code}|{sha}"


def from_topic(dead_letters: dict[str, str]) -> dict[str, str]:
    """The dead-letter topic's messages (id -> JSON) by content."""
    out: dict[str, str] = {}
    for v in dead_letters.values():
        d = json.loads(v)
        out[_content(d["topic"], d["code"], d["value_sha256"])] = ""
    return out


def stored(db: Backend) -> tuple[dict[str, str], int]:
    """ClickHouse's dead letters by content, and how many rows there are (a message fed
    twice is refused twice: two rows, one content)."""
    rows = db.query("SELECT source_topic, code, value_sha256 FROM {db}.dead_letters FINAL")
    return {_content(r["source_topic"], r["code"], r["value_sha256"]): "" for r in rows}, len(rows)
