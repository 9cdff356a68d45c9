"""Generation settings: the reference's names and defaults.

BLIP's reference generates through its inner text decoder, whose settings never come from a checkpoint's
generation_config.json; blipkit matches that, so a BLIP model's generation settings are its call arguments over
``model.generation_config`` (the reference's defaults unless changed in Python).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass
class GenerationConfig:
    """What ``generate`` does. Unset lengths resolve as the reference resolves them (20 new tokens)."""

    max_length: int | None = None
    max_new_tokens: int | None = None
    min_length: int = 0
    min_new_tokens: int | None = None
    do_sample: bool = False
    num_beams: int = 1
    num_return_sequences: int = 1
    temperature: float = 1.0
    top_k: int | None = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    no_repeat_ngram_size: int = 0
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    decoder_start_token_id: int | None = None  # encoder-decoder models (T5) start decoding from it

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        # generation_config.json files carry many other keys (transformers_version, ...): they do not apply here.
        return cls(**{k: v for k, v in data.items() if k in names and v is not None})

    def updated(self, **kwargs: Any) -> GenerationConfig:
        """A copy with ``kwargs`` applied; an unknown keyword is an error that names it."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(
                f"generate() got unknown arguments: {', '.join(unknown)}; known: {', '.join(sorted(names))}"
            )
        return dataclasses.replace(self, **{k: v for k, v in kwargs.items() if v is not None})

    def validate(self) -> None:
        def positive(name: str, value: Any) -> None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

        positive("num_beams", self.num_beams)
        positive("num_return_sequences", self.num_return_sequences)
        for name in ("max_length", "max_new_tokens"):
            if getattr(self, name) is not None:
                positive(name, getattr(self, name))
        if self.num_return_sequences > self.num_beams and self.num_beams > 1:
            raise ValueError(
                f"num_return_sequences ({self.num_return_sequences}) cannot exceed num_beams ({self.num_beams})"
            )
        if self.num_return_sequences > 1 and self.num_beams == 1 and not self.do_sample:
            raise ValueError("greedy search returns one sequence per input: set num_beams or do_sample=True")
        if self.do_sample and not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {self.temperature!r}")
        if not 0 <= self.top_p <= 1:
            raise ValueError(f"top_p must lie in [0, 1], got {self.top_p!r}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 0):
            raise ValueError(f"top_k must be a non-negative integer, got {self.top_k!r}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be positive, got {self.repetition_penalty!r}")
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        if self.pad_token_id is None:
            raise ValueError("generation needs a pad_token_id to fill finished rows")
