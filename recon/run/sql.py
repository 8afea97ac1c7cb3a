"""The comparison of one channel and business date, ledger vs statement, in ClickHouse.

The comparison is one `INSERT ... SELECT` (no per-row Python), written for both
backends: ClickHouse 18.16 (no window functions, no CTEs over subqueries) and chDB
26.x. It is the SQL twin of `tally.core.eod.classify` (the reference; a property test
keeps them in agreement), so read that module for the rules. Shape of the query:

1. ledger items of D (`order_states FINAL`, filtered after FINAL);
2. the lines of D's delivery in force, each resolved to a ledger item: by txn_id
   (`IN`), else by channel txn id (ANY LEFT JOIN on a map channel txn id -> smallest
   txn_id);
3. ledger rows, line rows and "quoted orders" (orders the lines name that are not
   items, to say why a line is long) in one UNION ALL, grouped by item key: a full
   outer join by aggregation, the first line of an item by argMinIf(…, line_no);
4. the class from the group's two sides; carried from the neighbouring days' rows
   (IN sets), or a constant when the neighbouring statement is not loaded.

Every value in the union is non-Nullable (fees as flag + value), so neither
`join_use_nulls` nor Nullable join keys matter.
"""

from __future__ import annotations

from recon.run.model import RESULT_COLUMNS

_ORDERS = (
    "(SELECT txn_id, channel_txn_id, type, currency, amount, coupon_amount, fee, "
    "merchant_id, created_at_ms, business_date, our_status, reversed, channel_id, "
    "original_txn_id "
    "FROM {db}.order_states FINAL)"
)
_ZERO = "toDecimal64(0, 4)"


def ledger_sql(day_param: str) -> str:
    """Ledger items of the channel on a business date (filtered after FINAL)."""
    return (
        "SELECT txn_id, ifNull(channel_txn_id, '') AS ctid, assumeNotNull(type) AS lkind, "
        "ifNull(currency, '') AS lcur, "
        f"if(assumeNotNull(type) = 'payment', ifNull(amount, {_ZERO}) - "
        f"ifNull(coupon_amount, {_ZERO}), ifNull(amount, {_ZERO})) AS lamt, "
        f"toUInt8(isNotNull(fee)) AS lfee_known, ifNull(fee, {_ZERO}) AS lfee, "
        "ifNull(merchant_id, '') AS lmerchant, ifNull(created_at_ms, 0) AS created, "
        "ifNull(original_txn_id, '') AS lorig "
        f"FROM {_ORDERS} WHERE channel_id = %(c)s AND business_date = toDate(%({day_param})s) "
        "AND our_status = 'success' AND reversed = 0 AND type IN ('payment', 'refund')"
    )


def lines_sql(day_param: str, delivery_param: str) -> str:
    return (
        "SELECT line_no, txn_id, channel_txn_id, kind, status, currency, amount, fee, "
        "occurred_at_ms, raw FROM {db}.statement_lines FINAL WHERE channel_id = %(c)s "
        f"AND business_date = toDate(%({day_param})s) AND delivery = %({delivery_param})s"
    )


def _near(col: str, cutoff_param: str) -> str:
    return f"abs({col} - %({cutoff_param})s) <= %(carry)s"


def _ledger_found(side: str, loaded: bool) -> str:
    """Is a ledger item (txn_id, ctid) on the neighbouring statement `side`?"""
    if not loaded:
        return "1"
    lines = (
        f"(SELECT txn_id, channel_txn_id FROM ({lines_sql(side, 'n_' + side)}) "
        "WHERE status = 'success' AND kind IN ('payment', 'refund'))"
    )
    return (
        f"(txn_id IN (SELECT txn_id FROM {lines}) OR "
        f"(ctid != '' AND ctid IN (SELECT channel_txn_id FROM {lines})))"
    )


def _line_found(side: str) -> str:
    """Is a line (stxn, sctid) an item of the neighbouring day's ledger `side`?"""
    items = f"({ledger_sql(side)})"
    return (
        f"((stxn != '' AND stxn IN (SELECT txn_id FROM {items})) OR "
        f"(sctid != '' AND sctid IN (SELECT ctid FROM {items} WHERE ctid != '')))"
    )


# The columns of the UNION ALL in classify_sql and their value where a side has none.
_UNION = (
    ("side", "toUInt8(0)"),
    ("key", "''"),
    ("txn", "''"),
    ("lctid", "''"),
    ("lkind", "''"),
    ("lcur", "''"),
    ("lamt", _ZERO),
    ("lfee_known", "toUInt8(0)"),
    ("lfee", _ZERO),
    ("merchant", "''"),
    ("lcarry", "''"),
    ("lexcess", "''"),
    ("qstatus", "''"),
    ("line_no", "toUInt32(0)"),
    ("sctid", "''"),
    ("skind", "''"),
    ("sstatus", "''"),
    ("scur", "''"),
    ("samt", _ZERO),
    ("sfee_known", "toUInt8(0)"),
    ("sfee", _ZERO),
    ("scarry", "''"),
    ("splain", "toUInt8(0)"),
    ("smethod", "''"),
    ("kmethod", "''"),
    ("kscore", "toUInt8(0)"),
    ("kdetail", "''"),
    ("kgamt", _ZERO),
    ("kgfee", _ZERO),
    ("klead", "toUInt8(0)"),
)


def _union_part(values: dict[str, str], source: str) -> str:
    """One SELECT of the union, every column in order. Defaults are materialized:
    ClickHouse 18.16 refuses a UNION ALL whose first SELECT has a constant where a
    later one has a column."""
    cols = []
    for name, default in _UNION:
        expr = values.get(name)
        if expr is None or expr.startswith("toUInt8("):
            expr = f"materialize({expr or default})"
        cols.append(expr if expr == name else f"{expr} AS {name}")
    return f"SELECT {', '.join(cols)} FROM {source}"


def _abs(x: str) -> str:
    return f"if(({x}) < 0, -({x}), ({x}))"  # abs() of a Decimal: not on 18.16


def resolved_sql(links: bool) -> str:
    """The day's lines, each with the item it resolves to by id (rk0: by txn_id, else
    by channel txn id, '' when neither) and, with links, the link's fields and one row
    per item it is linked to (rk)."""
    ledger = ledger_sql("d")
    base = (
        "SELECT line_no, stxn, sctid, skind, sstatus, scur, samt, sfee_known, sfee, sat, sraw, "
        "toUInt8(sstatus = 'success' AND skind IN ('payment', 'refund')) AS splain, "
        f"if(stxn != '' AND stxn IN (SELECT txn_id FROM ({ledger})), stxn, via) AS rk0 "
        "FROM (SELECT line_no, txn_id AS stxn, channel_txn_id AS sctid, kind AS skind, "
        f"status AS sstatus, currency AS scur, amount AS samt, toUInt8(isNotNull(fee)) "
        f"AS sfee_known, ifNull(fee, {_ZERO}) AS sfee, occurred_at_ms AS sat, raw AS sraw "
        f"FROM ({lines_sql('d', 'n_d')})) AS sl "
        "ANY LEFT JOIN (SELECT ctid AS sctid, min(txn_id) AS via "
        f"FROM ({ledger}) WHERE ctid != '' GROUP BY ctid) AS cm USING sctid"
    )
    if not links:
        return (
            "SELECT *, rk0 AS rk, materialize(multiIf(rk0 != '' AND stxn = rk0, 'id', "
            "rk0 != '', 'reference', '')) AS smethod, materialize('') AS kmethod, "
            f"toUInt8(0) AS kscore, materialize('') AS kdetail, materialize({_ZERO}) AS kgamt, "
            f"materialize({_ZERO}) AS kgfee, toUInt8(1) AS klead FROM ({base})"
        )
    linked = (
        "SELECT toUInt32(%(k_no)s[i]) AS line_no, %(k_members)s[i] AS kmem, "
        "%(k_method)s[i] AS kmethod, toUInt8(%(k_score)s[i]) AS kscore, "
        "%(k_detail)s[i] AS kdetail, toDecimal64(%(k_gamt)s[i], 4) AS kgamt, "
        "toDecimal64(%(k_gfee)s[i], 4) AS kgfee "
        "FROM (SELECT arrayJoin(range(toUInt32(%(k_n)s))) + 1 AS i)"
    )
    joined = f"SELECT * FROM ({base}) AS rl ANY LEFT JOIN ({linked}) AS lk USING line_no"
    return (
        "SELECT *, multiIf(kmethod NOT IN ('', 'proposed'), kmethod, rk0 != '' AND stxn = rk0, "
        "'id', rk0 != '', 'reference', '') AS smethod, "
        "toUInt8(kmethod != 'combined' OR rk = splitByChar(',', kmem)[1]) AS klead "
        "FROM (SELECT *, arrayJoin(if(kmethod NOT IN ('', 'proposed'), "
        f"splitByChar(',', kmem), [rk0])) AS rk FROM ({joined}))"
    )


def _ledger_with_excess() -> str:
    """Ledger items of D, each refund flagged (lexcess: its payment) when our refunds
    of its payment up to D exceed the payment (`tally.core.matching.refund_excess`)."""
    excess = (
        "SELECT orig AS lorig, toUInt8(1) AS xflag FROM (SELECT if(type = 'refund', "
        "ifNull(original_txn_id, ''), txn_id) AS orig, type AS t, "
        f"ifNull(amount, {_ZERO}) AS a FROM {_ORDERS} WHERE channel_id = %(c)s AND "
        "(type = 'payment' OR (type = 'refund' AND our_status = 'success' AND reversed = 0 "
        "AND business_date <= toDate(%(d)s) AND ifNull(original_txn_id, '') != ''))) "
        "GROUP BY orig HAVING max(t = 'payment') = 1 AND countIf(t = 'refund') > 0 "
        "AND sumIf(a, t = 'refund') > maxIf(a, t = 'payment')"
    )
    return (
        "SELECT *, if(lkind = 'refund' AND xflag = 1, lorig, '') AS lexcess "
        f"FROM ({ledger_sql('d')}) AS lx ANY LEFT JOIN ({excess}) AS ex USING lorig"
    )


def classify_sql(prev_loaded: bool, next_loaded: bool, links: bool = False) -> str:
    """INSERT ... SELECT of every item of (C, D) into recon_results. `links`: the
    query takes the run's links (`tally.core.matching.find_links`) as array parameters."""
    union = (
        f"{_ledger_rows(prev_loaded, next_loaded)} UNION ALL {_line_rows(links)} "
        f"UNION ALL {_quoted_rows()}"
    )
    grouped = _grouped(union)
    cls, detail, adiff, fdiff, score = _outcome()
    cols = ", ".join(RESULT_COLUMNS)
    return (
        f"INSERT INTO {{db}}.recon_results ({cols}) "
        f"SELECT %(run)s, %(c)s, toDate(%(d)s), key, {cls} AS cls, "
        "if(has_l, l_txn, s_txn), if(has_l AND l_ctid != '', l_ctid, s_ctid), merchant, "
        "if(has_l, lkind, skind), if(has_l, lcur, scur), "
        "if(has_l, toNullable(lamt), NULL), if(has_s, toNullable(samt), NULL), "
        "if(has_l AND lfee_known, toNullable(lfee), NULL), "
        "if(has_s AND sfee_known, toNullable(sfee), NULL), "
        "if(has_l, 'success', qstatus), sstatus, line, "
        f"{detail}, {adiff}, {fdiff}, if(has_l AND has_s, smethod, ''), {score} "
        f"FROM ({grouped}) WHERE has_l OR s_plain"
    )


def _ledger_rows(prev_loaded: bool, next_loaded: bool) -> str:
    """The ledger side of the union: D's items, carried when near a cutoff and on the
    neighbouring statement."""
    lcarry = (
        f"multiIf({_near('created', 'end_ms')} AND {_ledger_found('dnext', next_loaded)}, "
        f"%(lc_next)s, {_near('created', 'start_ms')} AND "
        f"{_ledger_found('dprev', prev_loaded)}, %(lc_prev)s, '')"
    )
    return _union_part(
        {
            "side": "toUInt8(1)",
            "key": "txn_id",
            "txn": "txn_id",
            "lctid": "ctid",
            "lkind": "lkind",
            "lcur": "lcur",
            "lamt": "lamt",
            "lfee_known": "lfee_known",
            "lfee": "lfee",
            "merchant": "lmerchant",
            "lcarry": lcarry,
            "lexcess": "lexcess",
        },
        f"({_ledger_with_excess()})",
    )


def _line_rows(links: bool) -> str:
    """The statement side of the union: D's lines, each keyed by the item it resolves
    to (else its own ids), carried when near a cutoff and in the neighbouring ledger."""
    scarry = (
        f"multiIf(splain AND {_near('sat', 'end_ms')} AND {_line_found('dnext')}, "
        f"%(sc_next)s, splain AND {_near('sat', 'start_ms')} AND "
        f"{_line_found('dprev')}, %(sc_prev)s, '')"
    )
    return _union_part(
        {
            "side": "toUInt8(2)",
            "key": "multiIf(rk != '', rk, stxn != '', stxn, sctid != '', sctid, "
            "concat('line:', toString(line_no)))",
            "txn": "stxn",
            "line_no": "line_no",
            "sctid": "sctid",
            "skind": "skind",
            "sstatus": "sstatus",
            "scur": "scur",
            "samt": "samt",
            "sfee_known": "sfee_known",
            "sfee": "sfee",
            "scarry": scarry,
            "splain": "splain",
            "smethod": "smethod",
            "kmethod": "kmethod",
            "kscore": "kscore",
            "kdetail": "kdetail",
            "kgamt": "kgamt",
            "kgfee": "kgfee",
            "klead": "klead",
        },
        f"({resolved_sql(links)})",
    )


def _quoted_rows() -> str:
    """Orders the lines name that are not items (to say why a line is long)."""
    ledger = ledger_sql("d")
    lines = lines_sql("d", "n_d")
    return _union_part(
        {
            "side": "toUInt8(3)",
            "key": "txn_id",
            "txn": "txn_id",
            "merchant": "ifNull(merchant_id, '')",
            "qstatus": "if(reversed = 1, 'reversed', ifNull(our_status, ''))",
        },
        f"{_ORDERS} WHERE channel_id = %(c)s "
        f"AND txn_id IN (SELECT txn_id FROM ({lines}) WHERE txn_id != '') "
        f"AND txn_id NOT IN (SELECT txn_id FROM ({ledger}))",
    )


# the line an item is compared with: the first that is not a plain success, else
# the first (a payment and its revocation: the revocation)
_ORDER = "toUInt64(line_no) + if(splain, 4294967296, 0)"


def _grouped(union: str) -> str:
    """The union grouped by item key: a full outer join by aggregation."""
    return (
        "SELECT key, max(side = 1) AS has_l, max(side = 2) AS has_s, "
        "anyIf(txn, side = 1) AS l_txn, anyIf(lctid, side = 1) AS l_ctid, "
        "anyIf(lkind, side = 1) AS lkind, anyIf(lcur, side = 1) AS lcur, "
        "anyIf(lamt, side = 1) AS lamt, anyIf(lfee_known, side = 1) AS lfee_known, "
        "anyIf(lfee, side = 1) AS lfee, anyIf(merchant, side != 2) AS merchant, "
        "anyIf(lcarry, side = 1) AS lcarry, anyIf(lexcess, side = 1) AS lexcess, "
        "anyIf(qstatus, side = 3) AS qstatus, "
        f"argMinIf(line_no, {_ORDER}, side = 2) AS line, "
        + "".join(
            f"argMinIf({c}, {_ORDER}, side = 2) AS {a}, "
            for c, a in (
                ("txn", "s_txn"),
                ("sctid", "s_ctid"),
                ("skind", "skind"),
                ("sstatus", "sstatus"),
                ("scur", "scur"),
                ("samt", "samt"),
                ("sfee_known", "sfee_known"),
                ("sfee", "sfee"),
                ("scarry", "scarry"),
                ("splain", "s_plain"),
                ("smethod", "smethod"),
                ("kmethod", "kmethod"),
                ("kscore", "kscore"),
                ("kdetail", "kdetail"),
                ("kgamt", "kgamt"),
                ("kgfee", "kgfee"),
                ("klead", "klead"),
            )
        )
        + "countIf(side = 2) AS nlines "
        f"FROM ({union}) GROUP BY key"
    )


def _outcome() -> tuple[str, str, str, str, str]:
    """The class, detail, amount and fee differences and score of a grouped item."""
    # what the line is compared with: the item, or a combined group's sums
    cmp = "if(smethod = 'combined', kgamt, lamt)"
    cfee = f"if(smethod = 'combined', kgfee, {_abs('lfee')})"
    dd = f"if(samt >= {cmp}, samt - {cmp}, {cmp} - samt)"
    amount_ok = (
        f"({dd} <= toDecimal64(%(atol)s, 4) OR toDecimal128({dd}, 4) * 10000 <= "
        f"toDecimal128({_abs(cmp)}, 4) * %(abps)s)"
    )
    fd = f"{_abs('sfee')} - {cfee}"
    fee_ok = f"({_abs(fd)} <= toDecimal64(%(ftol)s, 4))"
    cls = (
        "multiIf(has_l AND has_s, multiIf(sstatus != 'success' OR skind != lkind, "
        f"'status_mismatch', scur != lcur OR NOT {amount_ok}, 'amount_mismatch', "
        "lexcess != '', 'refund_excess', "
        f"sfee_known AND NOT {fee_ok}, 'fee_mismatch', 'matched'), "
        "has_l, if(lcarry != '', 'carried', 'short'), scarry != '', 'carried', "
        "kmethod = 'proposed', 'proposed', 'long')"
    )
    base_detail = (
        "multiIf(cls = 'status_mismatch', concat('statement: ', skind, ' ', sstatus, "
        "'; ours: ', lkind, ' success'), cls = 'amount_mismatch', 'amount or currency differs', "
        "cls = 'refund_excess', concat('refunds of ', lexcess, ' exceed the payment'), "
        "cls = 'fee_mismatch', 'fee differs', cls = 'matched', '', cls = 'short', "
        "'not on the statement', cls = 'carried', if(has_l, lcarry, scarry), "
        "cls = 'proposed', kdetail, "
        "concat('no success on our side', if(qstatus != '', concat(' (ours: ', qstatus, ')'), "
        "'')))"
    )
    detail = (
        f"concat({base_detail} AS bd, if(has_l AND has_s AND smethod IN ('combined', 'accepted'), "
        "concat(if(bd != '', '; ', ''), kdetail), ''), "
        "if(nlines > 1, concat(' (', toString(nlines), ' lines)'), ''))"
    )
    both = "has_l AND has_s AND klead"
    adiff = (
        f"if({both} AND cls IN ('matched', 'fee_mismatch', 'refund_excess'), samt - {cmp}, {_ZERO})"
    )
    fdiff = f"if({both} AND cls = 'matched' AND sfee_known, {fd}, {_ZERO})"
    score = (
        "multiIf(has_l AND has_s AND smethod IN ('scored', 'accepted'), kscore, "
        "NOT has_l AND cls = 'proposed', kscore, toUInt8(0))"
    )
    return cls, detail, adiff, fdiff, score
