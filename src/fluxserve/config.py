"""Deployment settings: one pydantic-settings class, env prefix ``FLUXSERVE_``.

CLI flags map one to one onto these fields. Nothing here is built at import time.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

S3_MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # SigV4 presigned URLs live at most a week
MAX_IMAGES_CAP = 100  # the wire models' bound on images per request, whatever the setting


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "fluxserve"


def _split_list(value: object) -> object:
    # Env values arrive as "a,b"; CLI values as lists.
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLUXSERVE_", extra="forbid")

    model: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["flux2-klein-4b"],
        min_length=1,
        description="Models to load: a registry name (flux2-klein-4b, flux-schnell, flux-dev, "
        "tiny, ...; `fluxserve models` lists them), a Hugging "
        "Face repo id, or a local diffusers-format directory. Repeat the flag (or separate "
        "with commas) to load several.",
    )
    alias: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Extra endpoint routes as NAME=MODEL, e.g. flux-pro-1.1=flux-dev.",
    )
    database: str | None = Field(
        None,
        description="PostgreSQL URL of a job database shared by API replicas and workers "
        "(postgresql://user:password@host/db); default: SQLite in the data dir.",
    )
    storage: str | None = Field(
        None,
        description="S3-compatible bucket for images, s3://bucket/prefix (credentials from "
        "the usual AWS_* variables); default: the data dir, served at signed URLs.",
    )
    s3_endpoint_url: str | None = Field(
        None, description="Endpoint of a non-AWS S3 store (MinIO, R2...): http(s)://host:port."
    )
    s3_region: str | None = Field(None, description="Region of the S3 bucket.")
    worker: bool = Field(
        True,
        description="Run a worker in this server (--no-worker: an API-only replica; run "
        "`fluxserve worker` on the GPU hosts).",
    )
    host: str = Field("127.0.0.1", description="Address the HTTP server binds to.")
    port: int = Field(8000, ge=0, le=65535, description="Port the HTTP server listens on.")
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Where the job database, result images, the URL-signing secret and the "
        "built tiny model live.",
    )
    tls_cert: Path | None = Field(
        None, description="PEM certificate (chain) to serve HTTPS with; needs --tls-key."
    )
    tls_key: Path | None = Field(None, description="PEM private key of --tls-cert.")
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names clients may reach this server by (the Host header; *.example.com "
        "for subdomains); another Host gets 400. Needed off a loopback --host unless "
        "--public-url is set.",
    )
    public_url: str | None = Field(
        None,
        description="Base URL clients reach this server at (behind a proxy); by default "
        "URLs are built from the request's Host.",
    )
    device: str = Field(
        "auto", description="Torch device for the workers: auto, cuda, cuda:N, cpu."
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads torch may use in each worker. Default: on CPU, every core but "
        "one (the API and its clients need one; torch threads that share cores stall each "
        "other); on CUDA, torch's default.",
    )
    result_url_ttl: int = Field(
        600, ge=1, description="Seconds a signed result-image URL stays valid."
    )
    price_table: Path | None = Field(
        None,
        description="JSON file of prices in credits per endpoint (first_mp, extra_mp, "
        "input_mp), for BFL's cost field; default: everything costs 0.",
    )
    metadata_prompt: bool = Field(
        True, description="Write the prompt into the image metadata (off: only model and seed)."
    )
    lease_seconds: float = Field(
        30.0, gt=0, description="How long a worker's claim on a job lasts without a heartbeat."
    )
    max_attempts: int = Field(
        2, ge=1, description="Times a job may be started before a worker crash marks it Error."
    )
    shutdown_grace: float = Field(
        30.0,
        ge=0,
        description="Seconds a SIGTERM gives the job in hand to finish; past that it stops at "
        "its next step and goes back to the queue (not counted as an attempt), and the "
        "process exits. Set the orchestrator's grace period a few seconds above it.",
    )
    unserved_timeout: float = Field(
        600.0,
        gt=0,
        description="Seconds a queued job waits for a model no live worker serves before it "
        "ends Error (model_unavailable).",
    )
    worker_mode: Literal["process", "thread"] = Field(
        "process",
        description="Run each model's worker in its own process (survives crashes) or in a "
        "thread of the server process.",
    )
    load_models: Literal["start", "on-demand"] = Field(
        "start",
        description="Load every model when the worker starts, or each one when its first "
        "job arrives (on-demand: a quick start, a slow first job per model).",
    )
    max_batch_size: int = Field(
        4,
        ge=1,
        le=64,
        description="Run up to this many queued single-image text-to-image jobs that share "
        "model, size, steps, guidance and tier as one batch (1: one job at a time). The "
        "default is 1 under the 24gb/16gb/12gb memory presets.",
    )
    max_batch_wait_ms: float = Field(
        0.0,
        ge=0,
        description="How long a job may wait after it was queued for others to fill its "
        "batch (0: batch only what is already queued).",
    )
    prompt_cache_mb: int = Field(
        256,
        ge=0,
        description="Device memory (MB) for cached prompt embeddings: a repeated prompt skips "
        "the text encoders. 0 turns the cache off.",
    )
    auth: Literal["auto", "required", "off"] = Field(
        "auto",
        description="API keys: required (every request needs a key made with `fluxserve keys "
        "create`), off, or auto (required when --host is not a loopback address).",
    )
    ultra_megapixels: float = Field(
        2.0,
        ge=0.25,
        le=4.0,
        description="Size of /v1/flux-pro-1.1-ultra's images on a FLUX.1 model, in megapixels "
        "(FLUX.1 degrades past about 2); a FLUX.2 model makes 4.",
    )
    lora_dir: Path | None = Field(
        None, description="A directory of .safetensors LoRAs a request may name by file name."
    )
    allow_lora_urls: bool = Field(
        True, description="Take LoRAs by http(s) URL (--no-allow-lora-urls: registered only)."
    )
    allow_hub_loras: bool = Field(
        True, description="Take LoRAs by Hugging Face repo id (owner/name[:file.safetensors])."
    )
    lora_cache_gb: float = Field(
        20.0, gt=0, description="Disk space for downloaded LoRAs on each worker host (LRU)."
    )
    max_loaded_loras: int = Field(
        4, ge=1, le=64, description="LoRAs kept loaded on each worker's GPU (LRU)."
    )
    max_lora_bytes: int = Field(
        2 * 1024**3, ge=1024, description="The largest LoRA file fetched, in bytes."
    )
    max_images_per_request: int = Field(
        10,
        ge=1,
        le=MAX_IMAGES_CAP,
        description="Images one request may ask for (fal's num_images, OpenAI's n), made as "
        "one batch; a request still counts as one active task.",
    )
    max_prompt_chars: int = Field(
        10_000,
        ge=1,
        description="Longest prompt a request may send, in characters, on every dialect; "
        "longer ones are refused (422, OpenAI 400) before anything is stored.",
    )
    max_queue: int = Field(
        1000,
        ge=1,
        description="Queued jobs the server holds at most; past it submits get 503 with "
        "Retry-After.",
    )
    tier: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["lossless"],
        description="Optimisation tier: lossless (bf16, fused QKV, best attention kernel, "
        "compiled on CUDA), fp8 (+ FP8 linear layers, on GPUs with FP8 tensor cores) or cache "
        "(+ a step cache). TIER for every model, or MODEL=TIER for one (repeat the flag). "
        "fal's acceleration asks for a lower tier per request.",
    )
    compile: Literal["auto", "on", "off"] = Field(
        "auto",
        description="torch.compile the transformer (regionally) and the VAE decoder: auto "
        "compiles on CUDA only, where it pays for its warm-up.",
    )
    cuda_graphs: bool = Field(
        False,
        description="Replay the compiled transformer blocks as CUDA graphs (torch.compile's "
        "reduce-overhead mode; CUDA with --compile, not with the cache tier's step cache). "
        "Not yet measured: off by default.",
    )
    step_cache_threshold: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="The cache tier's First-Block cache threshold: higher skips more steps "
        "and changes images more.",
    )
    warmup: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["auto"],
        description="Sizes (WxH, comma-separated) each model generates once at start, so "
        "compilation happens before the first job: auto (each model's default size when "
        "compiling), off, or a list such as 1024x1024,768x1344.",
    )
    memory_preset: Literal["auto", "none", "80gb", "24gb", "16gb", "12gb"] = Field(
        "auto",
        description="Fit the models in a GPU's memory: 80gb (all on the GPU), 24gb, 16gb or "
        "12gb (quantised transformer, offloaded text encoders), none, or auto (from the GPU's "
        "size).",
    )
    job_retention: float = Field(
        86400.0,
        gt=0,
        description="Seconds a finished job is kept, with its result and input images, "
        "before it is deleted.",
    )
    allow_private_urls: bool = Field(
        False,
        description="Let image and webhook URLs point at loopback, private and link-local "
        "addresses (refused by default: a server-side request forgery guard).",
    )
    max_image_bytes: int = Field(
        20 * 1024 * 1024, ge=1024, description="Largest input image file, in bytes."
    )
    max_image_pixels: int = Field(
        20_000_000, ge=4096, description="Largest input image, in pixels (width x height)."
    )
    min_image_side: int = Field(64, ge=16, description="Smallest input image side, in pixels.")
    blocked_terms: str = Field(
        "default",
        description="Prompt terms to refuse: 'default' (the shipped list), 'off', or a file "
        "with one term or /regex/ per line (case-insensitive, on word boundaries).",
    )
    image_checker: str = Field(
        "auto",
        description="NSFW image classifier for input and output images: a Hugging Face repo "
        "id or local directory, 'off', or 'auto' (Falconsai/nsfw_image_detection when a model "
        "with real weights is loaded, off when only the tiny test models are).",
    )
    prompt_classifier: str = Field(
        "off",
        description="Optional text-classification model (repo id or directory) that checks "
        "prompts after the term list; 'off' by default.",
    )
    max_safety_tolerance: int = Field(
        2,
        ge=0,
        le=6,
        description="The most permissive safety_tolerance a client may ask for (0 strictest, "
        "6 most permissive); higher requests are lowered to it, and the job says so.",
    )
    prompt_upsampler: str | None = Field(
        None,
        description="What rewrites prompts for prompt_upsampling / enhance_prompt: an "
        "OpenAI-compatible base URL (http://host:port/v1: vLLM, llama.cpp, Ollama) or a "
        "transformers causal LM (repo id or directory). Unset: prompts are used as sent.",
    )
    prompt_upsampler_model: str | None = Field(
        None, description="The model name sent to an OpenAI-compatible --prompt-upsampler."
    )
    prompt_upsampler_timeout: float = Field(
        20.0, gt=0, description="Seconds to wait for a prompt rewrite before using the original."
    )
    watermark: bool = Field(
        False,
        description="Embed an invisible watermark in every output (invisible-watermark's "
        "DWT-DCT, as BFL's reference code does; needs pip install 'fluxserve[watermark]').",
    )
    c2pa_cert: Path | None = Field(
        None,
        description="PEM certificate chain to sign a C2PA manifest into every output with "
        "(needs --c2pa-key and pip install 'fluxserve[c2pa]').",
    )
    c2pa_key: Path | None = Field(None, description="PEM private key of --c2pa-cert.")
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        "info", description="Logging level: debug, info, warning, error, critical."
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="Log lines as text, or as JSON objects, one per line (time, level, "
        "logger, message and the job_id of lines about a job), for a log collector.",
    )
    webhook_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds a webhook receiver has to answer one delivery attempt (each of "
        "connect, send and answer) before it is retried.",
    )
    webhook_retry_window: float = Field(
        3600.0,
        ge=0,
        description="Seconds after a job's end during which a failing webhook delivery is "
        "retried (1 s, 5 s, 30 s, 2 min, then every 10 min); after it the delivery fails.",
    )

    _split_model = field_validator(
        "model", "alias", "tier", "warmup", "allowed_hosts", mode="before"
    )(_split_list)

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower_level(cls, level: object) -> object:
        return level.lower() if isinstance(level, str) else level

    @field_validator("alias")
    @classmethod
    def _check_alias(cls, aliases: list[str]) -> list[str]:
        for item in aliases:
            name, sep, target = item.partition("=")
            if not sep or not name.strip() or not target.strip():
                raise ValueError(f"alias {item!r} must look like NAME=MODEL")
        return aliases

    @field_validator("tier")
    @classmethod
    def _check_tier(cls, items: list[str]) -> list[str]:
        from fluxserve.runtime.tiers import Tier  # torch-free

        allowed = {tier.value for tier in Tier}
        for item in items:
            if item.rpartition("=")[2].strip() not in allowed:
                raise ValueError(
                    f"tier {item!r} must be TIER or MODEL=TIER, TIER one of {', '.join(allowed)}"
                )
        return items

    @field_validator("warmup")
    @classmethod
    def _check_warmup(cls, sizes: list[str]) -> list[str]:
        for size in sizes:
            if size in ("auto", "off"):
                continue
            width, sep, height = size.partition("x")
            if not (sep and width.isdigit() and height.isdigit()) or not (
                64 <= int(width) <= 4096 and 64 <= int(height) <= 4096
            ):
                raise ValueError(
                    f"warmup size {size!r} must be WxH with sides of 64 to 4096 (e.g. "
                    "1024x1024), auto or off"
                )
        return sizes

    @field_validator("database")
    @classmethod
    def _check_database(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("postgresql://", "postgres://", "postgresql+")):
            raise ValueError("--database takes a PostgreSQL URL: postgresql://user@host/db")
        return url

    @field_validator("storage")
    @classmethod
    def _check_storage(cls, url: str | None) -> str | None:
        if url is not None and (not url.startswith("s3://") or len(url) <= len("s3://")):
            raise ValueError("--storage takes an S3 URL: s3://bucket or s3://bucket/prefix")
        return url

    @model_validator(mode="after")
    def _check_presign_lifetime(self) -> Settings:
        if self.storage and self.result_url_ttl > S3_MAX_PRESIGN_SECONDS:
            raise ValueError(
                f"--result-url-ttl is at most {S3_MAX_PRESIGN_SECONDS} s (7 days) with "
                "--storage s3://...: S3 refuses longer presigned URLs"
            )
        return self

    @model_validator(mode="after")
    def _check_c2pa(self) -> Settings:
        if (self.c2pa_cert is None) != (self.c2pa_key is None):
            raise ValueError("--c2pa-cert and --c2pa-key go together: give both or neither")
        for path in (self.c2pa_cert, self.c2pa_key):
            if path is not None and not path.is_file():
                raise ValueError(f"C2PA file {path} does not exist")
        return self

    @model_validator(mode="after")
    def _check_tls(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together: give both or neither")
        for path in (self.tls_cert, self.tls_key):
            if path is not None and not path.is_file():
                raise ValueError(f"TLS file {path} does not exist")
        if self.tls_cert is not None:
            try:  # fail now, in one line, rather than after the models have loaded
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                    self.tls_cert, self.tls_key
                )
            except (ssl.SSLError, OSError) as exc:
                raise ValueError(
                    f"--tls-cert {self.tls_cert} and --tls-key {self.tls_key} are not a PEM "
                    f"certificate chain and its private key ({exc})"
                ) from None
        return self

    @property
    def alias_map(self) -> dict[str, str]:
        pairs = (item.partition("=") for item in self.alias)
        return {name.strip(): target.strip() for name, _, target in pairs}

    @property
    def image_limits(self):  # -> imageinput.ImageLimits (imported late: config is a leaf)
        from fluxserve.images.inputs import ImageLimits

        return ImageLimits(self.max_image_bytes, self.max_image_pixels, self.min_image_side)

    @property
    def url_policy(self):  # -> imageinput.UrlPolicy
        from fluxserve.addresses import UrlPolicy

        return UrlPolicy(allow_private=self.allow_private_urls)

    @property
    def database_path(self) -> Path:
        return self.data_dir / "jobs.sqlite3"

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def auth_required(self) -> bool:
        """Keys are required unless --auth off, or --auth auto on a loopback address."""
        if self.auth != "auto":
            return self.auth == "required"
        return not self.loopback_host

    @property
    def loopback_host(self) -> bool:
        """Whether --host is reachable from this machine only."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # a host name: it may resolve to anything
            return False

    @property
    def compile_cache_dir(self) -> Path:
        return self.data_dir / "compile-cache"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"
