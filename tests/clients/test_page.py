"""The demo page (/api/demo) in headless Chromium against a real broker and echo worker.

Chromium is Debian's (Playwright cannot download its own here). Without it the tests skip with
the reason, except under CI=true, where a missing browser is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from clients import BrokerClient
from tests.conftest import CLIENT_KEY, WORKER_KEY

from .images import picture, voc_mask

DOCS = Path(__file__).resolve().parents[2] / "docs"
XSS = "<img src=x onerror=window.__xss=1>"
TIMEOUT_MS = 60_000


@pytest.fixture
def open_page(chromium):
    """open_page(broker, **context options) -> a page on the broker's /api/demo; console errors are checked."""
    contexts, problems = [], []

    def open_(broker, **options):
        context = chromium.new_context(**options)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.on("pageerror", lambda error: problems.append(str(error)))
        # A 401 or 404 answer is logged by Chromium as "Failed to load resource"; the page shows those itself.
        page.on("console", lambda message: problems.append(message.text)
                if message.type == "error" and "Failed to load resource" not in message.text else None)
        page.goto(broker.url + "/demo")
        return page

    yield open_
    for context in contexts:
        context.close()
    assert problems == []  # no script errors, no CSP refusals


def run(page, name: str, content: bytes, mime: str, model: str, params: dict | None = None, end: str = "succeeded"):
    page.set_input_files("#file", {"name": name, "mimeType": mime, "buffer": content})
    page.fill("#model", model)
    page.fill("#params", json.dumps(params) if params else "")
    page.click("#submit")
    page.wait_for_selector(f"#status[data-state={end}]")
    return page.text_content("#status")


def test_a_png_through_echo_shows_every_state_and_the_image(broker, echo, open_page, tmp_path):
    page = open_page(broker, viewport={"width": 900, "height": 900})
    status = run(page, "landscape.png", picture(), "image/png", echo)
    assert re.search(r"Task [0-9a-f]{32} succeeded", status)
    assert "queued at" in status and re.search(r"running \+\d+\.\d\d s", status)
    assert re.search(r"succeeded \+\d+\.\d\d s", status)
    assert page.text_content("#result p") == f"Result: image/png, {len(picture())} bytes"
    assert page.eval_on_selector("#result img", "image => [image.naturalWidth, image.naturalHeight]") == [320, 200]
    shot = page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("UPDATE_DEMO_SCREENSHOT"):  # refreshes the README's picture on purpose, never by accident
        shutil.copy(tmp_path / "demo.png", DOCS / "demo.png")


def test_a_failing_task_shows_its_error_as_text(broker, echo, open_page):
    page = open_page(broker)
    run(page, "x.png", picture(), "image/png", echo, {"fail": XSS}, end="failed")
    assert XSS in page.text_content("#status .error")
    assert page.locator("#status img, #result img").count() == 0
    assert page.evaluate("window.__xss") is None
    assert page.text_content("#result") == ""


def test_classifier_json_is_a_ranked_list_and_labels_stay_text(broker, echo, open_page):
    answer = {"model": "resnet50", "predictions": [{"label": "tabby", "index": 281, "score": 0.2},
                                                   {"label": XSS, "index": 1, "score": 0.7},
                                                   {"label": "<b>lynx</b>", "index": 287, "score": 0.1}]}
    page = open_page(broker)
    run(page, "scores.json", json.dumps(answer).encode(), "application/json", echo)
    rows = page.locator("#result ol.ranked li")
    assert rows.count() == 3
    assert [rows.nth(i).locator(".label").text_content() for i in range(3)] == [XSS, "tabby", "<b>lynx</b>"]
    assert rows.nth(0).locator(".score").text_content() == "70.0 %"
    widths = [rows.nth(i).locator(".bar span").evaluate("bar => bar.style.width") for i in range(3)]
    assert widths == ["70%", "20%", "10%"]
    assert page.locator("#result img, #result b").count() == 0
    assert page.evaluate("window.__xss") is None


def test_a_voc_mask_is_overlaid_with_a_legend_of_the_classes_present(broker, echo, open_page):
    page = open_page(broker)
    run(page, "mask.png", voc_mask(), "image/png", echo)
    assert page.locator("#result canvas").count() == 1
    legend = page.locator("#result ul.legend li").all_text_contents()
    assert legend == ["background 50.0 %", "cat 33.3 %", "person 16.7 %"]


def test_other_json_is_pretty_printed_and_other_types_download(broker, echo, open_page):
    page = open_page(broker)
    run(page, "data.json", b'{"a": [1, 2], "b": "<i>x</i>"}', "application/json", echo)
    assert page.text_content("#result pre") == json.dumps({"a": [1, 2], "b": "<i>x</i>"}, indent=2)
    status = run(page, "blob.bin", b"\x00\x01\x02", "application/octet-stream", echo)
    task_id = re.search(r"[0-9a-f]{32}", status).group(0)
    link = page.locator("#result a[download]")
    assert link.get_attribute("download") == f"{task_id}.bin"
    with page.expect_download() as download:
        link.click()
    assert Path(download.value.path()).read_bytes() == b"\x00\x01\x02"


def test_queue_panel_shows_stats_with_a_worker_key(broker, open_page, model):
    with BrokerClient(broker.url) as client:
        client.submit(b"a", model)
        client.submit(b"b", model)
    page = open_page(broker)
    page.fill("#model", model)  # other tests' models may be more than /stats lists: the page asks for this one
    assert "Enter a worker key" in page.text_content("#stats")
    page.fill("#worker-key", "not-the-worker-key")
    page.wait_for_selector("#stats .error")
    assert page.text_content("#stats .error") == "a valid worker key is required (Authorization: Bearer <key>)"
    page.fill("#worker-key", WORKER_KEY)
    row = page.locator("#stats tr", has=page.locator(f"td:text-is('{model}')"))
    row.wait_for()
    assert row.locator("td.n").all_text_contents() == ["2", "0", "0"]  # queued, running, workers online


def test_a_task_nobody_serves_says_so_and_a_running_one_shows_its_progress(broker, echo, open_page, model):
    page = open_page(broker)
    run(page, "a.png", picture(), "image/png", model, end="queued")
    assert page.text_content("#status .waiting") == "Waiting for a worker (none online)."
    page.click("#cancel")
    page.wait_for_selector("#status[data-state=cancelled]")
    run(page, "b.json", b"{}", "application/json", echo, {"sleep_ms": 9000, "steps": 3}, end="running")
    page.wait_for_selector("#status .progress progress")
    shown = page.text_content("#status .progress span")
    assert re.fullmatch(r"(33|66) % · step [12] of 3", shown), shown
    page.wait_for_selector("#status[data-state=succeeded]")
    assert page.locator("#status .progress").count() == 0  # finished: no bar


def test_client_key_is_sent_kept_in_the_tab_and_cancel_works(keyed_broker, open_page, model):
    page = open_page(keyed_broker)
    run(page, "a.png", picture(), "image/png", model, end="error")
    assert page.text_content("#status .error") == "a valid client key or token is required (Authorization: Bearer <key or token>)"
    page.fill("#key", CLIENT_KEY)
    run(page, "a.png", picture(), "image/png", model, end="queued")  # nobody serves this model: it waits
    page.click("#cancel")
    page.wait_for_selector("#status[data-state=cancelled]")
    page.reload()
    assert page.input_value("#key") == CLIENT_KEY
    assert CLIENT_KEY not in page.content().replace(page.input_value("#key"), "")  # only in the field typed into


def test_works_on_a_phone_sized_screen(broker, echo, open_page, chromium):
    page = open_page(broker, viewport={"width": 360, "height": 740}, is_mobile=True, has_touch=True,
                     device_scale_factor=2)
    run(page, "landscape.png", picture(1200, 800), "image/png", echo)
    assert page.evaluate("document.documentElement.scrollWidth") <= 360  # nothing sideways
    for selector in ("#file", "#model", "#submit", "#result img"):
        box = page.locator(selector).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 360, selector


def test_a_large_file_goes_to_storage_and_its_large_result_comes_back_from_there(broker, echo, open_page):
    """Over 4 MiB the page asks for an upload URL, PUTs the file to storage in blocks (CORS on the Blob
    service allows it), commits, and fetches the worker's uploaded result from storage."""
    content = os.urandom(9 * 1024 * 1024)  # two blocks of at most 8 MiB
    page = open_page(broker)
    log_before = len(broker.host.log_text())
    status = run(page, "big.bin", content, "application/octet-stream", echo)
    task_id = re.search(r"[0-9a-f]{32}", status).group(0)
    assert page.text_content("#result p") == f"Result: application/octet-stream, {len(content)} bytes"
    with page.expect_download() as download:
        page.locator("#result a[download]").click()
    assert Path(download.value.path()).read_bytes() == content
    calls = re.findall(r"Executed 'Functions\.(\w+)'", broker.host.log_text()[log_before:])
    assert "upload" in calls and "commit" in calls and "predict" not in calls
    assert broker.get(f"/getresult?task_id={task_id}", allow_redirects=False).status_code == 303


def test_a_token_handed_over_in_the_address_is_used_and_kept_off_the_address_bar(keyed_broker, open_page, model):
    """An app's backend links to /api/demo#token=…: the page takes the token, drops it from the address
    (a fragment never reaches a server), and submits with it."""
    with BrokerClient(keyed_broker.url, CLIENT_KEY) as backend:
        token = backend.token(models=[model], expires_in=300, max_tasks=3)["token"]
    context_page = open_page(keyed_broker)
    context_page.goto(f"{keyed_broker.url}/demo#token={token}")
    context_page.reload()  # the fragment alone does not reload; a backend's link would be a fresh load
    assert "#token" not in context_page.url
    assert context_page.input_value("#key") == token
    run(context_page, "a.png", picture(), "image/png", model, end="queued")  # nobody serves it: it waits, accepted
