"""How the site reads: one line per ranked entry, nothing overflowing at 1280 and 1920 px, charts
with labelled points in their series' colours, 1-2-5 log ticks, dates on the history axis, every
ranked entry on the Pareto chart, interrupted runs with their curve, disqualified runs listed.

Checked in a real headless Chromium; screenshots are kept under the pytest tmp dir
(`screenshots/`), printed at the end of the run with -s, to look at."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from harness.charts import PALETTE, log_values, scatter_chart
from harness.site import SiteOptions, build_site
from harness.store import CurvePoint, Run, Store
from tests.test_site import browser, make_database  # noqa: F401  (browser is a fixture)

WIDTHS = (1280, 1920)


def add_look_runs(store: Store) -> None:
    """A count model (no parameters), an interrupted run with its curve, a disqualified run."""
    started = dt.datetime(2026, 11, 7, tzinfo=dt.timezone.utc)
    common = dict(entry_kind="submission", track="causal", division="cpu", hparams={}, hparam_overrides={},
                  seed=0, device="cpu", device_name="Intel(R) Xeon(R) CPU @ 2.20GHz with a long name",
                  budget_seconds=600, memory_limit_bytes=2**33, eval_protocol={}, data_checksums={},
                  harness_version="0", started_at=started)
    with store.session() as session:
        session.add(Run(entry="kilo", entry_path="/kilo.py", source_hash="k" * 64, source="x = 1\n",
                        display_name="Kilo 5-gram", authors="Kneser and Ney, with a long list of co-authors",
                        description="An interpolated modified Kneser-Ney 5-gram model. " * 6, status="ok",
                        valid_ppl=300.0, test_ppl=290.0, valid_tokens=73_760, test_tokens=82_430, param_count=0,
                        tokens_trained=929_589, train_seconds=30.0, peak_memory_bytes=2**31,
                        ended_at=started + dt.timedelta(hours=2), **common))
        session.add(Run(entry="hotel", entry_path="/hotel.py", source_hash="h" * 63 + "x", source="x = 1\n",
                        status="interrupted", failure="interrupted", reason="interrupted by Ctrl-C",
                        steps=800, tokens_trained=160_000, train_seconds=240.0,
                        ended_at=started + dt.timedelta(hours=3),
                        curve=[CurvePoint(train_seconds=30.0 * k, steps=100 * k, tokens=20_000 * k,
                                          valid_ppl=900.0 / k) for k in range(1, 9)], **common))
        session.add(Run(entry="lima", entry_path="/lima.py", source_hash="l" * 64, source="x = 1\n",
                        status="invalid", failure="disqualified",
                        reason="disqualified by the organiser: trained on the test split", valid_ppl=50.0,
                        test_ppl=49.0, ended_at=started + dt.timedelta(hours=4), **common))


@pytest.fixture(scope="module")
def look(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("look")
    store = make_database(folder / "results.sqlite")
    add_look_runs(store)
    build_site(store, SiteOptions(out_dir=folder / "site", phase="final"))
    return folder / "site"


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("screenshots")
    yield folder
    print(f"\nsite screenshots: {folder}")


def test_log_ticks_step_1_2_5() -> None:
    assert log_values(80, 700) == [100, 200, 500]
    assert log_values(3_000, 30_000_000) == [10_000, 100_000, 1_000_000, 10_000_000]  # wide: powers of ten
    assert log_values(101, 180) == [120, 140, 160, 180]  # narrow: round values, still more than one


def test_pareto_chart_keeps_entries_without_parameters() -> None:
    chart = scatter_chart("t", "parameters", "ppl", [(0.0, 141.0, "kn5", None), (4e6, 120.0, "lstm", None),
                                                     (2e7, 130.0, "big", None), (0.0, 600.0, "unigram", None)])
    by_name = {p.label.split(":")[0]: p for p in chart.points}
    assert set(by_name) == {"kn5", "lstm", "big", "unigram"}
    assert by_name["kn5"].highlight and by_name["lstm"].highlight  # the front: cheapest, then better
    assert not by_name["big"].highlight and not by_name["unigram"].highlight
    assert by_name["kn5"].x < chart.zero_strip < min(by_name["lstm"].x, by_name["big"].x)
    assert any(t.label == "0" for t in chart.x_ticks)
    assert all(p.tag is not None for p in chart.points)  # four labels fit


def test_history_axis_shows_dates(look: Path) -> None:
    history = (look / "history.html").read_text()
    svg = history.split("<svg", 1)[1].split("</svg>", 1)[0]
    ticks = re.findall(r'<text class="tick"[^>]*text-anchor="middle">([^<]*)</text>', svg)
    assert ticks and all(re.fullmatch(r"\d{4}-\d{2}-\d{2}|[A-Z][a-z]{2} \d{2} \d{2}:\d{2}", t) for t in ticks), ticks
    assert len(set(ticks)) == len(ticks)
    assert "days since 1970" not in history
    assert '<text class="label' in svg and ">alpha<" in svg  # each record names its entry


def test_count_model_shows_na_and_stays_on_the_tradeoff_chart(look: Path) -> None:
    index = (look / "index.html").read_text()
    row = next(r for r in index.split('<tr class="entry-row">') if "entries/kilo.html" in r)
    assert ">n/a</td>" in row
    charts = (look / "charts.html").read_text()
    params_chart = charts.split("<figure", 2)[1]
    assert "kilo: 290.00 at 0 (Pareto front)" in params_chart
    assert ">kilo</text>" in params_chart


def test_interrupted_run_keeps_steps_time_and_curve(look: Path) -> None:
    page = (look / "entries" / "hotel.html").read_text()
    assert "interrupted by Ctrl-C" in page
    assert ">800</td>" in page and ">4.0 min</td>" in page
    assert page.count('<polyline class="series"') == 2  # against time and against tokens
    assert re.search(r"run \d+ \(seed 0, interrupted\)", page)  # its curve, named with its status


def test_disqualified_run_is_listed_apart_with_its_reason(look: Path) -> None:
    index = (look / "index.html").read_text()
    ranked, failures = index.split('<section class="failures">')
    assert "entries/lima.html" not in ranked
    assert "disqualified" in failures and "trained on the test split" in failures


@pytest.mark.parametrize("width", WIDTHS)
def test_pages_fit_the_window_and_rankings_are_one_line(look: Path, browser, screenshots: Path,  # noqa: F811
                                                        width: int) -> None:
    from selenium.webdriver.common.by import By

    browser.set_window_size(width, 1000)
    pages = ["index.html", "charts.html", "history.html", "entries/alpha.html", "entries/hotel.html"]
    for page in pages:
        browser.get((look / page).as_uri())
        inner = browser.execute_script("return window.innerWidth")
        assert inner >= width - 20
        overflow = browser.execute_script("return document.documentElement.scrollWidth")
        assert overflow <= inner, f"{page} at {width} px: {overflow} px wide"
        browser.save_screenshot(str(screenshots / f"{page.replace('/', '-')[:-5]}-{width}.png"))
    browser.get((look / "index.html").as_uri())
    table = browser.find_element(By.ID, "ranking-causal-cpu")
    # The whole ranking is visible: the table is no wider than its box (the date is not cut off).
    fits = browser.execute_script("var t = arguments[0]; return [t.scrollWidth, t.parentNode.clientWidth];", table)
    assert fits[0] <= fits[1], f"ranking table {fits[0]} px in a {fits[1]} px box at {width} px"
    heights = [row.size["height"] for row in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
    line = browser.execute_script("return parseFloat(getComputedStyle(document.body).fontSize)")
    assert max(heights) < 2.4 * line, f"a ranking row wraps: heights {heights} at {width} px"
    description = table.find_element(By.CSS_SELECTOR, "a[href='entries/kilo.html']").get_attribute("title")
    assert description.startswith("An interpolated modified Kneser-Ney")  # on demand, as a tooltip


def test_dots_keep_their_series_colour_in_the_browser(look: Path, browser) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By

    browser.get((look / "entries" / "alpha.html").as_uri())
    dots = browser.find_elements(By.CSS_SELECTOR, "figure.chart circle.dot")
    painted = {browser.execute_script("return getComputedStyle(arguments[0]).fill", dot) for dot in dots}
    expected = {_rgb(colour) for colour in PALETTE[:3]}  # alpha has three seeds: three series
    assert painted == expected, painted


def _rgb(colour: str) -> str:
    r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"
