"""What every part of a spec shares: strict JSON types."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """A spec model: JSON types held strictly, unknown fields refused."""

    # Strict types: JSON's true is not 1, "5" is not 5; no infinities or NaNs.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)
