"""Request and response bodies of the HTTP API (they are the OpenAPI schema at /docs).

A clip arrives one of three ways: a multipart upload (field `clip`), base64 in a JSON body
(`clip_b64`), or a URI under an allowed prefix (`uri`). Bodies are strict (`extra="forbid"`) so a
misspelt field is a 422 naming it, not a silently ignored option.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ClipSource(_Strict):
    clip_b64: str | None = Field(None, description="the clip (mp4 bytes), base64")
    uri: str | None = Field(None, description="a clip URI under one of the allowed prefixes")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.clip_b64 is None) == (self.uri is None):
            raise ValueError("give exactly one of clip_b64 or uri")
        return self


class EmbedRequest(ClipSource):
    query: str | None = Field(None, description="optional query (stage-2 SFT prompt)")


class CaptionRequest(ClipSource):
    query: str | None = None


class ClassifyRequest(ClipSource):
    labels: list[str] = Field(min_length=1, description="candidate labels")
    query: str | None = None
    top_k: int | None = Field(None, ge=1)


class VQARequest(ClipSource):
    """Discriminative VQA: the question is the predictor's query (a stage-2 model only).

    With `candidates` the answer is the candidate nearest the predicted embedding; without,
    the Y-decoder writes it. Candidate limits (count, blank, duplicates) are the app's and are
    checked by the route, each a 422 with a reason."""

    question: str = Field(
        min_length=1, description="the question about the clip (the predictor's query)"
    )
    candidates: list[str] | None = Field(
        None,
        min_length=1,
        description="candidate answers, ranked by cosine with the predicted embedding; none: "
        "the answer is decoded (Y-decoder) from it",
    )

    @field_validator("question")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("question must not be empty or whitespace")
        return v


class StreamClipRequest(ClipSource):
    seq: int | None = Field(
        None, ge=0, description="index of this clip in the stream (ordering + idempotent retries)"
    )
    time_s: float | None = Field(None, ge=0, description="clip midpoint; default: running time")
    query: str | None = None


class EmbedResponse(BaseModel):
    embedding: list[float]
    dim: int
    query: str | None = None
    frames: int = Field(description="frames in the uploaded clip")
    duration_s: float


class CaptionResponse(BaseModel):
    caption: str
    duration_s: float


class LabelScore(BaseModel):
    label: str
    score: float


class ClassifyResponse(BaseModel):
    labels: list[LabelScore]


class CandidateScore(BaseModel):
    candidate: str
    score: float


class VQAResponse(BaseModel):
    answer: str = Field(description="the best candidate, or the decoded text without candidates")
    scores: list[CandidateScore] = Field(
        description="every candidate with its cosine score, best first; empty when decoded"
    )
    decoded: bool = Field(description="true: no candidates were given, the Y-decoder answered")
    question: str
    duration_s: float


class StreamEvent(BaseModel):
    event_id: int
    clip_index: int
    time_s: float
    start: int | float | None = None
    end: int | float | None = None
    caption: str | None = None
    status: str = Field(description="decoded | pending (the Decoder was unavailable; retried)")


class StreamClipResponse(BaseModel):
    stream_id: str
    clip_index: int
    time_s: float
    replayed: bool = Field(False, description="this seq was applied before; outcome replayed")
    events: list[StreamEvent] = Field(description="captions emitted by this clip")


class StreamEventsResponse(BaseModel):
    stream_id: str
    clips: int
    duration_s: float
    events: list[StreamEvent]


class DeleteResponse(BaseModel):
    stream_id: str
    deleted: bool


class ErrorResponse(BaseModel):
    error: str
    detail: str | list | dict = ""


ERRORS = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 409, 413, 415, 422, 429, 503)
}


def clip_body_openapi(model: type[BaseModel], form_fields: dict[str, dict]) -> dict:
    """openapi_extra for endpoints that read the body themselves (JSON or multipart)."""
    schema = model.model_json_schema()
    props = {"clip": {"type": "string", "format": "binary"}, **form_fields}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": schema},
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": props, "required": ["clip"]}
                },
            },
        }
    }
