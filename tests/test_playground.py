"""The web playground: its routes, and the page driven end to end in headless Chromium.

The browser test uses Debian's Chromium (/usr/bin/chromium) through Playwright's Python API;
it never downloads a browser. Without Chromium it is skipped, except under CI (the CI
environment variable set), where it fails: CI must run it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from fluxserve.api.app import create_app
from fluxserve.api.playground.router import _describe
from fluxserve.bootstrap import build_services
from fluxserve.config import Settings
from fluxserve.specs import MODEL_SPECS
from tests.helpers import SMALL, LiveServer, fetch_image, idle_app, poll_result, wait_ready

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
MAX_SEED = 2**64 - 1
BLOCKED_PROMPT = "csam"  # on the default blocked-terms list: Request Moderated at once

# --- the routes, through the TestClient ------------------------------------------------


def test_page_has_the_form(client: TestClient):
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert '<meta name="viewport"' in html
    assert '<form id="form"' in html
    for field in ("prompt", "model", "size", "width", "height", "steps", "guidance", "seed",
                  "count", "api-key"):  # fmt: skip
        assert f'id="{field}"' in html
        assert f'<label for="{field}"' in html, f"{field} has no label"
    assert 'role="status"' in html
    # Offline: nothing is fetched from another origin.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    for name, kind in (("playground.css", "text/css"), ("playground.js", "text/javascript")):
        asset = client.get(f"/playground/{name}")
        assert asset.status_code == 200
        assert asset.headers["content-type"].startswith(kind)
        assert not re.search(r"https?://", asset.text)
    assert client.get("/playground/router.py").status_code == 404
    assert client.get("/playground/..%2Frouter.py").status_code == 404


def test_models_lists_tiny_with_its_defaults(client: TestClient):
    response = client.get("/playground/models")
    assert response.status_code == 200
    [tiny] = response.json()
    assert tiny["name"] == "tiny"
    assert tiny["kind"] == "test"
    assert (tiny["default_steps"], tiny["max_steps"], tiny["default_guidance"]) == (4, 50, 3.0)
    assert (tiny["width"], tiny["height"]) == (256, 256)  # its base area, 256 * 256
    presets = {p["name"]: (p["width"], p["height"]) for p in tiny["presets"]}
    assert presets["square"] == (256, 256)
    assert presets["portrait"][0] < presets["portrait"][1]
    assert presets["landscape"] == presets["portrait"][::-1]
    assert tiny["max_references"] == 0  # FLUX.1: no reference images


def test_flux2_models_are_listed_with_their_references(tmp_path: Path, tiny_flux2_dir: Path):
    settings = Settings(model=[str(tiny_flux2_dir)], data_dir=tmp_path, worker_mode="thread")
    for test_client in idle_app(settings):
        [klein] = test_client.get("/playground/models").json()
        assert (klein["kind"], klein["max_references"], klein["default_guidance"]) == (
            "flux2-klein", 4, None,
        )  # fmt: skip


def test_by_name_reference_images_are_for_flux2_models(client: TestClient):
    response = client.post("/v1/tiny", json={"prompt": "x", "input_image": "aGVsbG8="})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "input_image"]


def test_model_sizes_follow_the_base_area():
    dev = _describe(MODEL_SPECS["flux-dev"], [])
    assert (dev["width"], dev["height"], dev["default_guidance"]) == (1024, 1024, 3.0)
    for preset in dev["presets"]:
        width, height = preset["width"], preset["height"]
        assert (width % 32, height % 32) == (0, 0)
        assert min(width, height) >= 256
        assert max(width, height) <= 1440
        assert abs(width * height - 1024 * 1024) / (1024 * 1024) < 0.05
    schnell = _describe(MODEL_SPECS["flux-schnell"], ["fast"])
    assert schnell["default_guidance"] is None  # the form hides guidance
    assert (schnell["max_steps"], schnell["aliases"]) == (12, ["fast"])


def test_submit_by_model_name(client: TestClient):
    response = client.post("/v1/tiny", json={"prompt": "a fox", **SMALL, "steps": 2, "seed": 7})
    assert response.status_code == 200, response.text
    submitted = response.json()
    assert submitted["polling_url"].endswith(f"/v1/get_result?id={submitted['id']}")
    body = poll_result(client, submitted["id"])
    assert body["status"] == "Ready", body
    assert body["result"]["seed"] == 7
    assert fetch_image(client, body["result"]["sample"]).size == (256, 256)


def test_unknown_model_is_a_bfl_404(client: TestClient):
    for body in ({"prompt": "a fox"}, {"prompt": "a fox", "width": 3}):  # 404 before 422
        response = client.post("/v1/not-a-model", json=body)
        assert response.status_code == 404, response.text
        error = response.json()
        assert error["detail"] == error["message"]
        assert "not-a-model" in error["detail"]
        assert "tiny" in error["detail"]  # what the server has
    # The fixed BFL routes still win over /v1/{name}.
    fixed = client.post("/v1/flux-dev", json={"prompt": "a fox", **SMALL, "steps": 1})
    assert fixed.status_code == 200, fixed.text
    assert client.get("/v1/get_result", params={"id": "nope"}).json()["status"] == (
        "Task not found"
    )


def test_aliases_and_non_text_to_image_models(tmp_path: Path, tiny_model_dir: Path,
                                              tiny_kontext_dir: Path):  # fmt: skip
    settings = Settings(
        model=[str(tiny_model_dir), str(tiny_kontext_dir)],
        alias=["house=tiny"],
        data_dir=tmp_path / "data",
        worker_mode="thread",
    )
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        [tiny] = client.get("/playground/models").json()  # the Kontext model is not offered
        assert (tiny["name"], tiny["aliases"]) == ("tiny", ["house"])
        response = client.post("/v1/house", json={"prompt": "a fox", **SMALL, "steps": 1})
        assert response.status_code == 200, response.text
        assert poll_result(client, response.json()["id"])["status"] == "Ready"
        kontext = client.post("/v1/tiny-kontext", json={"prompt": "a fox"})
        assert kontext.status_code == 404
        assert "not a text-to-image" in kontext.json()["message"]


def test_keys_required(settings: Settings):
    """The page itself is public (it asks for the key); the model list and submits are not,
    and a caller without a key cannot tell model names apart (401 before 404)."""
    settings = settings.model_copy(update={"auth": "required"})
    services = build_services(settings)
    secret = services.keys.create("me")[1]
    client = TestClient(create_app(settings, services))
    try:
        assert client.get("/").status_code == 200
        assert client.get("/playground/playground.js").status_code == 200
        assert client.get("/playground/models").status_code == 401
        assert client.get("/playground/models", headers={"x-key": secret}).status_code == 200
        for name in ("tiny", "not-a-model"):
            response = client.post(f"/v1/{name}", json={"prompt": "a fox", **SMALL})
            assert response.status_code == 401, response.text
        key = {"x-key": secret}
        keyed = client.post("/v1/tiny", json={"prompt": "a fox", **SMALL}, headers=key)
        assert keyed.status_code == 200, keyed.text
    finally:
        services.store.close()


# --- the page in headless Chromium -----------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    """`fluxserve serve --model tiny --model tiny-flux2` on a free port, in the background."""
    args = ["--model", "tiny", "--model", "tiny-flux2", "--data-dir", str(tmp_path / "data"),
            "--host", "127.0.0.1"]  # fmt: skip
    started = LiveServer(args, tmp_path / "server.log")
    try:
        yield started
    finally:
        started.stop()


def sync_playwright_or_skip():
    """Playwright's sync API, if it and Debian's Chromium are here (CI: must be)."""
    reason = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "playwright is not installed (pip install -e '.[dev]')"
    if reason is None and not CHROMIUM.is_file():
        reason = f"{CHROMIUM} is missing (apt-get install --no-install-recommends chromium)"
    if reason is None:
        return sync_playwright
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the browser test, but {reason}")
    pytest.skip(reason)


# Records the accessible name of every <progress> the page adds, however briefly it shows.
RECORD_PROGRESS = """
window.__progress = [];
new MutationObserver((records) => {
  for (const record of records) for (const node of record.addedNodes) {
    if (!node.querySelectorAll) continue;
    for (const bar of [node, ...node.querySelectorAll("progress")]) {
      if (bar.tagName === "PROGRESS") window.__progress.push(bar.getAttribute("aria-label"));
    }
  }
}).observe(document, { childList: true, subtree: true });
"""
IMAGE_LOADED = """() => {
  const img = document.querySelector("#gallery li img");
  return img !== null && img.complete && img.naturalWidth > 0;
}"""
GALLERY = "JSON.parse(localStorage.getItem('fluxserve.gallery') || '[]')"
NO_OVERFLOW = "document.documentElement.scrollWidth <= window.innerWidth"


@pytest.mark.process
def test_playground_in_chromium(server: LiveServer, tmp_path: Path):
    sync_playwright = sync_playwright_or_skip()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            server.wait_ready(90)  # the server boots while Chromium starts
            desktop_run(browser, server.base, tmp_path)
            guidance_follows_the_model(browser, server.base)
            flux2_references_run(browser, server.base, tmp_path)
            phone_run(browser, server.base, tmp_path)
        finally:
            browser.close()


def open_page(browser, base: str, **context_options):
    """A fresh context's page at the playground, its models loaded; and its JS errors."""
    page = browser.new_context(**context_options).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.add_init_script(RECORD_PROGRESS)
    page.goto(f"{base}/")
    page.wait_for_function("document.querySelector('#model').options.length > 0")
    return page, errors


def desktop_run(browser, base: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page, errors = open_page(browser, base, viewport={"width": 1280, "height": 900})
    expect(page.get_by_label("Model", exact=True)).to_have_value("tiny")
    expect(page.get_by_label("Guidance", exact=True)).to_have_value("3")
    prompt = "a red fox in the snow"
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.get_by_label("Size", exact=True).select_option("square")
    expect(page.locator("#size option:checked")).to_have_text("Square 256×256")
    page.get_by_label("Steps", exact=True).fill("4")
    page.get_by_text("API key", exact=True).click()  # opens the <details>
    page.get_by_label("API key (sent as the x-key header)").fill("my-key")
    page.get_by_label("API key (sent as the x-key header)").press("Tab")  # saved on change
    sent: list[dict] = []
    page.on("request", lambda r: sent.append(r.headers) if "/v1/" in r.url else None)
    page.get_by_role("button", name="Generate").click()

    card = page.locator("#gallery li").first
    page.wait_for_function(IMAGE_LOADED, timeout=30_000)
    assert "Image 1 of 1 progress" in page.evaluate("window.__progress")
    assert len(sent) >= 2  # the submit and at least one poll, each with the key
    assert all(headers.get("x-key") == "my-key" for headers in sent)
    assert page.evaluate("localStorage.getItem('fluxserve.apiKey')") == "my-key"
    expect(page.get_by_role("status")).to_have_text("Your image is ready.")
    image = card.get_by_role("img", name=prompt)
    assert image.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [256, 256]

    # The gallery entry: its parameters, a download link, a thumbnail kept in localStorage.
    expect(card.locator(".prompt")).to_have_text(prompt)
    params = dict(
        zip(card.locator("dt").all_inner_texts(), card.locator("dd").all_inner_texts(), strict=True)
    )
    seed = params.pop("Seed")
    assert params == {"Model": "tiny", "Size": "256×256", "Steps": "4", "Guidance": "3"}
    page.wait_for_function(f"({GALLERY})[0]?.thumb?.startsWith('data:image/jpeg')")
    [entry] = page.evaluate(GALLERY)
    assert (entry["seed"], entry["prompt"], entry["steps"]) == (seed, prompt, 4)
    download = card.get_by_role("link", name="Download")
    assert download.get_attribute("href") == entry["url"]
    assert "/files/" in entry["url"]

    # The screenshot is a page, not a blank: many colours, the noise image among them.
    shot = tmp_path / "desktop.png"
    page.screenshot(path=str(shot))
    screenshot = Image.open(shot).convert("RGB")
    assert len(screenshot.getcolors(1 << 24)) > 50
    box = image.bounding_box()
    assert box is not None
    assert min(box["width"], box["height"]) > 100
    crop = screenshot.crop((int(box["x"]), int(box["y"]), int(box["x"] + box["width"]),
                            int(box["y"] + box["height"])))  # fmt: skip
    assert len(crop.getcolors(1 << 24)) > 1000  # random weights: colourful noise

    # Reuse seed fills the form and puts the focus back on the prompt.
    page.get_by_label("Prompt", exact=True).fill("something else")
    page.get_by_label("Seed", exact=True).fill("")
    card.get_by_role("button", name="Reuse seed").click()
    expect(page.get_by_label("Seed", exact=True)).to_have_value(seed)
    expect(page.get_by_label("Prompt", exact=True)).to_have_value(prompt)
    expect(page.get_by_label("Prompt", exact=True)).to_be_focused()

    # A refused prompt: BFL's status on its card, announced, and kept out of the gallery.
    page.get_by_label("Prompt", exact=True).fill(BLOCKED_PROMPT)
    page.get_by_role("button", name="Generate").click()
    refused = page.locator("#gallery li").first
    expect(refused.locator(".error")).to_have_text(re.compile("^Request Moderated"))
    expect(page.get_by_role("status")).to_have_text(re.compile("^Not generated: Request Mod"))
    assert len(page.evaluate(GALLERY)) == 1
    refused.get_by_role("button", name="Dismiss").click()
    expect(page.locator("#gallery li")).to_have_count(1)

    # The gallery survives a reload, from localStorage; Remove takes an entry out.
    page.reload()
    expect(page.locator("#gallery li")).to_have_count(1)
    expect(page.locator("#gallery li .prompt")).to_have_text(prompt)
    page.wait_for_function(IMAGE_LOADED)
    page.locator("#gallery li").get_by_role("button", name="Remove").click()
    expect(page.locator("#gallery li")).to_have_count(0)
    assert page.evaluate(GALLERY) == []
    assert errors == []
    page.context.close()


def flux2_references_run(browser, base: str, tmp_path: Path) -> None:
    """A FLUX.2 model takes reference images: picked in the page, checked there (count,
    type), sent as input_image, input_image_2; the gallery entry counts them."""
    from playwright.sync_api import expect

    page, errors = open_page(browser, base, viewport={"width": 1280, "height": 900})
    references = page.get_by_label("Reference images", exact=True)
    expect(references).to_be_hidden()  # tiny is FLUX.1: no references
    page.get_by_label("Model", exact=True).select_option("tiny-flux2")
    expect(references).to_be_visible()
    expect(page.get_by_label("Guidance", exact=True)).to_be_hidden()  # step-distilled
    pictures = []
    for index, colour in enumerate(("red", "blue", "green", "white", "black")):
        path = tmp_path / f"reference-{index}.png"
        Image.new("RGB", (96, 64), colour).save(path)
        pictures.append(str(path))
    page.get_by_label("Prompt", exact=True).fill("the red square on the blue one")
    bodies: list[dict] = []
    page.on("request", lambda r: bodies.append(r.post_data_json)
            if r.method == "POST" and "/v1/" in r.url else None)  # fmt: skip

    references.set_input_files(pictures)  # five: one more than [klein] takes
    assert "at most 4" in references.evaluate("e => e.validationMessage")
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    references.set_input_files([str(text)])
    assert "not a PNG" in references.evaluate("e => e.validationMessage")
    page.get_by_role("button", name="Generate").click()
    assert bodies == []  # refused in the page: nothing sent

    references.set_input_files(pictures[:2])
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function(IMAGE_LOADED, timeout=30_000)
    [body] = bodies
    assert body["input_image"].startswith("data:image/png;base64,")
    assert body["input_image_2"].startswith("data:image/png;base64,")
    assert "input_image_3" not in body
    card = page.locator("#gallery li").first
    params = dict(
        zip(card.locator("dt").all_inner_texts(), card.locator("dd").all_inner_texts(), strict=True)
    )
    assert (params["Model"], params["References"]) == ("tiny-flux2", "2")
    image = card.get_by_role("img")
    assert image.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [256, 256]

    # LoRAs by path with a scale: checked in the page, sent as fal's {path, scale}; one the
    # server cannot fetch (the Hub is offline here) fails on its card, naming it.
    references.set_input_files([])
    loras = page.get_by_label("LoRAs", exact=True)
    loras.fill("acme/style 9")
    assert "-4 to 4" in loras.evaluate("e => e.validationMessage")
    loras.fill("acme/style 0.5")
    bodies.clear()
    page.get_by_role("button", name="Generate").click()
    failed = page.locator("#gallery li").first
    expect(failed.locator(".error")).to_contain_text("LoRA acme/style", timeout=30_000)
    assert bodies[0]["loras"] == [{"path": "acme/style", "scale": 0.5}]
    assert errors == [] or all("Failed to load resource" in e for e in errors)
    page.context.close()


def guidance_follows_the_model(browser, base: str) -> None:
    """A schnell-kind model (none is loadable here: one is added to the model list) has no
    guidance: the field hides, and steps take that model's defaults."""
    from playwright.sync_api import expect

    def with_schnell(route) -> None:
        listed = route.fetch().json()
        fast = {**listed[0], "name": "fast", "kind": "schnell", "default_guidance": None}
        route.fulfill(json=[*listed, {**fast, "default_steps": 4, "max_steps": 12}])

    context = browser.new_context()
    context.route("**/playground/models", with_schnell)
    page = context.new_page()
    page.goto(f"{base}/")
    page.wait_for_function("document.querySelector('#model').options.length > 1")
    guidance = page.get_by_label("Guidance", exact=True)
    expect(guidance).to_be_visible()
    page.get_by_label("Model", exact=True).select_option("fast")
    expect(guidance).to_be_hidden()
    expect(guidance).to_be_disabled()
    expect(page.get_by_label("Steps", exact=True)).to_have_attribute("max", "12")
    page.get_by_label("Model", exact=True).select_option("tiny")
    expect(guidance).to_have_value("3")
    context.close()


def phone_run(browser, base: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page, errors = open_page(
        browser, base, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
    )
    # With is_mobile, the layout is 390 px wide only because of the viewport meta tag.
    assert page.evaluate("window.innerWidth") == 390
    assert page.evaluate(NO_OVERFLOW)
    prompt = page.get_by_label("Prompt", exact=True)
    prompt.fill("a lighthouse at dusk, " * 20)  # a long prompt must wrap, not overflow
    page.get_by_label("Size", exact=True).select_option("custom")
    page.get_by_label("Width", exact=True).fill("512")
    page.get_by_label("Height", exact=True).fill("512")
    page.get_by_label("Steps", exact=True).fill("20")  # about a second: progress shows
    page.get_by_label("Seed", exact=True).fill(str(MAX_SEED))  # past 2^53: kept exact
    prompt.press("Control+Enter")

    bar = page.get_by_role("progressbar", name="Image 1 of 1 progress")
    expect(bar).to_be_visible()
    page.wait_for_function(
        "() => document.querySelector('#gallery progress')?.value > 0", timeout=30_000
    )
    expect(bar).to_have_count(0, timeout=30_000)
    page.wait_for_function(IMAGE_LOADED, timeout=30_000)
    card = page.locator("#gallery li").first
    expect(card.locator("dl div", has_text="Seed").locator("dd")).to_have_text(str(MAX_SEED))
    [entry] = page.evaluate(GALLERY)
    result = httpx.get(f"{base}/v1/get_result", params={"id": entry["id"]}).json()
    assert result["result"]["seed"] == MAX_SEED
    assert page.evaluate(NO_OVERFLOW), "the page scrolls sideways on a phone"
    card.scroll_into_view_if_needed()
    page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
    assert errors == []
    page.context.close()
