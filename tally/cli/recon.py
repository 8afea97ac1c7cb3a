"""`tally recon ...`: the end-of-day run and its results; `register(main)` adds them.

tally recon run --date D [--channel C] [--json]
tally recon results --date D --channel C [--run ID] [--class K] [--format F]
tally recon runs [--date D] [--channel C] [--format F]

(Suspense and write-off are under `tally breaks`: see tally/cli/breaks.py.)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date
from typing import Any

import click

from sinks.queries import money
from tally.cli import funds
from tally.cli.common import FORMATS, CliState, check_date, db, emit, pass_state


def _day(value: str) -> date:
    return date.fromisoformat(value)


def render_outcome(o: Any) -> list[str]:
    """A run as the morning reader wants it: what was compared, counts and amounts by
    class, what changed since the previous run, what went to suspense."""
    from tally.core.eod import CLASSES

    out = [
        f"{o.channel_id} {o.business_date.isoformat()}: statement delivery {o.delivery} "
        f"({o.checksum[:12] or 'no checksum'}), {o.ledger_items:,} ledger items, "
        f"{o.statement_items:,} statement lines; run {o.run_id} ({o.seconds:.2f}s)",
    ]
    rows = []
    for c in CLASSES:
        by = o.summary.get(c, {})
        if not by:
            rows.append({"class": c, "items": 0, "currency": "", "amount": ""})
        for cur, (n, amt) in sorted(by.items()):
            rows.append({"class": c, "items": n, "currency": cur, "amount": money(amt, cur)})
    out.append(_table(rows, ["class", "items", "currency", "amount"]))
    for cur, (n, adiff, fdiff) in sorted(getattr(o, "tolerated", {}).items()):
        out.append(
            f"matched within tolerance ({cur}): {n:,} items, amount differences "
            f"{money(adiff, cur)}, fee differences {money(fdiff, cur)}"
        )
    if getattr(o, "dry_run", False):
        out.append("dry run: nothing stored, suspense untouched")
    if o.previous_run is None:
        out.append("first run of this day")
    elif not o.changes:
        out.append(f"no change since run {o.previous_run}")
    else:
        out.append(f"{len(o.changes):,} items changed since run {o.previous_run}:")
        shown = [
            {
                "item": c.item_key,
                "was": c.old or "(absent)",
                "now": c.new or "(absent)",
                "ours": money(c.new_amount, c.currency) or "",
                "statement was": money(c.old_statement_amount, c.currency) or "",
                "statement now": money(c.new_statement_amount, c.currency) or "",
            }
            for c in o.changes[:50]
        ]
        out.append(_table(shown, ["item", "was", "now", "ours", "statement was", "statement now"]))
        if len(o.changes) > 50:
            out.append(f"... and {len(o.changes) - 50:,} more (--json lists all)")
    if o.suspense:
        s = o.suspense
        posted = o.posted_to.isoformat() if o.posted_to else ""
        late = (
            f" (posted to {posted}: the day was already reconciled, S7)"
            if o.posted_to and o.posted_to != o.business_date
            else ""
        )
        out.append(
            f"suspense: {s.get('opened', 0) + s.get('breaks_opened', 0)} opened{late}, "
            f"{s.get('updated', 0) + s.get('breaks_updated', 0)} updated, "
            f"{s.get('cleared', 0)} cleared by this run, {s.get('reopened', 0)} reopened"
        )
    return out


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    cells = [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(x[i]) for x in cells]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for x in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(x, widths, strict=True)).rstrip())
    return "\n".join(lines)


@click.group("recon")
def recon_group() -> None:
    """End-of-day reconciliation: ledger vs channel statements (see docs/reconciliation.md)."""


@recon_group.command("run")
@click.option("--date", "day", required=True, callback=check_date, help="business date")
@click.option("--channel", help="one channel (default: every channel with data that day)")
@click.option("--json", "as_json", is_flag=True, help="print the runs as JSON")
@click.option(
    "--dry-run", is_flag=True, help="classify and report only: store no run, touch no suspense"
)
@pass_state
def run_cmd(state: CliState, day: str, channel: str | None, as_json: bool, dry_run: bool) -> None:
    """Compare a business day's ledger with the channels' statements in force, store
    the classified results, report changes since the previous run, update suspense."""
    from recon import run as R

    s = state.settings
    d = _day(day)
    outcomes = []
    skipped = []
    with db(s) as conn:
        channels = [channel] if channel else R.channels_of(conn, d)
        if not channels:
            raise click.ClickException(f"nothing to reconcile on {day}: no statement, no ledger")
        for ch in channels:
            try:
                outcomes.append(R.run(conn, ch, d, s.policies()[ch], dry_run=dry_run))
            except R.ReconError as exc:
                if channel:
                    raise click.ClickException(str(exc)) from None
                skipped.append((ch, str(exc)))
    if as_json:
        click.echo(
            json.dumps(
                {
                    "runs": [o.to_json() for o in outcomes],
                    "skipped": [{"channel_id": c, "reason": r} for c, r in skipped],
                },
                indent=2,
            )
        )
        return
    for i, o in enumerate(outcomes):
        if i:
            click.echo("")
        for line in render_outcome(o):
            click.echo(line)
    for ch, why in skipped:
        click.echo(f"skipped {ch}: {why}", err=True)


@recon_group.command("results")
@click.option("--date", "day", required=True, callback=check_date, help="business date")
@click.option("--channel", required=True, help="channel id")
@click.option("--run", "run_id", help="run id (default: the latest run)")
@click.option("--class", "cls", help="only this class, e.g. short")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
@pass_state
def results_cmd(
    state: CliState, day: str, channel: str, run_id: str | None, cls: str | None, fmt: str
) -> None:
    """The classified items of a run."""
    from recon import run as R

    d = _day(day)
    with db(state.settings) as conn:
        rid = run_id or R.latest_run(conn, channel, d)
        if rid is None:
            raise click.ClickException(f"no run for {channel} on {day}: `tally recon run` first")
        rows = R.results(conn, channel, d, rid, cls)
    for r in rows:
        for k in (
            "ledger_amount",
            "statement_amount",
            "ledger_fee",
            "statement_fee",
            "amount_difference",
            "fee_difference",
        ):
            r[k] = money(r[k], r["currency"])
        r["business_date"] = r["business_date"].isoformat()
    emit(
        rows,
        fmt,
        [
            "item_key",
            "class",
            "kind",
            "currency",
            "ledger_amount",
            "statement_amount",
            "ledger_fee",
            "statement_fee",
            "statement_status",
            "statement_line",
            "match_method",
            "score",
            "amount_difference",
            "fee_difference",
            "detail",
        ],
    )
    if fmt == "table":
        click.echo(f"({len(rows):,} items, run {rid})", err=True)


def _decide(
    state: CliState,
    action: str,
    item: str,
    candidate: str | None,
    channel: str | None,
    day: str | None,
    by: str,
    reason: str,
) -> None:
    from recon import run as R

    with db(state.settings) as conn:
        found = R.proposed_items(conn, item, channel, _day(day) if day else None)
        if not found:
            raise click.ClickException(
                f"{item}: no proposed item of that name in the latest runs "
                "(`tally recon results --class proposed` lists them)"
            )
        if len(found) > 1:
            where = ", ".join(f"{p.channel_id} {p.business_date}" for p in found)
            raise click.ClickException(f"{item} is proposed on {where}: name --channel and --date")
        try:
            chosen = R.decide(conn, found[0], action, candidate, by, reason)
        except R.ReconError as exc:
            raise click.ClickException(str(exc)) from None
    p = found[0]
    click.echo(
        f"{action}ed {item} -> {', '.join(chosen)} ({p.channel_id} {p.business_date}) by {by}; "
        f"recorded, nothing overwritten; `tally recon run --date {p.business_date} "
        f"--channel {p.channel_id}` applies it"
    )


_ITEM_OPTS = (
    click.argument("item"),
    click.option("--candidate", help="the order (txn id) among the proposed candidates"),
    click.option("--channel", help="channel id, when the item is proposed on several"),
    click.option("--date", "day", callback=check_date, help="business date, likewise"),
    click.option("--by", required=True, help="who decides"),
    click.option("--reason", required=True, help="why"),
)


def _with_item_opts(f: Callable[..., None]) -> Callable[..., None]:
    for deco in reversed(_ITEM_OPTS):
        f = deco(f)
    return f


@recon_group.command("accept")
@_with_item_opts
@pass_state
def accept_cmd(
    state: CliState,
    item: str,
    candidate: str | None,
    channel: str | None,
    day: str | None,
    by: str,
    reason: str,
) -> None:
    """Accept a proposed line's candidate (append-only; the next run matches them)."""
    _decide(state, "accept", item, candidate, channel, day, by, reason)


@recon_group.command("reject")
@_with_item_opts
@pass_state
def reject_cmd(
    state: CliState,
    item: str,
    candidate: str | None,
    channel: str | None,
    day: str | None,
    by: str,
    reason: str,
) -> None:
    """Reject a proposed line's candidate, or all of them (append-only)."""
    _decide(state, "reject", item, candidate, channel, day, by, reason)


@recon_group.command("runs")
@click.option("--date", "day", callback=check_date, help="business date")
@click.option("--channel", help="channel id")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
@pass_state
def runs_cmd(state: CliState, day: str | None, channel: str | None, fmt: str) -> None:
    """Runs made, newest first."""
    where = ["1 = 1"]
    params: dict[str, Any] = {}
    if day:
        where.append("business_date = toDate(%(d)s)")
        params["d"] = day
    if channel:
        where.append("channel_id = %(c)s")
        params["c"] = channel
    with db(state.settings) as conn:
        rows = conn.query(
            "SELECT run_id, channel_id, business_date, statement_delivery, ledger_items, "
            "statement_items, counts, started_at_ms FROM {db}.recon_runs FINAL WHERE "
            + " AND ".join(where)
            + " ORDER BY started_at_ms DESC, run_id DESC",
            params,
        )
    from tally.core.events import iso_ms

    for r in rows:
        r["business_date"] = r["business_date"].isoformat()
        r["started_at"] = iso_ms(int(r.pop("started_at_ms")))
        r["counts"] = json.loads(r["counts"])
    emit(
        rows,
        fmt,
        [
            "run_id",
            "channel_id",
            "business_date",
            "statement_delivery",
            "ledger_items",
            "statement_items",
            "started_at",
            "counts",
        ],
    )


def register(main: click.Group) -> None:
    """Add `tally recon` to the `tally` command group (with `settlements` and
    `merchants`, tally/cli/funds.py)."""
    funds.register(recon_group)
    main.add_command(recon_group)
