"""report.html in a real browser: headless Chromium from Debian, driven by selenium, offline.

One browser session per module opens the report of a small sweep (of the 4 points of
configs/sweep_tiny.toml two finished, one of them FFM with shaded public units in its loss curve,
one failed, one not run yet) through file:// and checks what a reader sees: no console error, every plot
decoded and on screen, every point in the tables, nothing fetched from elsewhere, and a page that
stays readable at laptop widths. `make test` installs chromium and chromium-driver (apt) and
selenium (the [dev] extras); without them this module is skipped and says why.

Selenium never looks for or downloads a driver here: the Debian chromedriver is passed to
``Service`` (which skips Selenium Manager) and ``SE_OFFLINE`` forbids Selenium Manager any network.
"""

import csv
import json
import shutil
from pathlib import Path

import pytest

from eval.report import CAPTIONS, write_report
from eval.results import CSV, JSONL, SWEEP_TOML, csv_text, current_point_ids

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip(
        "no Debian chromium/chromedriver on PATH: `make test` installs them (apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: `make test` installs it with the [dev] extras")

ROOT = Path(__file__).resolve().parents[2]
LAPTOPS = {"1366x768": (1366, 768), "1024x768": (1024, 768)}
MIN_FONT_PX = 12.0
NONE, PRUNE, DP, DP_PRUNE = (
    "privacy-none__defense-none__seed-0",
    "privacy-none__defense-prune-90pct__seed-0",
    "privacy-dp-fedavg-eps-3__defense-none__seed-0",
    "privacy-dp-fedavg-eps-3__defense-prune-90pct__seed-0",
)
LONG_SENTENCE = "the quarterly figures were revised after the auditors found that the northern region had double counted its returns"


def _row(point_id: str, privacy: str, defense: str, **extra) -> dict:
    dp = privacy != "none"
    return {
        "point_id": point_id,
        "sweep": "tiny",
        "settings": {"privacy": privacy, "defense": defense},
        "seed": 0,
        "config": {"privacy.mode": "dp-fedavg" if dp else "none", "defense.names": ["prune"] if defense != "none" else []},
        "protection": "DP-FEDAVG ε=3" if dp else "no protection",
        "mechanism": "dp-fedavg" if dp else "none",
        "target_epsilon": 3.0 if dp else None,
        "epsilon": 2.91 if dp else None,
        "delta": 1e-5 if dp else None,
        "accountant": "prv" if dp else None,
        "noise_multiplier": 1.3 if dp else None,
        "privacy": {"mechanism": "dp-fedavg", "level": "user", "target_epsilon": 3.0, "rounds": 4} if dp else {},
        "accuracy": 0.71 if dp else 0.82,
        "macro_f1": 0.69 if dp else 0.8,
        "attack": "inverting-gradients",
        "attack_metric": "psnr",
        "attack_value": 14.0 if dp else 27.5,
        "attack_metrics": {"psnr": 14.0 if dp else 27.5, "ssim": 0.2 if dp else 0.6},
        "status": "ok",
        "error": None,
        "seconds": 12.5,
        **extra,
    }


def _metrics(sweep: Path, point_id: str, phases: list[str]) -> None:
    run = sweep / "points" / point_id / "run"
    run.mkdir(parents=True)
    rows = [
        {"round": r, "phase": phase, "test_loss": 2.0 - 0.2 * r, "public_loss": 2.1 - 0.15 * r if phase == "public" else None}
        for r, phase in enumerate(phases, 1)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A sweep folder as `secure-ffm sweep` leaves it (rows, CSV, resolved sweep file), with its report written."""
    sweep = tmp_path_factory.mktemp("sweep")
    shutil.copy(ROOT / "configs" / "sweep_tiny.toml", sweep / SWEEP_TOML)
    texts = [{"original": LONG_SENTENCE, "recovered": "the quarterly figures were revised after the", "token_f1": 0.41}]
    rows = [
        _row(NONE, "none", "none", texts=texts),
        _row(PRUNE, "none", "prune 90%", attack_note="pruned " + "x" * 120),  # a long unbroken token
        {
            "point_id": DP,
            "sweep": "tiny",
            "settings": {"privacy": "dp-fedavg eps=3", "defense": "none"},
            "seed": 0,
            "status": "failed",
            "error": "training: privacy.target_epsilon: cannot be met with 4 rounds; raise privacy.target_epsilon or lower server.rounds",
        },
    ]  # DP_PRUNE: not run yet
    (sweep / JSONL).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (sweep / CSV).write_text(csv_text(rows))
    _metrics(sweep, NONE, ["federated"] * 4)
    _metrics(sweep, PRUNE, ["public", "federated", "public", "federated", "federated"])  # FFM: alternating
    write_report(sweep)
    return sweep


class Page:
    """The report open in one headless Chromium; ``console`` holds what the browser logged while loading it."""

    def __init__(self, driver, console: list[dict]) -> None:
        self.driver = driver
        self.console = console

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def viewport(self, width: int, height: int) -> None:
        """The layout viewport of a laptop screen (the window's inner size), at device scale 1."""
        self.driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
        )
        assert self.js("return [innerWidth, innerHeight]") == [width, height]

    def table_after(self, heading: str) -> list[list[str]]:
        """The body rows (cell texts) of the first table after the <h2> named ``heading``."""
        return self.js(
            """const h = [...document.querySelectorAll('h2')].find(e => e.textContent.trim() === arguments[0]);
            const table = h.nextElementSibling.querySelector('table');  // in its scrolling box
            return [...table.tBodies[0].rows].map(r => [...r.cells].map(c => c.textContent));""",
            heading,
        )


@pytest.fixture(scope="module")
def page(sweep: Path):
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1366,768",
        "--no-first-run", "--disable-extensions", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-default-apps", "--disable-features=MediaRouter,OptimizationHints,Translate",
    ):  # fmt: skip
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SE_OFFLINE", "true")  # should Selenium Manager ever run, it may not download anything
        driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        driver.get((sweep / "report.html").as_uri())
        driver.execute_async_script(  # every image decoded (or failed) before anything is checked
            "const done = arguments[arguments.length - 1];"
            "Promise.allSettled([...document.images].map(i => i.decode())).then(() => done(null));"
        )
        yield Page(driver, driver.get_log("browser"))
    finally:
        driver.quit()


def test_report_loads_without_console_errors_or_warnings(page):
    assert page.js("return document.readyState") == "complete"
    assert [e for e in page.console if e["level"] in ("SEVERE", "WARNING")] == []


def test_every_plot_decodes_and_is_on_screen(page):
    page.viewport(*LAPTOPS["1366x768"])
    images = page.js(
        """return Promise.all([...document.images].map(async i => {
            let decoded = true;
            try { await i.decode(); } catch (e) { decoded = false; }
            const r = i.getBoundingClientRect(), s = getComputedStyle(i);
            const canvas = Object.assign(document.createElement('canvas'), {width: i.naturalWidth, height: i.naturalHeight});
            const context = canvas.getContext('2d');
            context.drawImage(i, 0, 0);
            const alpha = context.getImageData(0, 0, canvas.width || 1, canvas.height || 1).data.filter((_, k) => k % 4 === 3);
            return {id: i.closest('figure')?.id, decoded, complete: i.complete, natural: i.naturalWidth * i.naturalHeight,
                    drawn: alpha.every(a => a === 255),
                    width: r.width, height: r.height, shown: s.display !== 'none' && s.visibility === 'visible' && s.opacity !== '0'};
        }));"""
    )
    assert {i["id"] for i in images} == set(CAPTIONS)  # every plot, loss curves included
    for image in images:
        assert image["decoded"] and image["complete"] and image["natural"] > 0, image
        assert image["drawn"], f"{image['id']}: part of the plot is not drawn (a truncated or corrupt PNG)"
        assert image["shown"] and image["width"] > 100 and image["height"] > 50, image


def test_loss_curves_of_the_ffm_point_are_drawn(page, sweep):
    """The loss plot embedded is the one of this sweep's points (the FFM point's public units are shaded in it)."""
    svg = (sweep / "plots" / "loss_curves.svg").read_text()
    assert svg.count("#f2d7a6") == 2  # the two public units of the alternating point
    natural = page.js("const i = document.querySelector('#loss_curves img'); return [i.naturalWidth, i.naturalHeight];")
    assert natural[0] > 2 * natural[1] > 0  # two panels side by side: NONE and PRUNE


def test_points_table_lists_every_point_of_the_sweep(page, sweep):
    with (sweep / CSV).open() as f:
        written = [r["point_id"] for r in csv.DictReader(f)]
    rows = page.table_after("Points")
    assert [r[0] for r in rows] == written + [DP_PRUNE] == current_point_ids(sweep)
    assert [r[5] for r in rows] == ["ok", "ok", "failed", "not run yet"]  # point, privacy, defense, seed, protection, status


def test_ledger_lists_every_finished_point(page):
    assert [r[0] for r in page.table_after("Privacy ledger")] == [NONE, PRUNE]


def test_recovered_sentences_are_listed_in_full(page):
    assert page.table_after("Recovered sentences")[0][2] == LONG_SENTENCE


def test_nothing_is_fetched_from_elsewhere(page):
    links = page.js(
        """return [...document.querySelectorAll('[src],[href],[srcset],[poster],[data]')].flatMap(
            e => ['src', 'href', 'srcset', 'poster', 'data'].map(a => e.getAttribute(a)).filter(Boolean));"""
    )
    assert [link for link in links if not link.startswith("data:")] == []
    assert page.js("return performance.getEntriesByType('resource').map(e => e.name)") == []
    assert page.js("return document.scripts.length + document.querySelectorAll('link, iframe, object, embed').length") == 0


@pytest.mark.parametrize("laptop", LAPTOPS)
def test_page_does_not_scroll_sideways_at_laptop_width(page, laptop):
    page.viewport(*LAPTOPS[laptop])
    width, inner = page.js("return [document.scrollingElement.scrollWidth, innerWidth]")
    assert width <= inner + 1, f"the page is {width}px wide in a {inner}px window"


@pytest.mark.parametrize("laptop", LAPTOPS)
def test_what_is_wider_than_the_window_scrolls_in_its_own_box(page, laptop):
    """A wide table may scroll inside a box made to scroll; nothing is cut off or pushed past the window's edge."""
    page.viewport(*LAPTOPS[laptop])
    outside = page.js(
        """const scrolls = e => { for (let p = e.parentElement; p && p !== document.body; p = p.parentElement)
                if (['auto', 'scroll'].includes(getComputedStyle(p).overflowX)) return true;
            return false; };
        return [...document.body.querySelectorAll('*')].filter(e => {
            const r = e.getBoundingClientRect();
            return r.width > 0 && (r.right > innerWidth + 1 || r.left < -1) && !scrolls(e);
        }).map(e => e.tagName + ' ' + e.textContent.slice(0, 60));"""
    )
    assert outside == []


def test_a_table_wider_than_the_window_scrolls_in_its_own_box(page):
    page.viewport(*LAPTOPS["1024x768"])
    box = page.js(
        """const h = [...document.querySelectorAll('h2')].find(e => e.textContent === 'Points');
        const box = h.nextElementSibling, r = box.getBoundingClientRect();
        return {overflow: getComputedStyle(box).overflowX, wider: box.scrollWidth > box.clientWidth, right: r.right};"""
    )
    assert box["wider"], "the fixture's long note should make the points table wider than a 1024 px window"
    assert box["overflow"] in ("auto", "scroll") and box["right"] <= 1024, box


@pytest.mark.parametrize("laptop", LAPTOPS)
def test_plots_fit_the_window(page, laptop):
    page.viewport(*LAPTOPS[laptop])
    boxes = page.js("return [...document.images].map(i => {const r = i.getBoundingClientRect(); return [r.left, r.right];})")
    assert boxes and all(left >= 0 and right <= LAPTOPS[laptop][0] for left, right in boxes), boxes


@pytest.mark.parametrize("laptop", LAPTOPS)
def test_text_is_not_tiny(page, laptop):
    page.viewport(*LAPTOPS[laptop])
    sizes = page.js(
        """return [...document.body.querySelectorAll('*')]
            .filter(e => [...e.childNodes].some(n => n.nodeType === 3 && n.textContent.trim()))
            .map(e => [e.tagName, parseFloat(getComputedStyle(e).fontSize)]);"""
    )
    assert sizes and min(size for _, size in sizes) >= MIN_FONT_PX, sorted(sizes, key=lambda s: s[1])[:5]
