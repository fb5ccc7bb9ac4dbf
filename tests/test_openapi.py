"""The app's own OpenAPI document tells the truth: schemathesis drives every operation in it,
in-process, and checks that no answer is a 5xx, that each status is documented for its route,
that each body matches the schema documented for that status, and its content type.

Two servers: routes that answer at once run on one without a worker (jobs stay queued, so
the run costs no generation); routes that wait for their job (fal's synchronous calls,
OpenAI's) and /readyz run on one whose worker serves the tiny model.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from schemathesis.engine import Status, events, from_schema
from schemathesis.hooks import GLOBAL_HOOK_DISPATCHER
from schemathesis.python.asgi import shutdown_lifespans

from fluxserve.api.app import create_app
from fluxserve.api.fal.protocol import IMAGE_SIZE_PRESETS
from fluxserve.config import Settings
from tests.helpers import wait_ready

CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "response_schema_conformance",
    "content_type_conformance",
]
# Routes that wait for their job to end before they answer.
WAITING = r"^/(fal-ai/.*|v1/images/.*)$"


def without_lifespan(app: Any) -> Callable[..., Any]:
    """``app`` with its lifespan answered and skipped: schemathesis' client would otherwise
    start the app's workers itself, and keep them until the process exits."""

    async def asgi(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        while True:
            phase = (await receive())["type"].rsplit(".", 1)[-1]  # startup, then shutdown
            await send({"type": f"lifespan.{phase}.complete"})
            if phase == "shutdown":
                return

    return asgi


def conformance_failures(
    app: Any,
    max_examples: int,
    include: str | None = None,
    exclude: str | None = None,
    phases: tuple[str, ...] = ("examples", "coverage", "fuzzing"),
    mode: str = "all",
) -> tuple[list[str], Counter[int]]:
    """Every failed check, one line each, and the statuses answered: schemathesis' phases
    (examples; coverage: boundary and invalid values, other methods; fuzzing), seeded."""
    every = ("examples", "coverage", "fuzzing", "stateful")
    config = schemathesis.Config.from_dict(
        {
            "seed": 17,
            "cache": {"enabled": False},  # nothing written into the checkout
            "suppress-health-check": ["all"],
            "generation": {"database": "none", "max-examples": max_examples, "mode": mode},
            "phases": {phase: {"enabled": phase in phases} for phase in every},
            "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
        }
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", without_lifespan(app), config=config)
    if include is not None:
        schema = schema.include(path_regex=include)
    if exclude is not None:
        schema = schema.exclude(path_regex=exclude)
    failures: set[str] = set()
    statuses: Counter[int] = Counter()
    try:
        for event in from_schema(schema).execute():
            if isinstance(event, events.ScenarioFinished):
                recorder = event.recorder
                for case_id, checks in recorder.checks.items():
                    response = recorder.interactions[case_id].response
                    status = response.status_code if response is not None else 0
                    statuses[status] += 1
                    for check in checks:
                        if check.status is Status.FAILURE and check.failure_info is not None:
                            message = " ".join(check.failure_info.failure.message.split())
                            failures.add(f"{recorder.label} -> {status}: {check.name}: "
                                         f"{message[:300]}")  # fmt: skip
            elif isinstance(event, events.NonFatalError):  # an exception, not a finding
                failures.add(f"{event.label}: error: {event.value!r}"[:500])
            elif isinstance(event, events.FatalError):
                failures.add(f"fatal: {event.exception!r}"[:500])
    finally:
        shutdown_lifespans()
    return sorted(failures), statuses


@pytest.fixture
def openapi_settings(settings: Settings) -> Settings:
    # The queue never fills in these runs (a 503 would be a finding of its own).
    return settings.model_copy(update={"max_queue": 1_000_000})


@pytest.fixture
def idle_app(openapi_settings: Settings) -> Iterator[Any]:
    app = create_app(openapi_settings)
    yield app
    app.state.services.store.close()


@pytest.fixture
def serving_app(openapi_settings: Settings) -> Iterator[Any]:
    app = create_app(openapi_settings)
    with TestClient(app) as client:  # the lifespan: the worker runs
        wait_ready(client)
        yield app


def test_routes_that_answer_at_once_conform(idle_app):
    # /readyz answers 503 without a worker, as it should: it runs with the other server.
    failures, statuses = conformance_failures(
        idle_app, max_examples=2, exclude=rf"{WAITING}|^/readyz$"
    )
    assert failures == []
    # Every operation was driven, accepted requests and refused ones alike.
    assert statuses.total() > 5000
    assert {200, 404, 405, 422} <= set(statuses), statuses


# The worker really makes every image a waiting route accepts: keep each to one image at the
# tiny model's 256x256 in few steps, so the run takes seconds. A size left out (1024 pixels
# by default) is asked for small; a value the route would refuse stays as generated.
SMALL = {"size": "256x256", "image_size": {"width": 256, "height": 256}}


def cheap(_context: Any, case: Any, _kwargs: dict[str, Any]) -> None:
    body = case.body
    if not isinstance(body, dict):
        return
    for name, most in (("num_images", 1), ("n", 1), ("num_inference_steps", 2), ("steps", 2)):
        value = body.get(name)
        if type(value) is int and most < value <= 50:
            body[name] = most
    if case.operation.path.startswith("/v1/images/"):
        size = body.get("size", "auto")
        if isinstance(size, str) and re.fullmatch(r"auto|\d+x\d+", size):
            body["size"] = SMALL["size"]
        return
    image_size = body.get("image_size", "landscape_4_3")  # the default
    if (isinstance(image_size, str) and image_size in IMAGE_SIZE_PRESETS) or (
        isinstance(image_size, dict)
        and all(type(image_size.get(side)) is int for side in ("width", "height"))
        and all(256 <= image_size[side] <= 2048 for side in ("width", "height"))
    ):
        body["image_size"] = dict(SMALL["image_size"])


def test_routes_that_wait_for_their_job_conform(serving_app):
    # No coverage phase here: its boundary and invalid values are the ones the queue twins of
    # these routes (same wire models) already got without a worker, and each value the
    # route accepts would cost a real generation.
    hook = schemathesis.hook("before_call")(cheap)
    try:
        failures, statuses = conformance_failures(
            serving_app,
            max_examples=4,
            include=rf"{WAITING}|^/readyz$",
            phases=("examples", "fuzzing"),
        )
    finally:
        GLOBAL_HOOK_DISPATCHER.unregister(hook)
    assert failures == []
    assert statuses[200] > 5, statuses  # images were made and their answers conformed


def test_unauthenticated_answers_conform(openapi_settings):
    """With keys required and none sent, a route of each kind in each dialect answers 401
    in its dialect's documented shape."""
    settings = openapi_settings.model_copy(update={"auth": "required"})
    app = create_app(settings)
    one_of_each = [
        "/v1/flux-dev", "/v1/{name}", "/v1/get_result", "/v1/credits",  # BFL
        "/queue/fal-ai/flux/dev", "/fal-ai/flux/dev",  # fal: queue and sync
        "/queue/fal-ai/flux/requests/{request_id}/status",
        "/queue/fal-ai/flux/requests/{request_id}/cancel",
        "/v1/images/generations", "/v1/models",  # OpenAI
        "/playground/models",
    ]  # fmt: skip
    try:
        failures, statuses = conformance_failures(
            app,
            max_examples=1,
            include="|".join(f"^{re.escape(path)}$" for path in one_of_each),
            phases=("examples", "fuzzing"),
            mode="positive",
        )
    finally:
        app.state.services.store.close()
    assert failures == []
    assert set(statuses) == {401}, statuses
    assert statuses[401] >= len(one_of_each)
