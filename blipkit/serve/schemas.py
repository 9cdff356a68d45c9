"""The JSON bodies of blipkit's own routes, as pydantic models: they validate requests (422 naming the field) and
write the OpenAPI document. Multipart form fields are read into the same models."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

MAX_NEW_TOKENS = 512
MAX_BEAMS = 16
MAX_TEXTS = 1024  # per request, to match or embed (each text is also held to --max-text-chars)

# A JSON image is base64 or a data: URL (an http(s) URL where the server allows its domain); a multipart upload
# arrives as its bytes.
ImageRef = Annotated[
    str | bytes,
    WithJsonSchema({"type": "string", "description": "base64 image bytes, a data: URL, or an allowed http(s) URL"}),
]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str | None = Field(None, description="a loaded model's name (default: the first that serves the route)")


class Generation(Body):
    """``generate``'s settings, each as pipeline() takes it; ``seed`` makes sampling reproducible."""

    max_new_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    min_new_tokens: int | None = Field(None, ge=0, le=MAX_NEW_TOKENS)
    num_beams: int | None = Field(None, ge=1, le=MAX_BEAMS)
    num_return_sequences: int | None = Field(None, ge=1, le=MAX_BEAMS)
    do_sample: bool | None = None
    temperature: float | None = Field(None, gt=0, le=100)
    top_k: int | None = Field(None, ge=0, le=100_000)
    top_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, le=100)
    length_penalty: float | None = Field(None, ge=-100, le=100)
    no_repeat_ngram_size: int | None = Field(None, ge=0, le=MAX_NEW_TOKENS)
    early_stopping: bool | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="with do_sample: the same seed, the same text")

    def generate_options(self) -> dict[str, Any]:
        """The settings given, as ``generate`` keywords."""
        return self.model_dump(include=set(Generation.model_fields) - {"model", "seed"}, exclude_none=True)


class SearchRequest(BaseModel):
    """A search of a loaded index (``blipkit serve --index DIR``) by a text or an image."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    index: str | None = Field(None, description="a loaded index's name (default: the first)")
    text: str | None = Field(None, description="text -> images (or texts)")
    image: ImageRef | None = Field(None, description="image -> images, or -> texts over a text index")
    k: int = Field(10, ge=1, le=1000, description="how many results, best first")
    rerank: int = Field(0, ge=0, le=1000, description="re-score the best K by ITM (BLIP's match logit + ITC)")
    where: str | None = Field(None, description="a SQL filter over the rows' columns, e.g. \"path LIKE '%/2023/%'\"")

    @model_validator(mode="after")
    def _one_query(self) -> SearchRequest:
        if (self.text is None) == (self.image is None):
            raise ValueError("give text or image, one of them")
        return self


class CaptionRequest(Generation):
    images: list[ImageRef] = Field(min_length=1)
    prompt: str | None = Field(None, description='text the caption continues, e.g. "a picture of"')


class VqaRequest(Generation):
    images: list[ImageRef] = Field(min_length=1)
    question: str | None = Field(None, description="one question for every image")
    questions: list[str] | None = Field(None, description="one question per image")

    @model_validator(mode="after")
    def _one_question_per_image(self) -> VqaRequest:
        if (self.question is None) == (self.questions is None):
            raise ValueError("give question (one for every image) or questions (one per image)")
        if self.questions is not None and len(self.questions) != len(self.images):
            raise ValueError(f"got {len(self.images)} images but {len(self.questions)} questions")
        return self

    def asked(self) -> list[str]:
        return self.questions if self.questions is not None else [self.question] * len(self.images)


class MatchRequest(Body):
    image: ImageRef
    texts: list[str] = Field(min_length=1, max_length=MAX_TEXTS)


class EmbeddingsRequest(Body):
    images: list[ImageRef] | None = Field(None, min_length=1)
    texts: list[str] | None = Field(None, min_length=1, max_length=MAX_TEXTS)

    @model_validator(mode="after")
    def _something_to_embed(self) -> EmbeddingsRequest:
        if self.images is None and self.texts is None:
            raise ValueError("give images, texts or both")
        return self
