"""report.html: one self-contained page; in a real headless browser it loads without console
errors, the embedding map renders, and hovering a point shows its image."""

import json
import os
import re
import shutil
import time

import pytest

from simsiam import train

from conftest import tiny_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    run = tmp_path_factory.mktemp("html") / "run"
    train(tiny_config(run, report=True, knn_every=1))
    return run / "report" / "report.html"


def test_the_page_needs_nothing_beside_it(report):
    page = report.read_text()
    assert not re.search(r"<script[^>]+src=", page)  # bokeh's JavaScript inlined, no CDN
    assert "Bokeh" in page and "embedding_map" in page
    for heading in ("Training loss", "z-std", "Effective rank", "kNN top-1", "Nearest neighbours"):
        assert heading in page, heading
    assert page.count("data:image/png;base64,") >= 6  # the report's PNG plots


def _browser():
    if not (CHROMIUM and DRIVER):
        reason = "chromium and chromedriver not installed (Debian: apt-get install chromium chromium-driver)"
        if os.environ.get("SIMSIAM_BROWSER_TEST") == "required":
            pytest.fail(reason + "; .ci/run requires them")
        pytest.skip(reason)
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1200,1000",
    ):
        opts.add_argument(arg)
    opts.binary_location = CHROMIUM
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service(DRIVER), options=opts)


# Every element of the page, through bokeh's shadow roots.
ALL = "function all(root){let out=[];for(const el of root.querySelectorAll('*')){out.push(el);" + (
    "if(el.shadowRoot)out=out.concat(all(el.shadowRoot));}return out;}"
)
THUMBS = ALL + (
    "return all(document).filter(e=>e.tagName==='IMG'&&e.classList.contains('simsiam-thumb'))"
    ".filter(i=>i.getBoundingClientRect().width>0&&getComputedStyle(i).visibility==='visible')"
    ".map(i=>({src:i.src.slice(0,23),w:i.naturalWidth,text:i.parentElement.innerText}));"
)
POINT = """
const plot = Bokeh.documents[0].get_model_by_name('embedding_map');
function find(v) {
  if (v.model === plot) return v;
  for (const c of (v.child_views ?? [])) { const f = find(c); if (f) return f; }
  return null;
}
let view = null; for (const v of Bokeh.index.roots) { view = view || find(v); }
const data = plot.renderers[0].data_source.data;
view.canvas_view.el.scrollIntoView();
const box = view.canvas_view.el.getBoundingClientRect();
const i = arguments[0];
return {el: view.canvas_view.el, n: data.x.length, w: box.width, h: box.height,
        x: view.frame.x_scale.compute(data.x[i]), y: view.frame.y_scale.compute(data.y[i]), label: data.label[i]};
"""


def test_in_a_headless_browser_the_map_renders_and_hovering_a_point_shows_its_image(report):
    from selenium.webdriver.common.action_chains import ActionChains

    driver = _browser()
    try:
        driver.get(report.as_uri())
        time.sleep(1.5)  # bokeh renders after load
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        assert driver.execute_script(THUMBS) == []  # no tooltip before the mouse moves
        point = driver.execute_script(POINT, 0)
        assert point["n"] == 359 and point["w"] > 300 and point["h"] > 300  # all test images, drawn
        canvas = point.pop("el")
        dx, dy = int(point["x"] - point["w"] / 2), int(point["y"] - point["h"] / 2)
        ActionChains(driver).move_to_element_with_offset(canvas, dx, dy).perform()
        deadline = time.time() + 5
        shown: list[dict] = []
        while not (shown and all(s["w"] for s in shown)) and time.time() < deadline:
            time.sleep(0.2)
            shown = driver.execute_script(THUMBS)  # the images, once decoded (naturalWidth > 0)
        assert shown, "hovering a point showed no thumbnail"
        assert all(s["src"] == "data:image/jpeg;base64," and s["w"] == 64 for s in shown), shown
        assert any(point["label"] in s["text"] for s in shown)  # its class beside the image
        assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        fetched = [
            json.loads(e["message"])["message"]["params"]["request"]["url"]
            for e in driver.get_log("performance")
            if '"Network.requestWillBeSent"' in e["message"]
        ]
        assert fetched and all(u.split(":")[0] in ("file", "data", "blob", "about") for u in fetched), fetched
    finally:
        driver.quit()
