"""What every page of the physiotherapist's report shares: A4, the header, black-and-white
styles, date axes in the clinic's words, the post-operative shading, where a session sits."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import matplotlib
import matplotlib.dates
import matplotlib.ticker

matplotlib.use("Agg")  # headless device: never touch a display (before any pyplot import)

from appliance.clinic.summary import StoredSession, Summary
from appliance.clinic.wording import Wording

A4 = (8.27, 11.69)
# Black-and-white: series differ by hatch and grey, never by colour alone.
HATCHES = ("", "///", "...", "xxx", "\\\\\\")
GREYS = ("0.15", "0.45", "0.7", "0.9", "1.0")


def header(fig, summary: Summary, w: Wording, title: str) -> None:
    fig.text(0.06, 0.965, w("page.title"), fontsize=13, weight="bold")
    fig.text(0.06, 0.945, w("page.subtitle", code=summary.code, first=w.day(summary.first_day),
                            last=w.day(summary.last_day)), fontsize=9, color="0.2")
    fig.text(0.94, 0.945, title, fontsize=10, weight="bold", ha="right")


def legend_below(ax, ncol: int = 3, fontsize: float = 7.5, gap: float = 0.14) -> None:
    """The legend under the axes (`gap` of their height below them, under the tick labels),
    never over the data."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -gap), ncol=ncol, fontsize=fontsize,
                  frameon=False)


def date_axis(ax, w: Wording, first: date, last: date) -> None:
    """Dates in the clinic's words; each day's tick at its midnight (a day's bar is centred on it)."""
    ax.set_xlim(datetime.combine(first, datetime.min.time()) - timedelta(hours=14),
                datetime.combine(last, datetime.min.time()) + timedelta(hours=14))
    span = (last - first).days + 1
    ax.xaxis.set_major_locator(matplotlib.dates.DayLocator(interval=max(1, span // 14)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(
        lambda x, _pos: w.day(matplotlib.dates.num2date(x).date(), year=False)))
    ax.tick_params(axis="x", labelsize=7, labelrotation=45)


def postop_shading(ax, summary: Summary) -> None:
    days = sorted({s.day for s in summary.sessions if s.postop})
    for d in days:
        mid = datetime.combine(d, datetime.min.time())
        ax.axvspan(mid - timedelta(hours=12), mid + timedelta(hours=12), facecolor="none", edgecolor="0.8",
                   hatch="\\\\", lw=0, zorder=0)


def session_time(s: StoredSession, tz) -> datetime:
    return datetime.fromisoformat(s.started_utc).astimezone(tz).replace(tzinfo=None)


def day_x(s: StoredSession, tz) -> datetime:
    """Where a session sits on a date axis: inside its day's column (ticks at midnight, a
    day spans half a day either side), earlier sessions left, later ones right."""
    t = session_time(s, tz)
    hours = t.hour + t.minute / 60.0
    return datetime.combine(s.day, datetime.min.time()) + timedelta(hours=(hours - 14.0) * 0.8)
