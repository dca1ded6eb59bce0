"""The static site: built from a database of several entries, seeds and failures, then read by a
real headless Chromium (selenium), link-checked and parsed strictly."""

from __future__ import annotations

import datetime as dt
import re
import shutil
from pathlib import Path

import html5lib
import numpy as np
import pytest

from harness.site import SiteOptions, build_site, entry_filename
from harness.store import CurvePoint, Run, Store

OFFICIAL = {"options": {"evals": 10}}  # what `harness run` records: the competition's default cadence
EXPLORED_PPL = 42.5  # better than every entry, but of a 60 s budget or a changed lr: never ranked
HOSTILE_NAME = '<script>window.pwned = true</script><img src=x onerror="window.pwned = true">'
ENTRIES = {  # entry: (test ppl per seed, params, valid ppl offset)
    "alpha": ([101.0, 103.0, 102.0], 4_000_000),
    "bravo": ([140.0, 141.0], 300_000),
    "charlie": ([120.0], 20_000_000),
}


def make_database(path: Path) -> Store:
    store = Store(path)
    rng = np.random.default_rng(0)
    started = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
    with store.session() as session:
        for index, (entry, (scores, params)) in enumerate(ENTRIES.items()):
            for seed, ppl in enumerate(scores):
                sentences = rng.normal(np.log(ppl) * 22, 3, 50)
                session.add(Run(
                    entry=entry, entry_kind="submission", entry_path=f"/{entry}.py", source_hash=entry * 4,
                    source="import torch\n\nclass Model:\n    pass\n", display_name=entry.title(), authors="Ada",
                    description=f"The {entry} model", track="causal", division="cpu", hparams={"lr": 0.1},
                    hparam_overrides={}, seed=seed, device="cpu", budget_seconds=600, memory_limit_bytes=2**33,
                    config=OFFICIAL, eval_protocol={}, data_checksums={}, harness_version="0", status="ok",
                    valid_ppl=ppl + 7, test_ppl=ppl, valid_tokens=73_760, test_tokens=82_430,
                    test_sentence_nll=sentences.astype("<f4").tobytes(),
                    valid_sentence_nll=sentences.astype("<f4").tobytes(), param_count=params,
                    tokens_trained=1_000_000 * (index + 1), train_seconds=600.0, peak_memory_bytes=2**30,
                    started_at=started + dt.timedelta(days=index, hours=seed),
                    ended_at=started + dt.timedelta(days=index, hours=seed, minutes=11),
                    checks={"causality": "passed", "weights_frozen": "passed"},
                    curve=[CurvePoint(train_seconds=60.0 * k, steps=100 * k, tokens=20_000 * k,
                                      valid_ppl=ppl + 300 / k) for k in range(1, 6)],
                ))
        failures = [("delta", "failed", "runtime_error", "train_step (step 2) raised ValueError: boom"),
                    ("echo", "timeout", "timeout", "training ran 612.0 s, past the 600 s budget"),
                    ("foxtrot", "out_of_memory", "out_of_memory", "memory reached 8.1 GiB, over the 8.0 GiB budget"),
                    ("golf", "invalid", "causality_violation", "causality check failed at position 3")]
        for entry, status, failure, reason in failures:
            session.add(Run(
                entry=entry, entry_kind="submission", entry_path=f"/{entry}.py", source_hash=entry * 4, source="x = 1\n",
                display_name=entry, track="causal", division="cpu", hparams={}, hparam_overrides={}, seed=0,
                device="cpu", budget_seconds=600, memory_limit_bytes=2**33, config=OFFICIAL, eval_protocol={},
                data_checksums={},
                harness_version="0", status=status, failure=failure, reason=reason,
                traceback="Traceback (most recent call last):\nValueError: boom", log_tail="step 1\nstep 2\n",
                started_at=started, ended_at=started + dt.timedelta(minutes=3)))
        session.add(Run(
            entry="hostile", entry_kind="submission", entry_path="/hostile.py", source_hash="h" * 64,
            source="# </pre><script>window.pwned = true</script>\n", display_name=HOSTILE_NAME, authors=HOSTILE_NAME,
            description="<b>bold?</b> " + HOSTILE_NAME, track="causal", division="cpu", hparams={"x": HOSTILE_NAME},
            hparam_overrides={}, seed=0, device="cpu", budget_seconds=600, memory_limit_bytes=2**33, config=OFFICIAL,
            eval_protocol={}, data_checksums={}, harness_version="0", status="ok", valid_ppl=500.0, test_ppl=490.0, valid_tokens=73_760,
            test_tokens=82_430, param_count=10, tokens_trained=10, train_seconds=1.0, peak_memory_bytes=2**28,
            started_at=started, ended_at=started + dt.timedelta(days=5), reason=HOSTILE_NAME))
        for budget, overrides in ((60.0, {}), (600.0, {"lr": 0.5})):  # alpha explored: never ranked
            session.add(Run(
                entry="alpha", entry_kind="submission", entry_path="/alpha.py", source_hash="alpha" * 4,
                source="import torch\n", display_name="Alpha", track="causal", division="cpu", hparams={"lr": 0.1},
                hparam_overrides=overrides, seed=0, device="cpu", budget_seconds=budget, memory_limit_bytes=2**33,
                config=OFFICIAL, eval_protocol={}, data_checksums={}, harness_version="0", status="ok",
                valid_ppl=EXPLORED_PPL, test_ppl=EXPLORED_PPL, valid_tokens=73_760, test_tokens=82_430,
                started_at=started, ended_at=started + dt.timedelta(hours=1)))
    return store


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("site")
    store = make_database(folder / "results.sqlite")
    sites = {}
    for phase in ("final", "open"):
        build_site(store, SiteOptions(out_dir=folder / phase, phase=phase))
        sites[phase] = folder / phase
    return sites


def html_files(site: Path) -> list[Path]:
    return sorted(site.rglob("*.html"))


def test_every_page_parses_strictly_and_every_link_resolves(built: dict[str, Path]) -> None:
    site = built["final"]
    pages = html_files(site)
    assert {p.name for p in pages} >= {"index.html", "history.html", "charts.html", "alpha.html", "delta.html"}
    parser = html5lib.HTMLParser(strict=True)
    for page in pages:
        text = page.read_text()
        parser.parse(text)  # raises on any parse error
        for link in re.findall(r'(?:href|src)="([^"]*)"', text):
            assert not re.match(r"^[a-z]+:", link), f"{page.name} links outside the site: {link}"
            target = link.split("#")[0]
            if target:
                assert (page.parent / target).resolve().is_file(), f"{page.name}: broken link {link}"
    assert (site / "leaderboard.json").is_file() and (site / "leaderboard.csv").is_file()


def test_open_phase_publishes_no_test_score(built: dict[str, Path]) -> None:
    text = "".join(p.read_text() for p in built["open"].rglob("*") if p.is_file() and p.suffix != ".css")
    for value in ("102.00", "140.50", "490.00"):  # mean test perplexities
        assert value not in text
    assert "109.00" in text  # alpha's mean validation perplexity is shown
    assert "test_ppl" not in (built["open"] / "leaderboard.csv").read_text()


def test_failures_are_listed_apart_with_status_and_reason(built: dict[str, Path]) -> None:
    index = (built["final"] / "index.html").read_text()
    section = index.split('<section class="failures">')[1]
    for entry, status in (("delta", "failed"), ("echo", "timeout"), ("foxtrot", "out_of_memory"), ("golf", "invalid")):
        assert f">{entry}</a>" in section and f">{status}<" in section
    assert "past the 600 s budget" in section
    delta = (built["final"] / "entries" / "delta.html").read_text()
    assert "ValueError: boom" in delta and "step 2" in delta
    assert "published, not run here" in index and "141.20" in index


@pytest.fixture(scope="module")
def browser():
    if not shutil.which("chromium") or not shutil.which("chromedriver"):
        pytest.fail("Debian's chromium and chromium-driver are needed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


def ranked_entries(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    table = driver.find_element(By.ID, "ranking-causal-cpu")
    return [row.find_elements(By.TAG_NAME, "td")[1].find_element(By.TAG_NAME, "a").text
            for row in table.find_elements(By.CSS_SELECTOR, "tbody tr.entry-row")]


def test_browser_ranking_sort_entry_page_and_curve(built: dict[str, Path], browser) -> None:
    from selenium.webdriver.common.by import By

    browser.get((built["final"] / "index.html").as_uri())
    assert ranked_entries(browser)[:3] == ["Alpha", "Charlie", "Bravo"]
    headings = browser.find_elements(By.CSS_SELECTOR, "#ranking-causal-cpu thead th")
    params = next(h for h in headings if h.text.startswith("Params"))
    params.click()  # ascending: fewest parameters first
    assert ranked_entries(browser)[:2] == [HOSTILE_NAME, "Bravo"]
    params.click()
    assert ranked_entries(browser)[0] == "Charlie"
    browser.find_element(By.LINK_TEXT, "Alpha").click()
    assert browser.current_url.endswith("entries/" + entry_filename("alpha"))
    assert "The alpha model" in browser.find_element(By.TAG_NAME, "main").text
    curves = browser.find_elements(By.CSS_SELECTOR, "figure.chart svg polyline.series")
    assert len(curves) >= 3  # one line per seed
    assert browser.find_elements(By.CSS_SELECTOR, ".source .k")  # highlighted source


def test_html_and_script_in_entry_data_are_shown_as_text(built: dict[str, Path], browser) -> None:
    from selenium.webdriver.common.by import By

    for page in (built["final"] / "index.html", built["final"] / "entries" / entry_filename("hostile")):
        browser.get(page.as_uri())
        assert browser.execute_script("return window.pwned === undefined")
        assert HOSTILE_NAME in browser.find_element(By.TAG_NAME, "main").text
        assert not browser.find_elements(By.CSS_SELECTOR, "main img[src=x]")


def test_serve_previews_the_site_on_localhost(built: dict[str, Path]) -> None:
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    from tests.conftest import REPO

    process = subprocess.Popen([sys.executable, "-m", "harness.cli", "serve", "--dir", str(built["final"]),
                                "--port", "0"], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        line = process.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(url + "index.html", timeout=5) as response:
                    page = response.read().decode()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert "rankings" in page and "Alpha" in page
    finally:
        process.terminate()
        process.wait(timeout=10)


def ranking_rows(driver) -> list[tuple[str, str, str, float]]:
    """(row class, rank cell, name, score) of each row of the causal ranking, in page order."""
    from selenium.webdriver.common.by import By

    rows = []
    for row in driver.find_elements(By.CSS_SELECTOR, "#ranking-causal-cpu tbody tr"):
        cells = row.find_elements(By.TAG_NAME, "td")
        score = cells[3].get_attribute("data-value")
        name = cells[1].find_element(By.CSS_SELECTOR, ".name").get_attribute("textContent")
        rows.append((row.get_attribute("class"), cells[0].get_attribute("textContent"), name, float(score)))
    return rows


def test_browser_references_sit_where_their_score_puts_them(built: dict[str, Path], browser) -> None:
    from selenium.webdriver.common.by import By

    browser.get((built["final"] / "index.html").as_uri())
    rows = ranking_rows(browser)
    scores = [score for _, _, _, score in rows]
    assert scores == sorted(scores)  # test perplexity, references interleaved (none without a figure sorts before)
    names = [name for _, _, name, _ in rows]
    assert names.index("Alpha") < names.index("LSTM small, no dropout (Zaremba et al. 2014)") \
        < names.index("Charlie") < names.index("Bravo") < names.index("KN-5 (interpolated modified Kneser-Ney)")
    references = [row for row in rows if row[0] == "reference"]
    assert len(references) == 9 and all(rank == "—" for _, rank, _, _ in references)
    badges = browser.find_elements(By.CSS_SELECTOR, "#ranking-causal-cpu tr.reference .badge.ref")
    assert len(badges) == 9 and all("published, not run here" in b.get_attribute("title") for b in badges)
    assert [rank for kind, rank, _, _ in rows if kind == "entry-row"] == ["1", "2", "3", "4"]
    assert EXPLORED_PPL not in scores  # alpha's exploration runs are on its page, not in the ranking
    rank = browser.find_elements(By.CSS_SELECTOR, "#ranking-causal-cpu thead th")[0]
    rank.click()
    assert [name for _, _, name, _ in ranking_rows(browser)] == names[::-1]
    rank.click()  # back to rank order: each reference after the entry above it again
    assert [name for _, _, name, _ in ranking_rows(browser)] == names


def test_entry_page_lists_exploration_runs_with_what_differs(built: dict[str, Path], browser) -> None:
    from selenium.webdriver.common.by import By

    browser.get((built["final"] / "entries" / entry_filename("alpha")).as_uri())
    cells = [row.find_elements(By.TAG_NAME, "td") for row in browser.find_elements(By.CSS_SELECTOR, "#runs tbody tr")]
    configuration = {int(c[0].text): c[3].text for c in cells}
    assert len(configuration) == 5
    assert list(configuration.values()).count("official (ranked)") == 3
    assert "exploration: budget 60 (official 600)" in configuration.values()
    assert "exploration: hparams lr=0.5" in configuration.values()
    index = (built["final"] / "index.html").read_text()
    assert f"{EXPLORED_PPL:.2f}" not in index and "102.00" in index  # alpha: the mean of its three official seeds


def test_entry_pages_are_unique_and_stable_whatever_the_name() -> None:
    names = ["kn5", "submissions/kn5", "submissions_kn5", "a b", "a_b", "<x>", "_x_"]
    files = [entry_filename(name) for name in names]
    assert len(set(files)) == len(names)
    assert files == [entry_filename(name) for name in names]
    assert entry_filename("kn5") == "kn5.html"
