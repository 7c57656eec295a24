"""Where an extra file's contents come from: inline text, base64, or an object in S3."""

from __future__ import annotations

from typing import Any

from pydantic import field_validator

from serializer.s3.uri import parse_s3_uri

from .base import Strict


class ExtraText(Strict):
    text: str


class ExtraBase64(Strict):
    base64: str


class ExtraURI(Strict):
    uri: str

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        parse_s3_uri(v)
        return v


ExtraSource = str | ExtraText | ExtraBase64 | ExtraURI


def dump_source(source: ExtraSource) -> Any:
    """An extra-file source as the spec's JSON holds it."""
    return source if isinstance(source, str) else source.model_dump()
