"""The unmodified `openai` SDK against fluxserve's OpenAI Images dialect.

Pointed at the server only through the environment: OPENAI_BASE_URL, OPENAI_API_KEY and
SSL_CERT_FILE (the test CA). Prints one JSON line: {"steps": {name: {"ok": ..., ...}}}.
"""

from __future__ import annotations

import base64
import io
import tempfile
from pathlib import Path
from typing import Any

import openai
from _common import Steps, download, image_info
from openai import OpenAI
from PIL import Image

PROMPT = "a lighthouse at dawn, watercolour"
SIZE = "256x256"
EDIT_PROMPT = "paint the sky purple"
EDIT_SIZE = (96, 64)  # the picture edited; the mask is the same size
MASK_BOX = (16, 16, 48, 48)  # transparent in the mask: the area to repaint


def write_edit_files(folder: Path) -> tuple[Path, Path, Path]:
    """A picture, a second (square) one, and a mask with a transparent box, as PNG files."""
    width, height = EDIT_SIZE
    picture = Image.new("RGB", EDIT_SIZE)
    picture.putdata(
        [
            ((x * 255) // width, (y * 255) // height, 128)
            for y in range(height)
            for x in range(width)
        ]
    )
    square = Image.new("RGB", (64, 64), (200, 40, 40))
    mask = Image.new("RGBA", EDIT_SIZE, (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), MASK_BOX)
    paths = folder / "picture.png", folder / "square.png", folder / "mask.png"
    for image, path in zip((picture, square, mask), paths, strict=True):
        image.save(path)
    return paths


def run_edits(steps: Steps, client: OpenAI, folder: Path) -> None:
    """``client.images.edit``: files opened as users open them, one, a list, with a mask."""
    picture, square, mask = write_edit_files(folder)

    def edit(**fields: Any) -> dict[str, Any]:
        response = client.images.edit(
            prompt=EDIT_PROMPT, response_format="b64_json", extra_body={"steps": 2}, **fields
        )
        data = response.data or []
        return {
            "created": response.created,
            "count": len(data),
            "has_url": [item.url is not None for item in data],
            "revised_prompts": [item.revised_prompt for item in data],
            "images": [
                image_info(base64.b64decode(item.b64_json)) for item in data if item.b64_json
            ],
        }

    def edit_one() -> dict[str, Any]:
        with picture.open("rb") as image:
            return edit(image=image)

    def edit_two() -> dict[str, Any]:
        with picture.open("rb") as first, square.open("rb") as second:
            return edit(image=[first, second], model="tiny-kontext", size=SIZE)

    def edit_mask() -> dict[str, Any]:
        with picture.open("rb") as image, mask.open("rb") as mask_file:
            return edit(image=image, mask=mask_file)

    def edit_bytes_url() -> dict[str, Any]:
        # Bytes in a (name, content, type) tuple, answered with a link.
        data = picture.read_bytes()
        response = client.images.edit(
            image=("picture.png", data, "image/png"),
            prompt=EDIT_PROMPT,
            model="tiny",
            response_format="url",
            extra_body={"steps": 2},
        )
        urls = [item.url for item in response.data or [] if item.url]
        return {"urls": urls, "downloads": [download(url) for url in urls]}

    def rejected(**fields: Any) -> dict[str, Any]:
        try:
            client.images.edit(prompt="x", **fields)
        except openai.APIStatusError as exc:
            return {"raised": type(exc).__name__, "status_code": exc.status_code, "body": exc.body}
        return {"raised": None}

    def mask_of_another_size() -> dict[str, Any]:
        small = io.BytesIO()
        Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(small, format="PNG")
        with picture.open("rb") as image:
            return rejected(image=image, mask=("mask.png", small.getvalue(), "image/png"))

    def two_images_and_a_mask() -> dict[str, Any]:
        # Both listed files arrive: the server counts them (a mask goes with one image).
        with picture.open("rb") as first, square.open("rb") as second, mask.open("rb") as m:
            return rejected(image=[first, second], mask=m)

    steps.run("edit_one", edit_one)
    steps.run("edit_two", edit_two)
    steps.run("edit_mask", edit_mask)
    steps.run("edit_bytes_url", edit_bytes_url)
    steps.run("edit_error_mask_size", mask_of_another_size)
    steps.run("edit_error_two_images_and_mask", two_images_and_a_mask)


def main() -> None:
    steps = Steps()
    client = OpenAI(timeout=30.0)
    state: dict[str, Any] = {"model": "tiny"}

    def models() -> dict[str, Any]:
        listed = list(client.models.list())
        ids = [model.id for model in listed]
        if ids:
            state["model"] = "tiny" if "tiny" in ids else ids[0]
        return {
            "ids": ids,
            "objects": [model.object for model in listed],
            "owned_by": [model.owned_by for model in listed],
            "created": [model.created for model in listed],
        }

    def generate(**fields: Any) -> dict[str, Any]:
        response = client.images.generate(model=state["model"], prompt=PROMPT, size=SIZE, **fields)
        data = response.data or []
        return {
            "created": response.created,
            "count": len(data),
            "has_url": [item.url is not None for item in data],
            "has_b64": [item.b64_json is not None for item in data],
            "revised_prompts": [item.revised_prompt for item in data],
            "images": [
                image_info(base64.b64decode(item.b64_json)) for item in data if item.b64_json
            ],
            "urls": [item.url for item in data if item.url],
        }

    def url_format() -> dict[str, Any]:
        result = generate(response_format="url")
        result["downloads"] = [download(url) for url in result["urls"]]
        return result

    def api_error(**fields: Any) -> dict[str, Any]:
        try:
            response = client.images.generate(
                model=state["model"], prompt=PROMPT, size=SIZE, **fields
            )
        except openai.APIStatusError as exc:
            return {
                "raised": type(exc).__name__,
                "status_code": exc.status_code,
                "body": exc.body,
                "message": exc.message,
            }
        return {"raised": None, "count": len(response.data or [])}

    steps.run("models", models)
    steps.run("b64_json", lambda: generate(response_format="b64_json"))
    steps.run("url", url_format)
    steps.run("seed_7_first", lambda: generate(response_format="b64_json", extra_body={"seed": 7}))
    steps.run("seed_7_again", lambda: generate(response_format="b64_json", extra_body={"seed": 7}))
    steps.run("seed_8", lambda: generate(response_format="b64_json", extra_body={"seed": 8}))
    steps.run("n_2", lambda: generate(response_format="b64_json", n=2))
    steps.run("jpeg", lambda: generate(response_format="b64_json", output_format="jpeg"))
    steps.run("error_n_11", lambda: api_error(response_format="b64_json", n=11))
    with tempfile.TemporaryDirectory() as folder:
        run_edits(steps, client, Path(folder))
    steps.emit()


if __name__ == "__main__":
    main()
