"""`tally statements load FILE --kind bank|payouts`, `tally recon settlements` and
`tally recon merchants`.

tally statements load bank-2026-11-24.sta --kind bank --account 6222021001112223334
tally statements load payouts-2026-11-24.csv --kind payouts --date 2026-11-24
tally recon settlements --date 2026-11-24 [--window 10] [--json] [--dry-run] [--class C]
tally recon merchants --date 2026-11-24 [--source file|bank] [--json] [--dry-run] [--class C]
"""

from __future__ import annotations

import json
from datetime import date

import click

from recon.funds.payouts import CLASSES as PAYOUT_CLASSES
from recon.funds.settlement import BREAK_CLASSES, CLASSES
from recon.statements.model import StatementError
from tally.cli.common import CliState, check_date, db, pass_state


def load_bank(
    state: CliState,
    file_name: str,
    data: bytes,
    account: str,
    fmt: str | None,
    day: str | None,
    who: str,
    as_json: bool,
) -> None:
    """Parse and check a bank statement whole, then store it as a new version."""
    from recon.funds.bank import FORMATS, parse
    from recon.funds.store import store_bank_statement

    if fmt is not None and fmt not in FORMATS:
        raise click.UsageError(f"a bank statement is {' or '.join(FORMATS)}, not {fmt}")
    try:
        st = parse(data, fmt, file_name=file_name)
        if st.account != account:
            field = ":25: (account)" if st.format == "mt940" else "Stmt/Acct/Id"
            raise StatementError(
                f"the file is for account {st.account!r}, not --account {account!r}",
                file_name=file_name,
                field=field,
            )
        if day is not None and date.fromisoformat(day) != st.statement_date:
            raise StatementError(
                f"the file is for {st.statement_date}, not --date {day}",
                file_name=file_name,
                field="closing balance date",
            )
    except StatementError as exc:
        raise click.ClickException(f"rejected, nothing loaded: {exc}") from None
    with db(state.settings, migrate_first=True) as conn:
        r = store_bank_statement(conn, st, account, loaded_by=who)
    if as_json:
        click.echo(json.dumps(r.to_json(), indent=2))
        return
    if r.status == "already_loaded":
        click.echo(
            f"{file_name}: already loaded as delivery {r.delivery} of account {account} "
            f"{r.statement_date}; nothing changed"
        )
        return
    click.echo(
        f"{file_name}: loaded {r.format} bank statement of account {account} for "
        f"{r.statement_date} as delivery {r.delivery}"
        + (f", superseding {', '.join(map(str, r.superseded))}" if r.superseded else "")
    )
    click.echo(f"  entries  {r.entries:,}")
    click.echo(f"  credits  {r.credits}")
    click.echo(f"  debits   {r.debits}")
    click.echo(f"  balance  {r.opening} -> {r.closing}")


@click.command("settlements")
@click.option("--date", "day", required=True, callback=check_date, help="bank value date")
@click.option(
    "--window",
    type=click.IntRange(1, 60),
    default=10,
    show_default=True,
    help="days before --date whose settlements and credits are looked at",
)
@click.option("--class", "cls", type=click.Choice(CLASSES), help="show only this class")
@click.option("--json", "as_json", is_flag=True, help="print the run as JSON")
@click.option("--dry-run", is_flag=True, help="classify and report only: store nothing")
@pass_state
def settlements_cmd(
    state: CliState, day: str, window: int, cls: str | None, as_json: bool, dry_run: bool
) -> None:
    """Settlement reconciliation: the credits in our bank account against what each
    channel's statements say it owes per settlement date (docs/reconciliation.md,
    "Settlement"). Stores the run, reports what changed since the previous run of the
    date and parks the breaks in suspense."""
    from recon.funds.store import result_json, run_settlements

    s = state.settings
    with db(s, migrate_first=True) as conn:
        o = run_settlements(
            conn, s.policies(), date.fromisoformat(day), window_days=window, dry_run=dry_run
        )
    if as_json:
        out = o.to_json()
        if cls:
            out["results"] = [r for r in out["results"] if r["class"] == cls]
        click.echo(json.dumps(out, indent=2))
        return
    counts = ", ".join(f"{k} {v}" for k, v in o.counts().items() if v)
    click.echo(
        f"settlements as of {day} (due or credited since {o.window_start})"
        + (" [dry run: nothing stored]" if dry_run else f": run {o.run_id}")
    )
    click.echo(f"  {counts or 'nothing expected, no credits'}")
    if o.previous_run:
        click.echo(f"  changed since {o.previous_run}: {len(o.changes)}")
        for c in o.changes:
            click.echo(f"    {c.item_key}: {c.old or '-'} -> {c.new or '-'}")
    if o.suspense:
        click.echo("  suspense: " + ", ".join(f"{k} {v}" for k, v in o.suspense.items()))
    shown = [
        r
        for r in o.results
        if (r.cls == cls if cls else r.cls in BREAK_CLASSES or r.cls == "settlement_late")
    ]
    for r in shown:
        j = result_json(r)
        exp, got = j["expected"] or "-", j["credited"] or "-"
        click.echo(
            f"  {r.cls:<19} {r.channel_id or '-':<10} {r.currency} expected {exp:>14} "
            f"credited {got:>14}  {r.detail}"
        )


def load_payouts(
    state: CliState, file_name: str, data: bytes, day: str, who: str, as_json: bool
) -> None:
    """Parse and check a payout batch file whole, then store it as a new version."""
    from recon.funds.merchants import store_payouts
    from recon.funds.payouts import parse_payouts

    try:
        pf = parse_payouts(data, date.fromisoformat(day), file_name=file_name)
    except StatementError as exc:
        raise click.ClickException(f"rejected, nothing loaded: {exc}") from None
    with db(state.settings, migrate_first=True) as conn:
        r = store_payouts(conn, pf, loaded_by=who)
    if as_json:
        click.echo(json.dumps(r.to_json(), indent=2))
        return
    if r.status == "already_loaded":
        click.echo(
            f"{file_name}: already loaded as delivery {r.delivery} of the payouts for "
            f"{day}; nothing changed"
        )
        return
    click.echo(
        f"{file_name}: loaded the payouts for business date {day} as delivery {r.delivery}"
        + (f", superseding {', '.join(map(str, r.superseded))}" if r.superseded else "")
    )
    click.echo(f"  payouts  {r.payouts:,}")
    for cur, total in r.totals.items():
        click.echo(f"  total    {total} {cur}")


@click.command("merchants")
@click.option("--date", "day", required=True, callback=check_date, help="business date")
@click.option(
    "--source",
    type=click.Choice(["file", "bank"]),
    default="file",
    show_default=True,
    help="the payout file loaded for the date, or the payout debits of the bank statements",
)
@click.option("--class", "cls", type=click.Choice(PAYOUT_CLASSES), help="show only this class")
@click.option("--json", "as_json", is_flag=True, help="print the run as JSON")
@click.option("--dry-run", is_flag=True, help="classify and report only: store nothing")
@pass_state
def merchants_cmd(
    state: CliState, day: str, source: str, cls: str | None, as_json: bool, dry_run: bool
) -> None:
    """Merchant payout reconciliation: what we paid each merchant for business date
    --date against `tally settle`'s payable (net less what open breaks hold back)
    (docs/reconciliation.md, "Merchant payouts"). Stores the run, reports what changed
    since the previous run of the date and parks the breaks in suspense."""
    from recon.funds.merchants import result_json, run_merchants

    with db(state.settings, migrate_first=True) as conn:
        o = run_merchants(conn, date.fromisoformat(day), source=source, dry_run=dry_run)
    if as_json:
        out = o.to_json()
        if cls:
            out["results"] = [r for r in out["results"] if r["class"] == cls]
        click.echo(json.dumps(out, indent=2, ensure_ascii=False))
        return
    counts = ", ".join(f"{k} {v}" for k, v in o.counts().items() if v)
    click.echo(
        f"merchant payouts for business date {day} from the {source}"
        + (" [dry run: nothing stored]" if dry_run else f": run {o.run_id}")
    )
    click.echo(f"  {counts or 'nothing payable, nothing paid'}")
    if o.disagreements:
        click.echo(f"  warning: settlement disagrees with the postings ({len(o.disagreements)})")
    if o.previous_run:
        click.echo(f"  changed since {o.previous_run}: {len(o.changes)}")
        for c in o.changes:
            click.echo(f"    {c['item_key']}: {c['old'] or '-'} -> {c['new'] or '-'}")
    if o.suspense:
        click.echo("  suspense: " + ", ".join(f"{k} {v}" for k, v in o.suspense.items()))
    for r in o.results:
        if (r.cls != cls) if cls else (r.cls == "payout_matched" and not r.held_amount):
            continue
        j = result_json(r)
        click.echo(
            f"  {r.cls:<17} {r.merchant_id:<10} {r.currency} expected {j['expected'] or '-':>14}"
            f" paid {j['paid'] or '-':>14}  {r.detail}"
        )


def register(recon_group: click.Group) -> None:
    """Add `tally recon settlements` and `tally recon merchants` to `tally recon`."""
    recon_group.add_command(settlements_cmd)
    recon_group.add_command(merchants_cmd)
