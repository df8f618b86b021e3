"""The widgets in a real browser: Voila serves the app notebooks on localhost, headless Debian Chromium
(Playwright) renders them, a brush drag on the annotator's canvas changes the labels, its keyboard shortcuts and
the mouse wheel change the tool, the slice and undo, the viewer's slice slider and class toggle change its image. Screenshots go to ``$FEWSAM_ARTIFACTS`` (default
``test-artifacts/browser``, git-ignored). Without /usr/bin/chromium, voila or playwright these tests FAIL."""

from __future__ import annotations

import re

import pytest
from voila_harness import (
    app_url,
    artifacts_dir,
    chromium_page,
    log_tail,
    require_browser_tools,
    voila_server,
)

pytestmark = pytest.mark.browser

RENDER_TIMEOUT_MS = 120_000  # the kernel imports JAX and builds the widget before Voila sends the page
UPDATE_TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def artifacts():
    return artifacts_dir()


@pytest.fixture(scope="module")
def voila(artifacts):
    require_browser_tools()
    with voila_server(artifacts / "voila.log") as base:
        yield base


@pytest.fixture
def browser_page(request, artifacts):
    """A fresh page; on failure a full-page screenshot is saved. Fails on console or page errors."""
    with chromium_page(1200, 800) as (page, problems):
        yield page
        if getattr(request.node, "test_body_failed", False):
            page.screenshot(path=str(artifacts / f"{request.node.name}_failure.png"), full_page=True)
    assert not problems.unexpected(), "the page reported errors:\n" + "\n".join(problems.unexpected())


def open_app(page, url: str, ready_selector: str, log) -> None:
    """Loads an app and waits for ``ready_selector`` (a canvas that has drawn an image)."""
    page.goto(url, timeout=RENDER_TIMEOUT_MS, wait_until="domcontentloaded")
    try:
        page.wait_for_selector(ready_selector, timeout=RENDER_TIMEOUT_MS)
    except Exception as err:
        raise AssertionError(f"{url} never showed {ready_selector!r}; page text:\n{page.inner_text('body')[-2000:]}\n"
                             f"voila log:\n{log_tail(log)}") from err


def render_count(page, selector: str) -> int:
    return int(page.get_attribute(selector, "data-render-count"))


def wait_for_new_image(page, selector: str, count: int) -> None:
    page.wait_for_function("([s, n]) => Number(document.querySelector(s).dataset.renderCount) > n",
                           arg=[selector, count], timeout=UPDATE_TIMEOUT_MS)


def labelled_pixels(page) -> int:
    text = page.inner_text(".fewsam-annotator .fewsam-status")
    match = re.match(r"(\d+) labelled pixels on slice", text)
    assert match, f"unexpected annotator status line {text!r}"
    return int(match.group(1))


def test_chromium_and_voila_are_installed():
    """Named first so a missing tool reads as what it is."""
    require_browser_tools()


def test_annotator_brush_click_and_drag_label_pixels(voila, browser_page, artifacts):
    page = browser_page
    canvas = ".fewsam-annotator canvas.fewsam-canvas"
    open_app(page, app_url(voila, "app_annotator.ipynb"), f"{canvas}:not([data-render-count='0'])",
             artifacts / "voila.log")
    assert page.get_attribute(canvas, "data-tool") == "brush"
    status = page.inner_text(".fewsam-annotator .fewsam-status")
    assert status == "0 labelled pixels on slice 6 (not labelled)", status
    page.screenshot(path=str(artifacts / "annotator_before.png"), full_page=True)
    before = page.locator(canvas).screenshot()
    box = page.locator(canvas).bounding_box()
    y = box["y"] + 0.5 * box["height"]

    count = render_count(page, canvas)
    page.mouse.click(box["x"] + 0.3 * box["width"], y)
    wait_for_new_image(page, canvas, count)
    # an image drawn after the click may still be an earlier one (the app's first renders): wait for the status
    page.wait_for_function("() => !document.querySelector('.fewsam-annotator .fewsam-status')"
                           ".textContent.startsWith('0 labelled')", timeout=UPDATE_TIMEOUT_MS)
    clicked = labelled_pixels(page)
    assert 20 <= clicked <= 40, f"a brush click of radius 3 should paint ~29 pixels, status says {clicked}"
    assert page.inner_text(".fewsam-annotator .fewsam-labelled") == "labelled slices (1): 6"

    page.mouse.move(box["x"] + 0.3 * box["width"], y)
    page.mouse.down()
    page.mouse.move(box["x"] + 0.7 * box["width"], y, steps=12)
    count = render_count(page, canvas)
    page.mouse.up()
    wait_for_new_image(page, canvas, count)
    dragged = labelled_pixels(page)
    # A horizontal stroke across 40% of the 64-pixel-wide slice with radius 3: ~26 x 7 pixels.
    assert 100 < dragged < 400, dragged
    assert page.locator(canvas).screenshot() != before
    page.screenshot(path=str(artifacts / "annotator_after_brush.png"), full_page=True)

    count = render_count(page, canvas)
    page.click(".fewsam-annotator .fewsam-undo")
    wait_for_new_image(page, canvas, count)
    assert labelled_pixels(page) == clicked

    # keyboard shortcuts (the image has the focus) and the mouse wheel over it
    page.locator(canvas).focus()
    page.keyboard.press("e")
    page.wait_for_selector(f"{canvas}[data-tool='eraser']", timeout=UPDATE_TIMEOUT_MS)
    page.keyboard.press("b")
    page.wait_for_selector(f"{canvas}[data-tool='brush']", timeout=UPDATE_TIMEOUT_MS)
    page.keyboard.press("ArrowRight")
    wait_for_status(page, "0 labelled pixels on slice 7 (not labelled)")
    page.mouse.move(box["x"] + 0.5 * box["width"], y)
    scrolled = page.evaluate("() => window.scrollY")
    page.mouse.wheel(0, 100)  # one notch down: the next slice
    wait_for_status(page, "0 labelled pixels on slice 8 (not labelled)")
    page.mouse.wheel(0, -200)
    wait_for_status(page, f"{clicked} labelled pixels on slice 6 (labelled)")
    page.keyboard.press("z")  # undoes the brush click
    wait_for_status(page, "0 labelled pixels on slice 6 (not labelled)")
    assert page.evaluate("() => window.scrollY") == scrolled, "the wheel over the image scrolled the page"


def wait_for_status(page, text: str) -> None:
    page.wait_for_function("(t) => document.querySelector('.fewsam-annotator .fewsam-status').textContent === t",
                           arg=text, timeout=UPDATE_TIMEOUT_MS)


def test_viewer_slider_and_class_toggle_change_the_image(voila, browser_page, artifacts):
    page = browser_page
    plane = ".fewsam-viewer .fewsam-plane-axial canvas.fewsam-canvas"
    open_app(page, app_url(voila, "app_viewer.ipynb"), f"{plane}:not([data-render-count='0'])",
             artifacts / "voila.log")
    page.wait_for_selector(".fewsam-viewer .fewsam-dice-plot canvas.fewsam-canvas:not([data-render-count='0'])")
    status = page.locator(".fewsam-viewer .fewsam-status")
    assert status.inner_text().startswith("slice 6/11 |"), status.inner_text()
    page.screenshot(path=str(artifacts / "viewer_slice6.png"), full_page=True)
    slice6 = page.locator(plane).screenshot()

    count = render_count(page, plane)
    handle = page.locator(".fewsam-viewer .widget-hslider .noUi-handle").first
    handle.focus()
    for _ in range(3):
        handle.press("ArrowRight")
    page.wait_for_function("() => document.querySelector('.fewsam-viewer .fewsam-status').textContent"
                           ".startsWith('slice 9/11 |')", timeout=UPDATE_TIMEOUT_MS)
    wait_for_new_image(page, plane, count)
    slice9 = page.locator(plane).screenshot()
    assert slice9 != slice6, "moving the slice slider did not change the displayed image"

    count = render_count(page, plane)
    toggle = page.locator(".fewsam-viewer .fewsam-toggle-1 input[type=checkbox]")
    assert toggle.is_checked()
    toggle.click()
    wait_for_new_image(page, plane, count)
    assert not toggle.is_checked()
    assert page.locator(plane).screenshot() != slice9, "hiding class 1 did not change the displayed image"
    page.screenshot(path=str(artifacts / "viewer_slice9_class1_hidden.png"), full_page=True)
