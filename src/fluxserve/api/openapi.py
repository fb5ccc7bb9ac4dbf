"""The app's OpenAPI document, with what the route declarations cannot say."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from fluxserve.api.errors import OPENAI_PREFIXES


def install_openapi(app: FastAPI, max_prompt_chars: int) -> None:
    """Amend the generated document once, when it is first asked for:

    - every request body's ``prompt`` takes at most ``max_prompt_chars`` characters: a
      setting (--max-prompt-chars), so not a constant the wire models could declare (an
      answer's ``prompt`` is not bounded: a rewritten prompt may be longer);
    - OpenAI's routes answer a bad parameter with a 400, never a 422: FastAPI's automatic
      422 is taken off them.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()  # caches it in app.openapi_schema: amended in place
        schemas = document.get("components", {}).get("schemas", {})
        for path, item in document["paths"].items():
            for operation in item.values():
                for body in operation.get("requestBody", {}).get("content", {}).values():
                    _limit_prompt(body.get("schema", {}), schemas, max_prompt_chars)
                if path.startswith(OPENAI_PREFIXES):
                    operation.get("responses", {}).pop("422", None)
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def _limit_prompt(schema: dict[str, Any], schemas: dict[str, Any], max_chars: int) -> None:
    """Set maxLength on the text branch of a request body's ``prompt`` (BFL's may be null)."""
    ref = schema.get("$ref", "")
    if ref.startswith("#/components/schemas/"):
        schema = schemas[ref.rsplit("/", 1)[-1]]
    prompt = schema.get("properties", {}).get("prompt")
    if isinstance(prompt, dict):
        for branch in [prompt, *prompt.get("anyOf", [])]:
            if branch.get("type") == "string":
                branch["maxLength"] = max_chars
