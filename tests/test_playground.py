"""The web playground: its routes, and the page driven end to end in headless Chromium.

The browser test uses Debian's Chromium (/usr/bin/chromium) through Playwright's Python API;
it never downloads a browser. Without Chromium it is skipped, except under CI (the CI
environment variable set), where it fails: CI must run it.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
from base64 import b64decode, b64encode
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from fluxserve.api.app import create_app
from fluxserve.api.playground.router import _describe
from fluxserve.bootstrap import build_services
from fluxserve.config import Settings
from fluxserve.specs import MODEL_SPECS
from tests.helpers import (
    FLUXSERVE,
    SMALL,
    LiveServer,
    fetch_image,
    idle_app,
    poll_result,
    wait_ready,
)

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
    # Its modes: generate and image-to-image by name, with a list of LoRAs; and Ultra (a
    # FLUX.1 model makes it at --ultra-megapixels when no FLUX.2 model is loaded).
    assert sorted(tiny["modes"]) == ["generate", "img2img", "ultra"]
    assert tiny["modes"]["generate"] == {
        "endpoint": "/v1/tiny", "loras": "list", "max_loras": 8, "min_steps": 1,
        "max_steps": 50, "min_guidance": 1.5, "max_guidance": 10, "fal": "fal-ai/flux-lora",
    }  # fmt: skip
    assert tiny["modes"]["img2img"]["fal"] == "fal-ai/flux-lora/image-to-image"


def test_flux2_models_are_listed_with_their_references(tmp_path: Path, tiny_flux2_dir: Path):
    settings = Settings(model=[str(tiny_flux2_dir)], data_dir=tmp_path, worker_mode="thread")
    for test_client in idle_app(settings):
        [klein] = test_client.get("/playground/models").json()
        assert (klein["kind"], klein["max_references"], klein["default_guidance"]) == (
            "flux2-klein", 4, None,
        )  # fmt: skip
        # FLUX.2 edits by name (input_image ...) and answers Ultra (4 MP natively).
        assert sorted(klein["modes"]) == ["edit", "generate", "ultra"]
        edit, ultra = klein["modes"]["edit"], klein["modes"]["ultra"]
        assert (edit["endpoint"], edit["references"], edit["loras"]) == (
            "/v1/tiny-flux2",
            4,
            "list",
        )
        assert (ultra["endpoint"], ultra["loras"], ultra["finetune_endpoint"]) == (
            "/v1/flux-pro-1.1-ultra", "finetune", "/v1/flux-pro-1.1-ultra-finetuned",
        )  # fmt: skip
        assert "16:9" in ultra["aspect_ratios"]


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
        tiny, kontext_model = client.get("/playground/models").json()
        assert (tiny["name"], tiny["aliases"]) == ("tiny", ["house"])
        # Kontext edits through its fixed route (it picks the model by kind): no LoRAs there.
        assert list(kontext_model["modes"]) == ["edit"]
        edit = kontext_model["modes"]["edit"]
        assert (edit["endpoint"], edit["references"], edit["loras"], edit["fal"]) == (
            "/v1/flux-kontext-pro", 4, "none", "fal-ai/flux-pro/kontext/multi",
        )  # fmt: skip
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


def test_fill_modes_and_registered_loras(tmp_path: Path, tiny_fill_dir: Path, lora_dir: Path):
    """A Fill model serves fill (one registered LoRA, on the -finetuned route) and expand
    (no LoRAs); /playground/loras lists the registry with each LoRA's source and scale."""
    settings = Settings(model=[str(tiny_fill_dir)], data_dir=tmp_path, worker_mode="thread",
                        lora_dir=lora_dir)  # fmt: skip
    for test_client in idle_app(settings):
        services = test_client.app.state.services
        assert test_client.get("/playground/loras").json() == []
        services.loras.register("house", "a.safetensors", 0.8)
        [lora] = test_client.get("/playground/loras").json()
        assert lora == {"name": "house", "source": str(lora_dir / "a.safetensors"), "scale": 0.8}
        [fill] = test_client.get("/playground/models").json()
        assert sorted(fill["modes"]) == ["expand", "fill"]
        modes = fill["modes"]
        assert (modes["fill"]["endpoint"], modes["fill"]["loras"], modes["fill"]["min_steps"]) == (
            "/v1/flux-pro-1.0-fill", "finetune", 15,
        )  # fmt: skip
        assert modes["fill"]["finetune_endpoint"] == "/v1/flux-pro-1.0-fill-finetuned"
        assert (modes["expand"]["loras"], modes["expand"]["max_loras"]) == ("none", 0)
        assert modes["expand"]["fal"] is None  # fal has no expand


# --- the page in headless Chromium -----------------------------------------------------

LORA_NAME, LORA_SCALE = "house", 0.8
SCREENSHOTS = os.environ.get("FLUXSERVE_SCREENSHOTS")  # e.g. "docs": keep one per mode there


@pytest.fixture
def server(tmp_path: Path, lora_dir: Path) -> Iterator[LiveServer]:
    """`fluxserve serve --model tiny --model tiny-flux2 --model tiny-fill` on a free port, in
    the background, with the FLUX.1 test LoRA registered as "house"."""
    common = ["--data-dir", str(tmp_path / "data"), "--lora-dir", str(lora_dir)]
    added = subprocess.run(
        [FLUXSERVE, "loras", "add", LORA_NAME, "a.safetensors", "--scale", str(LORA_SCALE),
         *common], capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    args = ["--model", "tiny", "--model", "tiny-flux2", "--model", "tiny-fill", *common,
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
  const img = document.querySelector("#gallery > li .frame img:not(.preview)");
  return img !== null && img.complete && img.naturalWidth > 0;
}"""
CARD_ENDED = """() => {
  const card = document.querySelector("#gallery > li");
  return card !== null && (card.querySelector(".error") !== null
    || card.querySelector(".frame img:not(.preview)")?.naturalWidth > 0);
}"""
GALLERY = "JSON.parse(localStorage.getItem('fluxserve.gallery') || '[]')"
NO_OVERFLOW = "document.documentElement.scrollWidth <= window.innerWidth"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
MODES = {"generate": "Generate", "edit": "Edit", "img2img": "Image to image", "fill": "Fill",
         "expand": "Expand", "ultra": "Ultra"}  # fmt: skip


class Browser:
    """One Chromium for the whole test; every page's requests recorded, to check their hosts."""

    def __init__(self, browser, base: str, tmp_path: Path) -> None:
        self.browser, self.base, self.tmp = browser, base, tmp_path
        self.urls: list[str] = []

    def open(self, **context_options):
        """A fresh context's page at the playground, its models loaded; and its JS errors."""
        page = self.browser.new_context(**context_options).new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("request", lambda r: self.urls.append(r.url))
        page.add_init_script(RECORD_PROGRESS)
        page.goto(f"{self.base}/")
        page.wait_for_function("document.querySelector('#model').options.length > 0")
        return page, errors

    def picture(self, name: str, colour: str, size: tuple[int, int] = (96, 64)) -> str:
        path = self.tmp / f"{name}.png"
        Image.new("RGB", size, colour).save(path)
        return str(path)


@pytest.mark.process
def test_playground_in_chromium(server: LiveServer, tmp_path: Path):
    sync_playwright = sync_playwright_or_skip()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        browser = Browser(chromium, server.base, tmp_path)
        try:
            server.wait_ready(90)  # the server boots while Chromium starts
            desktop_run(browser, server.base, tmp_path)
            guidance_follows_the_model(chromium, server.base)
            image_modes_run(browser)
            errors_run(browser)
            phone_run(browser, server.base, tmp_path)
        finally:
            chromium.close()
    # Nothing from another origin: every request went to the server (or was a data: URL).
    hosts = {urlsplit(url).netloc for url in browser.urls if not url.startswith(("data:", "blob:"))}
    assert hosts == {urlsplit(server.base).netloc}, hosts


def choose_mode(page, mode: str) -> None:
    page.get_by_role("radio", name=MODES[mode], exact=True).check()


def card_params(card) -> dict[str, str]:
    return dict(
        zip(card.locator("dt").all_inner_texts(), card.locator("dd").all_inner_texts(), strict=True)
    )


def wait_for_result(page, count: int = 1) -> None:
    """The newest card ends with its image, not an error; ``count`` entries are kept."""
    page.wait_for_function(f"document.querySelectorAll('#gallery > li').length >= {count}")
    page.wait_for_function(CARD_ENDED, timeout=30_000)
    error = page.locator("#gallery > li").first.locator(".error")
    assert not error.count(), error.inner_text()
    page.wait_for_function(IMAGE_LOADED)
    page.wait_for_function(f"({GALLERY}).length === {count}", timeout=5000)


def check_screenshot(page, path: Path, mode: str | None = None) -> Image.Image:
    """The page fits the width (no sideways scrolling) and its screenshot is not blank; the
    desktop one per mode is kept under $FLUXSERVE_SCREENSHOTS (docs/playground-<mode>.png)."""
    assert page.evaluate(NO_OVERFLOW), f"{path.name}: the page scrolls sideways"
    page.evaluate("window.scrollTo(0, 0)")  # the mode, its fields and the newest image
    page.screenshot(path=str(path))
    shot = Image.open(path).convert("RGB")
    assert len(shot.getcolors(1 << 24) or range(1 << 16)) > 50, f"{path.name} looks blank"
    if SCREENSHOTS and mode:
        target = Path(SCREENSHOTS) / f"playground-{mode}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        small = shot.resize((shot.width * 3 // 4, shot.height * 3 // 4), Image.Resampling.LANCZOS)
        small.quantize(colors=64).save(target, optimize=True)  # small PNGs for the README
    return shot


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def desktop_run(browser: Browser, base: str, tmp_path: Path) -> None:
    """Generate with a seed and a registered LoRA; the gallery entry; the curl from "copy
    as code" run as written gives the same image; reuse; a moderated prompt; reload."""
    from playwright.sync_api import expect

    page, errors = browser.open(viewport=DESKTOP)
    expect(page.get_by_role("radio", name="Generate")).to_be_checked()
    expect(page.get_by_label("Model", exact=True)).to_have_value("tiny")
    expect(page.get_by_label("Guidance", exact=True)).to_have_value("3")
    prompt = "a red fox in the snow"
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.get_by_label("Size", exact=True).select_option("square")
    expect(page.locator("#size option:checked")).to_have_text("Square 256×256")
    page.get_by_label("Steps", exact=True).fill("4")
    page.get_by_label("Seed", exact=True).fill("1234")
    page.get_by_label("Add a registered LoRA").select_option(LORA_NAME)  # at its scale
    expect(page.locator(".lora-name")).to_have_text(LORA_NAME)
    expect(page.get_by_label(f"Scale of {LORA_NAME}")).to_have_value(str(LORA_SCALE))
    page.get_by_text("API key", exact=True).click()  # opens the <details>
    page.get_by_label("API key (sent as the x-key header)").fill("my-key")
    page.get_by_label("API key (sent as the x-key header)").press("Tab")  # saved on change
    sent: list = []
    page.on("request", lambda r: sent.append(r) if "/v1/" in r.url else None)
    page.get_by_role("button", name="Generate").click()

    card = page.locator("#gallery > li").first
    wait_for_result(page)
    assert "Image 1 of 1 progress" in page.evaluate("window.__progress")
    assert len(sent) >= 2  # the submit and at least one poll, each with the key
    assert all(r.headers.get("x-key") == "my-key" for r in sent)
    body = sent[0].post_data_json
    assert body["loras"] == [{"path": LORA_NAME, "scale": LORA_SCALE}]
    assert (body["seed"], body["previews"]) == (1234, True)  # previews: asked, where offered
    assert page.evaluate("localStorage.getItem('fluxserve.apiKey')") == "my-key"
    expect(page.locator("#status")).to_have_text("Your image is ready.")
    image = card.get_by_role("img", name=prompt)
    assert image.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [256, 256]

    # The gallery entry: mode, parameters, LoRAs, a download link, a thumbnail kept.
    expect(card.locator(".prompt")).to_have_text(prompt)
    assert card_params(card) == {
        "Mode": "Generate", "Model": "tiny", "Size": "256×256", "Steps": "4", "Guidance": "3",
        "LoRAs": f"{LORA_NAME} @ {LORA_SCALE}", "Seed": "1234",
    }  # fmt: skip
    page.wait_for_function(f"({GALLERY})[0]?.thumb?.startsWith('data:image/jpeg')")
    [entry] = page.evaluate(GALLERY)
    assert (entry["seed"], entry["prompt"], entry["steps"], entry["mode"]) == (
        "1234", prompt, 4, "generate",
    )  # fmt: skip
    download = card.get_by_role("link", name="Download")
    assert download.get_attribute("href") == entry["url"]
    assert "/files/" in entry["url"]

    shot = check_screenshot(page, tmp_path / "desktop-generate.png", "generate")
    box = image.bounding_box()
    assert box is not None
    assert min(box["width"], box["height"]) > 100
    crop = shot.crop((int(box["x"]), int(box["y"]), int(box["x"] + box["width"]),
                      int(box["y"] + box["height"])))  # fmt: skip
    assert len(crop.getcolors(1 << 24)) > 1000  # random weights: colourful noise

    # Copy as code: the curl (BFL: submit, poll, download), run as written with the key
    # filled in, makes the same seed's image.
    page.get_by_text("Copy as code").click()
    expect(page.get_by_role("tab", name="curl (BFL)")).to_have_attribute("aria-selected", "true")
    curl = page.locator("#code-text").inner_text()
    assert base in curl
    assert "YOUR_API_KEY" in curl
    tabs = {"Python: openai": "images.generate(", "Python: fal-client": '"fal-ai/flux-lora"',
            "JavaScript: AI SDK": "experimental_generateImage"}  # fmt: skip
    for tab, needle in tabs.items():
        page.get_by_role("tab", name=tab).click()
        code = page.locator("#code-text").inner_text()
        assert needle in code, code
        assert "1234" in code, code
        assert "YOUR_API_KEY" in code, code
    workdir = tmp_path / "curl"
    workdir.mkdir()
    script = curl.replace("YOUR_API_KEY", "my-key")
    ran = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=workdir,
                         capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    page_image = httpx.get(entry["url"]).content
    assert np.array_equal(pixels((workdir / "fluxserve.jpg").read_bytes()), pixels(page_image))

    # Reuse fills the form (mode, seed, LoRAs) and puts the focus back on the prompt.
    page.get_by_label("Prompt", exact=True).fill("something else")
    page.get_by_label("Seed", exact=True).fill("")
    page.get_by_role("button", name=f"Remove LoRA {LORA_NAME}").click()
    card.get_by_role("button", name=re.compile("^Reuse")).click()
    expect(page.get_by_label("Seed", exact=True)).to_have_value("1234")
    expect(page.get_by_label("Prompt", exact=True)).to_have_value(prompt)
    expect(page.get_by_label("Prompt", exact=True)).to_be_focused()
    expect(page.locator(".lora-name")).to_have_text(LORA_NAME)

    # A refused prompt: which check refused it, on its card, announced; not kept.
    page.get_by_label("Prompt", exact=True).fill(BLOCKED_PROMPT)
    page.get_by_role("button", name="Generate").click()
    refused = page.locator("#gallery > li").first
    expect(refused.locator(".error")).to_have_text(
        re.compile("^Request Moderated: the prompt was refused by the .+ check \\(blocked_term")
    )
    expect(page.locator("#status")).to_have_text(re.compile("^Not generated: Request Mod"))
    assert len(page.evaluate(GALLERY)) == 1
    refused.get_by_role("button", name="Dismiss").click()
    expect(page.locator("#gallery > li")).to_have_count(1)

    # The gallery survives a reload, from localStorage; Remove takes an entry out.
    page.reload()
    expect(page.locator("#gallery > li")).to_have_count(1)
    expect(page.locator("#gallery > li .prompt")).to_have_text(prompt)
    page.wait_for_function(IMAGE_LOADED)
    page.locator("#gallery > li").get_by_role("button", name="Remove").click()
    expect(page.locator("#gallery > li")).to_have_count(0)
    assert page.evaluate(GALLERY) == []
    assert errors == []
    page.context.close()


def image_modes_run(browser: Browser) -> None:
    """Edit (reference images: checked, reordered), image-to-image (strength), Fill (a
    mask painted with the mouse, a registered LoRA), Expand (margins) and Ultra (ratio,
    raw), each to its result; then "reuse" brings back an edit's inputs."""
    from playwright.sync_api import expect

    page, errors = browser.open(viewport=DESKTOP)
    bodies: list[tuple[str, dict]] = []
    page.on("request", lambda r: bodies.append((urlsplit(r.url).path, r.post_data_json))
            if r.method == "POST" and "/v1/" in r.url else None)  # fmt: skip
    files = page.locator("#images")
    red, blue = browser.picture("red", "red"), browser.picture("blue", "blue")

    # Edit: FLUX.2 [klein] takes up to 4 references; more, or not an image, is refused here.
    choose_mode(page, "edit")
    expect(page.get_by_label("Model", exact=True)).to_have_value("tiny-flux2")
    expect(page.get_by_label("Guidance", exact=True)).to_be_hidden()  # step-distilled
    page.get_by_label("Prompt", exact=True).fill("the red square on the blue one")
    colours = ("green", "white", "black", "yellow", "purple")
    files.set_input_files([browser.picture(f"ref-{c}", c) for c in colours])
    expect(page.locator("#images-error")).to_contain_text("at most 4")
    expect(page.locator("#thumbs li")).to_have_count(4)
    text = browser.tmp / "notes.txt"
    text.write_text("not an image")
    files.set_input_files([str(text)])
    assert "not a PNG" in files.evaluate("e => e.validationMessage")
    page.get_by_role("button", name="Generate").click()
    assert bodies == []  # refused in the page: nothing sent
    for _ in range(4):
        page.get_by_role("button", name="Remove image 1").click()
    small = browser.picture("small", "red", (32, 32))
    files.set_input_files([small])
    expect(page.locator("#images-error")).to_contain_text("at least 64 pixels")
    files.set_input_files([red, blue])
    page.get_by_role("button", name="Move image 2 earlier").click()  # blue first now
    expect(page.locator("#thumbs li img").first).to_have_attribute("alt", re.compile("blue"))
    page.get_by_role("button", name="Generate").click()
    wait_for_result(page, 1)
    path, body = bodies[-1]
    assert path == "/v1/tiny-flux2"
    first = Image.open(io.BytesIO(b64decode(body["input_image"].split(",")[1]))).convert("RGB")
    assert first.getpixel((0, 0)) == (0, 0, 255)  # the reordered first: blue
    assert body["input_image_2"].startswith("data:image/png;base64,")
    card = page.locator("#gallery > li").first
    assert card_params(card)["Mode"] == "Edit"
    expect(card.get_by_role("img", name=re.compile("^Input"))).to_have_count(2)
    check_screenshot(page, browser.tmp / "desktop-edit.png", "edit")

    # Image to image on tiny: one start image and a strength.
    choose_mode(page, "img2img")
    expect(page.locator("#thumbs li")).to_have_count(2)  # kept, but only one is sent
    page.get_by_role("button", name="Remove image 2").click()
    page.get_by_label("Strength").fill("0.5")
    page.get_by_label("Prompt", exact=True).fill("a watercolour of it")
    page.get_by_role("button", name="Generate").click()
    wait_for_result(page, 2)
    path, body = bodies[-1]
    assert (path, body["strength"], body["width"]) == ("/v1/tiny", 0.5, 256)
    assert body["image_prompt"].startswith("data:image/png;base64,")
    assert card_params(page.locator("#gallery > li").first)["Strength"] == "0.5"
    check_screenshot(page, browser.tmp / "desktop-img2img.png", "img2img")

    # Fill: paint a mask over the image's left half, and a registered LoRA (one, by name).
    choose_mode(page, "fill")
    expect(page.get_by_label("Model", exact=True)).to_have_value("tiny-fill")
    expect(page.get_by_label("Steps", exact=True)).to_have_value("15")  # Fill's least
    page.get_by_label("Prompt", exact=True).fill("a window")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#mask-error")).to_contain_text("Paint over")  # nothing painted yet
    page.get_by_label("Brush size").fill("20")
    box = page.locator("#mask-canvas").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] * 0.1, box["y"] + box["height"] * 0.2)
    page.mouse.down()
    for step in range(1, 9):
        page.mouse.move(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * step / 10)
    page.mouse.up()
    expect(page.locator("#lora-path")).to_be_hidden()  # Fill takes registered LoRAs only
    page.get_by_label("Add a registered LoRA").select_option(LORA_NAME)
    page.get_by_role("button", name="Generate").click()
    wait_for_result(page, 3)
    path, body = bodies[-1]
    assert path == "/v1/flux-pro-1.0-fill-finetuned"
    assert (body["finetune_id"], body["finetune_strength"], body["steps"]) == (LORA_NAME, 0.8, 15)
    mask = Image.open(io.BytesIO(b64decode(body["mask"].split(",")[1]))).convert("L")
    assert mask.size == (96, 64)
    assert mask.getpixel((24, 32)) == 255
    assert mask.getpixel((90, 32)) == 0
    card = page.locator("#gallery > li").first
    assert card_params(card)["LoRAs"] == f"{LORA_NAME} @ {LORA_SCALE}"
    expect(card.get_by_role("img", name="Mask")).to_have_count(1)
    check_screenshot(page, browser.tmp / "desktop-fill.png", "fill")

    # Expand: margins, previewed on a canvas; the result is the grown size.
    choose_mode(page, "expand")
    expect(page.locator("#lora-registered")).to_be_hidden()  # Expand takes no LoRAs
    page.get_by_label("Top", exact=True).fill("32")
    page.get_by_label("Right", exact=True).fill("32")
    expect(page.locator("#expand-preview")).to_have_attribute("aria-label", re.compile("128×96"))
    page.get_by_role("button", name="Generate").click()
    wait_for_result(page, 4)
    path, body = bodies[-1]
    assert (path, body["top"], body["right"], body["bottom"]) == (
        "/v1/flux-pro-1.0-expand",
        32,
        32,
        0,
    )
    image = page.locator("#gallery > li").first.locator(".frame img")
    assert image.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [128, 96]
    check_screenshot(page, browser.tmp / "desktop-expand.png", "expand")

    # Ultra: an aspect ratio and raw; about 4 "megapixels" of the model's native area.
    choose_mode(page, "ultra")
    expect(page.get_by_label("Model", exact=True)).to_have_value("tiny-flux2")
    page.get_by_label("Aspect ratio").select_option("1:1")
    page.get_by_label("Raw").check()
    page.get_by_role("button", name=f"Remove LoRA {LORA_NAME}").click()  # a FLUX.1 LoRA
    page.get_by_label("Prompt", exact=True).fill("a mountain lake")
    page.get_by_role("button", name="Generate").click()
    wait_for_result(page, 5)
    path, body = bodies[-1]
    assert (path, body["aspect_ratio"], body["raw"]) == ("/v1/flux-pro-1.1-ultra", "1:1", True)
    image = page.locator("#gallery > li").first.locator(".frame img")
    assert image.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [512, 512]
    check_screenshot(page, browser.tmp / "desktop-ultra.png", "ultra")

    # Reuse an edit: its mode, model and both references (from IndexedDB), in order.
    page.locator("#gallery > li").nth(4).get_by_role("button", name=re.compile("^Reuse")).click()
    expect(page.get_by_role("radio", name="Edit")).to_be_checked()
    expect(page.locator("#thumbs li")).to_have_count(2)
    expect(page.locator("#thumbs li img").first).to_have_attribute("alt", re.compile("blue"))
    assert errors == []
    page.context.close()


def errors_run(browser: Browser) -> None:
    """A 422 shows beside the field it names; a 429 says when to retry."""
    from playwright.sync_api import expect

    page, errors = browser.open(viewport=DESKTOP)
    page.get_by_label("Prompt", exact=True).fill("a fox")
    page.get_by_label("Add a LoRA by path").fill("weights.ckpt")  # pickles are refused: 422
    page.get_by_role("button", name="Add", exact=True).click()
    page.get_by_role("button", name="Generate").click()
    row = page.locator("#lora-list li").first
    expect(row.locator(".field-error.from-server")).to_contain_text("safetensors")
    expect(page.locator("#status")).to_have_text(re.compile("loras.0.path"))
    page.get_by_role("button", name="Remove LoRA weights.ckpt").click()

    def too_many(route) -> None:
        route.fulfill(status=429, headers={"Retry-After": "7"},
                      json={"detail": "This key has 4 tasks running."})  # fmt: skip

    page.route("**/v1/tiny", too_many)
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#status")).to_have_text(re.compile("Too many requests: .*Retry in 7 s"))
    expect(page.locator("#generate")).to_be_disabled()
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
    page.get_by_label("Model", exact=True).select_option("tiny")
    expect(guidance).to_have_value("3")
    context.close()


PREVIEW = (
    "data:image/jpeg;base64,"
    + b64encode(
        (lambda b: (Image.new("RGB", (32, 32), "orange").save(b, "JPEG"), b.getvalue())[1])(
            io.BytesIO()
        )
    ).decode()
)


def phone_run(browser: Browser, base: str, tmp_path: Path) -> None:
    """At phone size: every mode's form fits the width; a long job shows its progress and
    the server's preview image (here added to get_result) until it is ready."""
    from playwright.sync_api import expect

    page, errors = browser.open(viewport=PHONE, is_mobile=True, has_touch=True)
    # With is_mobile, the layout is 390 px wide only because of the viewport meta tag.
    assert page.evaluate("window.innerWidth") == 390
    picture = browser.picture("phone", "teal")
    for mode in MODES:
        choose_mode(page, mode)
        if mode in ("edit", "img2img") and not page.locator("#thumbs li").count():
            page.locator("#images").set_input_files([picture])
        check_screenshot(page, tmp_path / f"phone-{mode}.png")
    choose_mode(page, "generate")

    def with_preview(route) -> None:
        answer = route.fetch().json()
        if answer["status"] == "Pending" and answer.get("preview") is None:
            answer["preview"] = {"image": PREVIEW, "step": 3, "steps": 20}
        route.fulfill(json=answer)

    page.route("**/v1/get_result*", with_preview)
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
    expect(page.get_by_role("img", name="Preview at step 3 of 20")).to_be_visible(timeout=30_000)
    expect(bar).to_have_count(0, timeout=30_000)
    page.wait_for_function(IMAGE_LOADED, timeout=30_000)
    card = page.locator("#gallery > li").first
    expect(card.locator("dl div", has_text="Seed").locator("dd")).to_have_text(str(MAX_SEED))
    [entry] = page.evaluate(GALLERY)
    result = httpx.get(f"{base}/v1/get_result", params={"id": entry["id"]}).json()
    assert result["result"]["seed"] == MAX_SEED
    card.scroll_into_view_if_needed()
    check_screenshot(page, tmp_path / "phone-result.png")
    page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
    assert errors == []
    page.context.close()
