"""Plain domain types shared by every layer: no torch, no HTTP."""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

MAX_SEED = 2**64 - 1


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REQUEST_MODERATED = "request_moderated"
    CONTENT_MODERATED = "content_moderated"

    @property
    def is_terminal(self) -> bool:
        return self not in (JobStatus.QUEUED, JobStatus.RUNNING)


class OutputFormat(StrEnum):
    JPEG = "jpeg"
    PNG = "png"
    WEBP = "webp"

    @property
    def content_type(self) -> str:
        return f"image/{self.value}"


class Task(StrEnum):
    """What a job does with its inputs; picks the pipeline in the runtime."""

    TEXT_TO_IMAGE = "text-to-image"
    IMAGE_TO_IMAGE = "image-to-image"  # a start image, noised to ``strength``, then denoised
    EDIT = "edit"  # Kontext, FLUX.2: reference images plus an instruction
    FILL = "fill"  # inpainting and outpainting: an image and a mask (white = repaint)


def random_seed() -> int:
    """A seed drawn uniformly from 0..2^64-1, like the hosted services hand out."""
    return secrets.randbits(64)


@dataclass(frozen=True)
class GenerationRequest:
    """What the runtime needs to make one image; built by a dialect's convert module."""

    model: str
    prompt: str
    width: int
    height: int
    steps: int
    guidance: float | None
    seed: int
    output_format: OutputFormat = OutputFormat.JPEG
    safety_tolerance: int = 2
    prompt_upsampling: bool = False
    endpoint: str = ""
    num_images: int = 1  # made as one batch, all from this seed's noise
    # fal's speed tier (none, regular, high); None: the tier its model was loaded at.
    acceleration: str | None = None
    # Delivery, not generation: answer with data: URIs rather than links (fal's sync_mode).
    inline_images: bool = False
    task: Task = Task.TEXT_TO_IMAGE
    strength: float | None = None  # image-to-image only: how far the start image is noised
    # Blob keys of the job's input images (stored with the job, so a retry finds them).
    input_keys: tuple[str, ...] = ()
    mask_key: str | None = None
    # (width, height) of each input image as stored (set by JobService.submit): part of an
    # edit's batch key, and BFL's input_mp.
    input_sizes: tuple[tuple[int, int], ...] = ()
    # What the dialect could not honour as asked (a size, a field); JobService.submit puts
    # these in the job's notes, so no documented field is dropped silently.
    notes: tuple[str, ...] = ()
    # LoRAs as (canonical source, scale), in order (lora/sources.py); () for none.
    loras: tuple[tuple[str, float], ...] = ()
    # Delivery, not generation: small previews of the image while it is made (BFL's
    # get_result ``preview``). Not in the batch key: a job that asks still shares a batch.
    previews: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["output_format"] = self.output_format.value
        data["task"] = self.task.value
        data["input_keys"] = list(self.input_keys)
        data["input_sizes"] = [list(size) for size in self.input_sizes]
        data["notes"] = list(self.notes)
        data["loras"] = [list(lora) for lora in self.loras]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationRequest:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["output_format"] = OutputFormat(values.get("output_format", "jpeg"))
        values["task"] = Task(values.get("task", Task.TEXT_TO_IMAGE.value))
        values["input_keys"] = tuple(values.get("input_keys", ()))
        values["notes"] = tuple(values.get("notes", ()))
        values["loras"] = tuple((str(s), float(w)) for s, w in values.get("loras", ()))
        values["input_sizes"] = tuple((int(w), int(h)) for w, h in values.get("input_sizes", ()))
        return cls(**values)

    @property
    def input_megapixels(self) -> float:
        return sum(w * h for w, h in self.input_sizes) / 1e6

    @property
    def batch_key(self) -> str:
        """Jobs with equal keys can run as one batch: same model, task, size, steps,
        guidance, strength, speed tier, image count, the count and sizes of the input
        images, and the LoRAs with their scales (prompts and seeds may differ)."""
        parts = [self.model, self.task.value, f"{self.width}x{self.height}", self.steps,
                 self.guidance, self.strength, self.acceleration, self.num_images]  # fmt: skip
        if self.input_sizes:  # absent before FLUX.2: older keys stay as they were
            parts.append(",".join(f"{w}x{h}" for w, h in self.input_sizes))
        if self.loras:  # only jobs with the same LoRAs and scales share a batch
            parts.append(self.lora_set_key)
        return "|".join(str(part) for part in parts)

    @property
    def lora_set_key(self) -> str:
        """The LoRAs and scales as the batch key's last part ("" without LoRAs); hashed,
        as sources may be long URLs and the key column is bounded."""
        if not self.loras:
            return ""
        loras = ",".join(f"{s}@{w:g}" for s, w in self.loras)
        return "lora:" + hashlib.sha256(loras.encode()).hexdigest()[:16]

    @property
    def blob_keys(self) -> list[str]:
        """The input blobs this request owns (deleted with its job)."""
        return [*self.input_keys, *([self.mask_key] if self.mask_key else [])]


@dataclass
class JobReport:
    """What the checks and the prompt rewrite said about a job; stored with it."""

    # One per check: {"point", "allowed", "category", "score", "checker", "tolerance"}.
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    prompt: str | None = None  # the prompt generated from, when upsampling rewrote it
    notes: list[str] = field(default_factory=list)  # e.g. "prompt upsampling unavailable"
    blocked_outputs: list[int] = field(default_factory=list)  # images replaced by black
    # One per LoRA: {"lora", "scale", "disk": cached|download, "gpu": loaded|load|hotswap}.
    loras: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> JobReport:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in known})


@dataclass(frozen=True)
class Webhook:
    """Where to announce a job's end: BFL's ``webhook_url`` / ``webhook_secret`` or fal's
    ``?fal_webhook=``; ``dialect`` picks the payload's shape."""

    url: str
    dialect: str  # "bfl" or "fal"
    secret: str | None = None
    # Where the submit reached this server: the base of the image URLs in the payload.
    base_url: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> Webhook | None:
        return cls(**data) if data else None


@dataclass
class Job:
    """One row of the job table: the queue entry and the system of record."""

    id: str
    request: GenerationRequest
    status: JobStatus = JobStatus.QUEUED
    seq: int | None = None
    progress: float = 0.0
    attempt: int = 0
    worker_id: str | None = None
    lease_expires_at: float | None = None
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    result_keys: list[str] = field(default_factory=list)
    error_code: str | None = None
    error_message: str | None = None
    cancel_requested: bool = False
    report: JobReport = field(default_factory=JobReport)
    owner: str = ""  # the id of the API key that made it; "" with --auth off
    idempotency_key: str | None = None
    batch_size: int | None = None  # how many jobs ran in its batch
    # While running, when its request asked for previews: {"image": data: URI, "step",
    # "steps"}, the latest; None before the first and once the job ended.
    preview: dict[str, Any] | None = None
    webhook: Webhook | None = None
    webhook_state: str | None = None  # pending, delivered or failed
    webhook_attempts: int = 0
    webhook_error: str | None = None

    @property
    def model(self) -> str:
        return self.request.model

    @property
    def effective_prompt(self) -> str:
        """The prompt the image was made from (the rewritten one after upsampling)."""
        return self.report.prompt or self.request.prompt
