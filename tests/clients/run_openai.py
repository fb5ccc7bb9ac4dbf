"""The unmodified `openai` SDK against fluxserve's OpenAI Images dialect.

Pointed at the server only through the environment: OPENAI_BASE_URL, OPENAI_API_KEY and
SSL_CERT_FILE (the test CA). Prints one JSON line: {"steps": {name: {"ok": ..., ...}}}.
"""

from __future__ import annotations

import base64
from typing import Any

import openai
from _common import Steps, download, image_info
from openai import OpenAI

PROMPT = "a lighthouse at dawn, watercolour"
SIZE = "256x256"


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
    steps.emit()


if __name__ == "__main__":
    main()
