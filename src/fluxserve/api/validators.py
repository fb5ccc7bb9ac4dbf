"""Field checks that every dialect's wire models share (the models themselves stay apart)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field
from pydantic_core import PydanticCustomError

from fluxserve.jobs.loras import LoraWanted
from fluxserve.lora.sources import MAX_LORAS


def _not_bool(value: Any) -> Any:
    # JSON true/false are not numbers, although pydantic's lax mode would take them as 1/0.
    if isinstance(value, bool):
        raise PydanticCustomError("number_type", "Input should be a number, not a boolean")
    return value


def valid_text(value: str) -> str:
    """Text that can be encoded (JSON lets a lone surrogate through; tokenizers choke)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PydanticCustomError(
            "string_unicode", "Input should be valid Unicode text (it holds a lone surrogate)"
        ) from None
    return value


def multiple_of(step: int) -> Callable[[int], int]:
    """A check that a size is a multiple of ``step``, naming the nearest valid value."""

    def check(value: int) -> int:
        if value % step:
            lower = value - value % step
            nearest = lower if value - lower < step / 2 else lower + step
            raise PydanticCustomError(
                "multiple_of",
                "Input should be a multiple of {multiple_of}; the nearest valid value is {nearest}",
                {"multiple_of": step, "nearest": nearest},
            )
        return value

    return check


# Put last in an Annotated, so it wraps the constrained number schema and pydantic still
# reports the bounds exactly (put first, 2**64-1 printed as a float).
NotBool = BeforeValidator(_not_bool)
ValidText = AfterValidator(valid_text)


class LoraWeight(BaseModel):
    """fal's ``{path, scale}`` (also OpenAI's ``loras`` extra field)."""

    path: str = Field(
        min_length=1,
        max_length=2083,
        description="A registered LoRA's name, a Hugging Face repo id (owner/name or "
        "owner/name:file.safetensors), or an http(s) URL of a .safetensors file.",
    )
    scale: Annotated[float, NotBool] = Field(1.0, description="-4 to 4; 0 leaves it out.")


LoraList = Annotated[list[LoraWeight], Field(max_length=MAX_LORAS)]


def lora_wants(loras: list[LoraWeight] | None, field_name: str = "loras") -> list[LoraWanted]:
    """A body's LoRAs as the submit path resolves them, each naming its field."""
    return [
        LoraWanted(f"{field_name}.{n}.path", lora.path, lora.scale, f"{field_name}.{n}.scale")
        for n, lora in enumerate(loras or [])
    ]
