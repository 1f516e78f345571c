"""The JSON body of POST /v1/generate, parsed strictly and turned into a GenerationRequest."""

from __future__ import annotations

import base64
import binascii

from pydantic import BaseModel, ConfigDict, Field

from difftrain.config import ConfigError
from difftrain.pipeline.request import GenerationRequest


class GenerateBody(BaseModel):
    """Everything a client may ask for. Unknown keys, wrong types, NaN and ∞ are refused."""

    # strict: "5" is not 5 and true is not 1; JSON arrays still fill tuples.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    num: int = Field(1, ge=1, le=2**31)
    seed: int = Field(0, ge=0, le=2**62)
    first_index: int = Field(0, ge=0, le=2**62)
    class_label: int | None = Field(None, ge=-(2**31), le=2**31)
    prompt: str | None = Field(None, max_length=100_000)
    negative_prompt: str | None = Field(None, max_length=100_000)
    sampler: str | None = Field(None, max_length=64)
    steps: int | None = Field(None, ge=1, le=2**31)
    schedule: str | None = Field(None, max_length=64)
    guidance: float | None = Field(None, ge=0, le=1e6)
    guidance_interval: tuple[float, float] | None = None
    eta: float | None = Field(None, ge=0, le=1)
    s_churn: float | None = Field(None, ge=0, le=1e6)
    init_image: str | None = Field(None, description="base64 image file (PNG, JPEG, ...)")
    mask: str | None = Field(None, description="base64 mask image, the init image's size")
    strength: float | None = Field(None, ge=0, le=1)
    resample: int = Field(1, ge=1, le=2**31)
    size: int | None = Field(None, ge=1, le=2**31)

    def to_request(self) -> GenerationRequest:
        """The pipeline's request; images arrive as bytes (a client never names a server file)."""
        fields = self.model_dump(exclude={"init_image", "mask"})
        return GenerationRequest(
            **fields, init_image=_b64(self.init_image, "init_image"), mask=_b64(self.mask, "mask")
        )


def _b64(text: str | None, name: str) -> bytes | None:
    if text is None:
        return None
    if text.startswith("data:") and "," in text:  # a data: URL from a browser's FileReader
        text = text.split(",", 1)[1]
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{name}: not valid base64") from None
    if not data:
        raise ConfigError(f"{name}: empty")
    return data
