"""Building blocks of the tally dashboards, on top of the official
`grafana-foundation-sdk` builders.

- Data sources are referenced by fixed uids, the ones deploy/grafana provisions:
  `tally-prometheus` (Prometheus) and `tally-clickhouse` (the Grafana ClickHouse plugin,
  `grafana-clickhouse-datasource`).
- The SDK has no builder for the ClickHouse plugin's queries, so `ClickHouseQuery` is
  one (a `cog` Dataquery with the plugin's JSON model: editorType `sql`, rawSql,
  queryType, format). Each also carries the columns and ClickHouse types the panel
  expects; tests/dashboards/test_dashboards_sql.py runs every query and checks them.
- SQL is written for both ClickHouse 18.16 and current ClickHouse (no window functions,
  FINAL read in a subquery and filtered outside it), with the plugin's macros
  (`$__timeFilter(col)`, `$__dateFilter(col)`, `$__interval_s`, `$__toTime`; not
  `$__timeInterval(col)`: it needs toStartOfInterval, newer than 18.16, see `time_bucket`)
  and `$__conditionalAll(<condition>, $var)` for the channel / merchant variables
  (the condition when values are picked, `1=1` for All). Tables are qualified with
  `${database}`, a constant variable (`tally`; change it if TALLY_CLICKHOUSE_DATABASE
  differs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

PROMETHEUS_UID = "tally-prometheus"
CLICKHOUSE_UID = "tally-clickhouse"
CLICKHOUSE_TYPE = "grafana-clickhouse-datasource"

PROMETHEUS = model.DataSourceRef(type_val="prometheus", uid=PROMETHEUS_UID)
CLICKHOUSE = model.DataSourceRef(type_val=CLICKHOUSE_TYPE, uid=CLICKHOUSE_UID)

# the job name of deploy/prometheus/prometheus.yml (TallyWorkerDown uses it too)
JOB = "tally"


# ------------------------------------------------------------------ queries


class ClickHouseQuery(cogvariants.Dataquery):
    """A raw-SQL query of the Grafana ClickHouse plugin (v4 JSON model)."""

    def __init__(
        self,
        sql: str,
        *,
        ref_id: str = "A",
        kind: Literal["table", "timeseries"] = "table",
        columns: dict[str, str] | None = None,
    ) -> None:
        self.sql = "\n".join(line.rstrip() for line in sql.strip("\n").splitlines())
        self.ref_id = ref_id
        self.kind = kind
        # column -> ClickHouse type family the panel expects (Decimal, DateTime, ...)
        self.columns: dict[str, str] = dict(columns or {})

    def to_json(self) -> dict[str, object]:
        return {
            "refId": self.ref_id,
            "datasource": CLICKHOUSE.to_json(),
            "editorType": "sql",
            "queryType": self.kind,
            "format": 0 if self.kind == "timeseries" else 1,  # sqlutil: 0 series, 1 table
            "rawSql": self.sql,
        }


class CH(cogbuilder.Builder[cogvariants.Dataquery]):
    def __init__(
        self,
        sql: str,
        columns: dict[str, str],
        kind: Literal["table", "timeseries"] = "table",
        ref_id: str = "A",
    ) -> None:
        self._q = ClickHouseQuery(sql, ref_id=ref_id, kind=kind, columns=columns)

    def build(self) -> ClickHouseQuery:
        return self._q


def prom(expr: str, legend: str = "", ref_id: str = "A", instant: bool = False) -> Any:
    q = prometheus.Dataquery().expr(" ".join(expr.split())).ref_id(ref_id).datasource(PROMETHEUS)
    if legend:
        q = q.legend_format(legend)
    q = q.instant() if instant else q.range()
    return q


def time_bucket(column: str) -> str:
    """The start of the panel's interval containing DateTime `column`. The plugin's
    `$__timeInterval(column)` expands to toStartOfInterval(), which ClickHouse 18.16
    lacks; this is the same bucket with the plugin's `$__interval_s` macro."""
    return f"toDateTime(intDiv(toUInt32({column}), $__interval_s) * $__interval_s)"


def in_all(column: str, var: str) -> str:
    """`column IN (<picked values>)`, or `1=1` when All is picked."""
    return f"$__conditionalAll({column} IN (${{{var}:singlequote}}), ${var})"


# --------------------------------------------------------------- variables


def prom_label_variable(name: str, label: str, metric: str, description: str) -> Any:
    return (
        dash.QueryVariable(name)
        .label(label)
        .description(description)
        .datasource(PROMETHEUS)
        .query({"query": f"label_values({metric}, {name})", "refId": "vars"})
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(model.VariableOption(text="All", value="$__all", selected=True))
    )


@dataclass
class SqlVariable:
    """A dashboard variable whose values come from ClickHouse (tested like a panel)."""

    name: str
    label: str
    sql: str
    description: str
    multi: bool = True
    include_all: bool = True
    default: str | None = None
    columns: dict[str, str] = field(default_factory=dict)

    def builder(self) -> Any:
        q = ClickHouseQuery(self.sql, ref_id="vars", columns=self.columns or {"value": "String"})
        v = (
            dash.QueryVariable(self.name)
            .label(self.label)
            .description(self.description)
            .datasource(CLICKHOUSE)
            .query(q.to_json())
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(model.VariableSort.ALPHABETICAL_ASC)
            .multi(self.multi)
            .include_all(self.include_all)
        )
        if self.include_all:
            v = v.all_value(".*").current(
                model.VariableOption(text="All", value="$__all", selected=True)
            )
        elif self.default is not None:
            v = v.current(
                model.VariableOption(text=self.default, value=self.default, selected=True)
            )
        return v


def database_variable() -> Any:
    return (
        dash.ConstantVariable("database")
        .label("ClickHouse database")
        .description("TALLY_CLICKHOUSE_DATABASE of the sink (tally)")
        .value("tally")
    )


# ------------------------------------------------------------------ panels


def source_of(targets: list[Any]) -> model.DataSourceRef:
    """The panel's data source: ClickHouse if its queries are, else Prometheus."""
    return CLICKHOUSE if any(isinstance(t, CH) for t in targets) else PROMETHEUS


def steps(*pairs: tuple[float | None, str]) -> Any:
    return (
        dash.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(value=v, color=c) for v, c in pairs])
    )


OK = steps((None, "green"))


def ts(
    title: str,
    description: str,
    targets: list[Any],
    unit: str,
    thresholds: Any = OK,
    *,
    stacked: bool = False,
    bars: bool = False,
    w: int = 12,
    h: int = 8,
    decimals: float | None = None,
    show_thresholds: bool = False,
) -> Any:
    p = (
        timeseries.Panel()
        .title(title)
        .datasource(source_of(targets))
        .description(description)
        .targets(targets)
        .unit(unit)
        .thresholds(thresholds)
        .span(w)
        .height(h)
        .legend(
            common_b.VizLegendOptions()
            .show_legend(True)
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.RIGHT)
            .calcs(["lastNotNull", "max"])
        )
        .tooltip(common_b.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI))
        .fill_opacity(20 if stacked else 5)
    )
    if stacked:
        p = p.stacking(common_b.StackingConfig().mode(common.StackingMode.NORMAL))
    if bars:
        p = p.draw_style(common.GraphDrawStyle.BARS)
    if decimals is not None:
        p = p.decimals(decimals)
    if show_thresholds:
        p = p.thresholds_style(
            common_b.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.LINE)
        )
    return p


def single(
    title: str,
    description: str,
    targets: list[Any],
    unit: str,
    thresholds: Any,
    *,
    w: int = 6,
    h: int = 4,
    calc: str = "lastNotNull",
) -> Any:
    return (
        stat.Panel()
        .title(title)
        .datasource(source_of(targets))
        .description(description)
        .targets(targets)
        .unit(unit)
        .thresholds(thresholds)
        .span(w)
        .height(h)
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.AREA)
        .reduce_options(common_b.ReduceDataOptions().calcs([calc]).values(False))
    )


def grid(
    title: str,
    description: str,
    targets: list[Any],
    unit: str = "none",
    thresholds: Any = OK,
    *,
    w: int = 12,
    h: int = 9,
    decimals: float | None = None,
) -> Any:
    p = (
        table.Panel()
        .title(title)
        .datasource(source_of(targets))
        .description(description)
        .targets(targets)
        .unit(unit)
        .thresholds(thresholds)
        .span(w)
        .height(h)
    )
    if decimals is not None:
        p = p.decimals(decimals)
    return p


def new_dashboard(uid: str, title: str, description: str, tags: list[str]) -> Any:
    return (
        dash.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["tally", *tags])
        .timezone("browser")
        .editable()
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .link(
            dash.DashboardLink("tally dashboards")
            .type(model.DashboardLinkType.DASHBOARDS)
            .tags(["tally"])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
    )
