"""A lab's four charts as SVG, in the reader's language: LabCharts (numbers) → charts.py (SVG).

The words come through the request's Translator (its gettext, ngettext and the locale's number
and date formats), passed in: this module holds no request state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from markupsafe import Markup

from labeval.grading.lab_charts import DifferencePoint, LabCharts
from labeval.web import charts
from labeval.web.i18n import Translator

Gettext = Callable[..., str]


def outcome_labels(_: Gettext) -> dict[str, str]:
    """The pair outcomes in words (the legend of the differences chart, the pairs table)."""
    return {
        "consistent": _("Consistent"),
        "discrepant": _("Discrepant (difference beyond the critical difference)"),
        "reversal": _("Verdict reversed"),
        "reversal_within_uncertainty": _("Verdict reversed within uncertainty"),
        "censored_consistent": _("Below a limit, consistent"),
        "censored_discrepant": _("Below a limit, discrepant"),
        "qualitative_agree": _("Verdicts agree"),
        "qualitative_reversal": _("Verdicts differ"),
    }


def _dropped(t: Translator) -> Callable[[int], str]:
    def say(n: int) -> str:
        return t.ngettext("%(num)d value without a number was left out.",
                          "%(num)d values without a number were left out.", n) % {"num": n}
    return say


def _x_of_differences(points: Sequence[DifferencePoint], _: Gettext) -> tuple[list[float | None], str]:
    """x for the differences chart: the level when all pairs are of one item (one unit), else
    the distance to the nearest limit in σR when the items have limits, else completion order."""
    with_s = [p for p in points if p.s is not None]
    if len({p.item_code for p in with_s}) == 1:
        item = with_s[0].item_code
        return [p.level for p in points], _("Mean of the two results (item {item})", item=item)
    if any(p.position is not None for p in with_s):
        return ([p.position for p in points],
                _("Distance of the mean to the nearest specification limit (σR)"))
    return [float(k + 1) for k in range(len(points))], _("Pairs in order of completion")


def lab_figures(data: LabCharts, t: Translator, *, group_names: Mapping[str, str] | None = None) -> dict[str, Markup]:
    """{"differences", "funnel", "cusum", "bias"} → <svg> for the lab page and the report.
    ``group_names`` names item groups (category code → name) in the bias chart."""
    _ = t
    dropped = _dropped(t)
    fmt_number, fmt_date = t.number, t.date
    code = data.lab_code

    pts = data.differences
    x, x_title = _x_of_differences(pts, _)
    differences = charts.differences_chart(
        [float("nan") if v is None else v for v in x],
        [float("nan") if p.s is None else p.s for p in pts],
        [p.outcome or "" for p in pts], [p.sample_code for p in pts],
        items=[p.item_code for p in pts],
        text=charts.ChartText(
            title=_("Differences from partner labs"),
            desc=_("Each of the lab's pairs in the window: the standardised difference s (the lab's result minus its partner's, in units of √2 σR) against {x}. Lines at 0, ±2 and ±3; the marker's shape gives the outcome.", x=x_title),
            x_title=x_title, y_title=_("Standardised difference s"),
            no_data=_("No pairs with a standardised difference in the window."), dropped=dropped,
        ),
        outcome_labels=outcome_labels(_), fmt=fmt_number, chart_id="svg-differences",
    )

    f = data.funnel
    funnel = charts.funnel_chart(
        [p.n for p in f.points], [p.rate for p in f.points], [p.lab_code for p in f.points],
        highlight=code, curve_n=f.curve_n, lower_95=f.lower_95, upper_95=f.upper_95,
        lower_998=f.lower_998, upper_998=f.upper_998,
        target=float("nan") if f.target is None else f.target,
        text=charts.ChartText(
            title=_("Discrepancy rate against all labs"),
            desc=_("Every lab of the run: attributed discrepancies per quantitative pair against the number of pairs, with the 95 % and 99.8 % control limits around the overall rate. This lab is the large triangle."),
            x_title=_("Quantitative pairs"), y_title=_("Attributed discrepancies per pair"),
            no_data=_("No lab had quantitative pairs in this run."), dropped=dropped,
        ),
        legend={"labs": _("Labs"), "this_lab": _("This lab"), "target": _("Overall rate"),
                "limits_95": _("95 % limits"), "limits_998": _("99.8 % limits")},
        fmt=fmt_number, chart_id="svg-funnel",
    )

    c = data.cusum
    cusum = charts.cusum_chart(
        [p.completed_on for p in c.points], [p.cusum for p in c.points], [p.sample_code for p in c.points],
        limit=float("nan") if c.limit is None else c.limit,
        text=charts.ChartText(
            title=_("CUSUM of discrepancies over time"),
            desc=_("The risk-adjusted CUSUM of the lab's attributed discrepancies, pair by pair in order of completion; it rises when discrepancies come more often than expected. Reaching the decision limit h is an alarm (triangles)."),
            x_title=_("Completed on"), y_title=_("CUSUM statistic"),
            no_data=_("No quantitative pairs in the window."), dropped=dropped,
        ),
        legend={"statistic": _("CUSUM after the pair"), "alarm": _("At or above h"),
                "limit": _("Decision limit h")},
        fmt=fmt_number, fmt_date=fmt_date, chart_id="svg-cusum",
    )

    names = group_names or {}
    rows = data.bias
    bias = charts.bias_chart(
        [_("Overall") if r.group is None else names.get(r.group, r.group) for r in rows],
        [float("nan") if r.bias is None else r.bias for r in rows],
        [float("nan") if r.lower is None else r.lower for r in rows],
        [float("nan") if r.upper is None else r.upper for r in rows],
        peer_limit=[float("nan") if r.peer_limit is None else r.peer_limit for r in rows],
        text=charts.ChartText(
            title=_("Bias against peer labs"),
            desc=_("The lab's bias in units of σR with its interval (± 2 standard errors), overall and within each product category, against the band in which normal labs' biases lie (± {z} τ).", z=fmt_number(data.peer_z)),
            x_title=_("Bias (σR)"), no_data=_("No bias could be estimated for this lab."), dropped=dropped,
        ),
        legend={"bias": _("Bias"), "interval": _("± 2 standard errors"), "peers": _("Peers' band")},
        fmt=fmt_number, chart_id="svg-bias",
    )
    return {"differences": differences, "funnel": funnel, "cusum": cusum, "bias": bias}
