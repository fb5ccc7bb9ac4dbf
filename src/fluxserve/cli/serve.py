"""``fluxserve serve``: resolve weights, then run the API with its workers."""

from __future__ import annotations

import contextlib
import logging
import math
from types import FrameType

import uvicorn

from fluxserve.bootstrap import Services, build_services, lock_data_dir
from fluxserve.config import Settings
from fluxserve.logs import configure_logging

logger = logging.getLogger("fluxserve")


def serve(settings: Settings) -> int:
    from fluxserve.api.app import create_app

    configure_logging(settings.log_level, settings.log_format)
    # fail before any download if another server runs here; only the embedded SQLite
    # store has one owner: cluster replicas (--database) share the data dir (local storage)
    lock = None if settings.database else lock_data_dir(settings)
    try:
        services = build_services(settings)  # downloads missing weights, with a progress bar
        services._lock = lock
        services.check_auth()  # no keys where keys are required: refuse now, in one sentence
        services.check_hosts()  # links that follow any Host header: refuse now, likewise
        logger.info("API keys %s", "required" if settings.auth_required else "off (--auth off "
                    "or a loopback --host)")  # fmt: skip
        for name, model in services.models.items():
            logger.info("model %s (%s) from %s", name, model.spec.kind.value, model.path)
        if services.router.learns:
            logger.info("models: those the live workers serve (the workers table)")
        else:
            for endpoint, model_name in services.router.table().items():
                logger.info("  /v1/%s -> %s", endpoint, model_name or "(not served)")
        log_safety(services)
        app = create_app(settings, services)
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            # JSON: uvicorn's loggers go through ours (None: it configures none of its own).
            log_config=uvicorn.config.LOGGING_CONFIG if settings.log_format == "text" else None,
            ssl_certfile=settings.tls_cert,
            ssl_keyfile=settings.tls_key,
            # Requests still open (a synchronous call waiting for its job) get the grace too.
            timeout_graceful_shutdown=math.ceil(settings.shutdown_grace),
        )
        # uvicorn raises the Ctrl-C again once it has stopped: that is a clean exit.
        with contextlib.suppress(KeyboardInterrupt):
            DrainingServer(config, services).run()
    finally:
        if lock is not None:
            lock.close()
    return 0


class DrainingServer(uvicorn.Server):
    """uvicorn's server, which on SIGTERM or Ctrl-C first stops taking jobs and starts
    stopping the workers, so they have the same grace as the open connections."""

    def __init__(self, config: uvicorn.Config, services: Services) -> None:
        super().__init__(config)
        self.services = services

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.services.begin_shutdown()
        super().handle_exit(sig, frame)


def log_safety(services) -> None:
    """One line on what is checked, so an operator sees an unguarded server at start."""
    settings, safety = services.settings, services.safety
    image = safety.image_checker[0] if safety.image_checker else "off"
    prompt = safety.prompt_classifier[0] if safety.prompt_classifier else "off"
    logger.info(
        "safety: blocked terms %s, prompt classifier %s, image checker %s, "
        "safety_tolerance at most %d; prompt upsampler %s",
        settings.blocked_terms, prompt, image, settings.max_safety_tolerance,
        settings.prompt_upsampler or "off",
    )  # fmt: skip
