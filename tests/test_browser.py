"""The search page in a real browser: Playwright drives Debian's chromium (headless) against
``ssah serve`` running on 127.0.0.1.  Skipped when playwright or chromium is missing."""
from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/lib/chromium/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SCREENSHOT = Path(__file__).resolve().parents[1] / "results" / "serve" / "screenshot.png"

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed "
                               "(pip install playwright; the browser is Debian's chromium)")
if not CHROMIUM.is_file():
    pytest.skip(f"chromium not found at {CHROMIUM} (apt-get install chromium)",
                allow_module_level=True)
pytest.importorskip("uvicorn")

from test_serve import digit_image, make_served, png  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The real server (uvicorn in a thread) on a free 127.0.0.1 port."""
    import uvicorn
    from ssah.bench.serve import free_port
    from ssah.serve.app import create_app
    served = make_served(tmp_path_factory.mktemp("browser"))
    app = create_app(served.encoder, served.index)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                        access_log=False))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the server did not start")
        time.sleep(0.05)
    served.url = f"http://127.0.0.1:{port}"
    yield served
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        except Exception as e:          # a chromium that cannot start here
            pytest.skip(f"chromium does not start: {e}")
        yield b
        b.close()


def test_search_page_upload_random_and_errors(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1100, "height": 760})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    external = []
    page.on("request", lambda r: None if r.url.startswith((server.url, "blob:", "data:"))
            else external.append(r.url))
    page.goto(server.url + "/")
    sync_api.expect(page.locator("#stats")).to_contain_text("1,797 items")
    sync_api.expect(page.locator("#stats")).to_contain_text("12 bits")

    # upload a digit through the file chooser
    query = tmp_path / "three.png"
    query.write_bytes(png(digit_image(3)))
    page.fill("#k", "12")
    page.set_input_files("#file", str(query))
    cards = page.locator("#results .card")
    sync_api.expect(cards).to_have_count(12)
    distances = cards.locator(".distance").all_inner_texts()
    assert len(distances) == 12 and all(d.startswith("d = ") for d in distances)
    values = [int(d.split("=")[1]) for d in distances]
    assert values[0] == 0 and values == sorted(values)
    sync_api.expect(page.locator("#summary")).to_contain_text("ms on the server")
    sync_api.expect(page.locator("#query-panel")).to_be_visible()
    assert page.locator("#error").is_hidden()
    # thumbnails loaded
    page.wait_for_function("() => [...document.querySelectorAll('#results img')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")

    # a random database image: the query's label is known, so results are marked
    page.click("#random")
    sync_api.expect(page.locator("#query-info")).to_contain_text("database item #")
    sync_api.expect(cards).to_have_count(12)
    marked = page.locator("#results .card.match, #results .card.miss")
    sync_api.expect(marked).to_have_count(12)
    sync_api.expect(page.locator("#summary")).to_contain_text("share the query's label")
    page.wait_for_function("() => [...document.querySelectorAll('#results img')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    shot = tmp_path / "serve.png"
    page.screenshot(path=str(shot))
    if os.environ.get("SSAH_UPDATE_SCREENSHOT"):   # refresh the committed copy on request only
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)
    assert shot.stat().st_size < 400_000

    # dropping a file that is not an image shows the server's error
    data = page.evaluate_handle("""() => {
        const dt = new DataTransfer();
        dt.items.add(new File(["hello, not pixels"], "notes.txt", {type: "text/plain"}));
        return dt; }""")
    page.dispatch_event("#drop", "drop", {"dataTransfer": data})
    err = page.locator("#error")
    sync_api.expect(err).to_be_visible()
    sync_api.expect(err).to_contain_text("cannot decode image notes.txt")
    sync_api.expect(cards).to_have_count(0)
    sync_api.expect(page.locator("#query-panel")).to_be_hidden()
    page.screenshot(path=str(tmp_path / "serve-error.png"))

    # and the page still works afterwards
    page.click("#random")
    sync_api.expect(cards).to_have_count(12)
    assert page.locator("#error").is_hidden()
    assert not errors, errors
    assert not external, external
    page.close()


def test_api_page_lists_the_endpoints_offline(server, browser):
    page = browser.new_page(viewport={"width": 1000, "height": 700})
    page.goto(server.url + "/api")
    rows = page.locator("#rows tr")
    sync_api.expect(rows.first).to_contain_text("/")
    text = page.locator("#rows").inner_text()
    for path in ("/search", "/items/{item_id}/image", "/stats", "/healthz"):
        assert path in text
    page.close()
