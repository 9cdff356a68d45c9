"""Training examples as model inputs, a micro-batch at a time, as BLIP and BLIP-2 train on them: captions cleaned
and tokenized after their prompt, answers weighted by how many annotators gave them, labels -100 wherever no loss is
taken (the prompt, padding, image placeholders). A bad image is skipped and reported, never fatal.

Texts are padded on the right here, whatever the tokenizer's side, so that a row's labels line up with its tokens.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from blipkit.evaluate.retrieval import pre_caption
from blipkit.processing.image import load_image
from blipkit.tasks import LoadedTask
from blipkit.train.data import Example, Skipped

IGNORED = -100  # labels the loss skips
MAX_CAPTION_WORDS = 30  # BLIP's pre_caption limit for training captions
MAX_TEXT_TOKENS = 40  # BLIP's caption decoder sequence length in training (prompt included)


@dataclass
class Batch:
    """One micro-batch: the examples kept, the tensors the task's loss reads, and ``units`` - what the loss is an
    average over (label tokens for captions, questions for VQA, pairs for retrieval), summed over all devices and
    micro-batches of an optimizer step so that any split of the data gives the same update."""

    examples: list[Example]
    tensors: dict[str, torch.Tensor]
    units: int
    skipped: list[Skipped] = field(default_factory=list)

    def to(self, device: torch.device, dtype: torch.dtype) -> Batch:
        moved = {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in self.tensors.items()}
        return Batch(self.examples, moved, self.units, self.skipped)


def image_identity(image: str | bytes) -> int:
    """The same number for the same image in any batch, on any process, in any run (a 56-bit hash of its path or
    bytes): retrieval counts captions of one image as positives, also across the momentum queues."""
    data = image.encode() if isinstance(image, str) else bytes(image)
    return int.from_bytes(hashlib.blake2b(data, digest_size=7).digest(), "big")


class Collator:
    """Builds ``Batch``es for one task on one loaded model (BLIP or BLIP-2)."""

    def __init__(self, loaded: LoadedTask, task: str, prompt: str = "") -> None:
        self.loaded = loaded
        self.task = task
        self.prompt = prompt
        self.tokenizer = loaded.processor.tokenizer
        self.blip2 = hasattr(loaded.model, "qformer")
        self.decoder_only = self.blip2 and loaded.model.config.use_decoder_only_language_model

    def __call__(self, examples: list[Example]) -> Batch:
        kept, arrays, skipped = [], [], []
        for example in examples:
            try:
                arrays.append(self.loaded.image_array(load_image(example.image)))
            except Exception as error:  # a bad image is a skipped row; training goes on
                skipped.append(Skipped(example.id, f"cannot read its image: {error}"))
                continue
            kept.append(example)
        if not kept:
            return Batch([], {}, 0, skipped)
        pixels = torch.from_numpy(np.stack(arrays))
        if self.task == "retrieval":
            tensors, units = self._retrieval(kept)
        elif self.blip2:
            tensors, units = self._prompted(kept)
        elif self.task == "vqa":
            tensors, units = self._answers(kept)
        else:
            tensors, units = self._captions(kept)
        return Batch(kept, {"pixel_values": pixels, **tensors}, units, skipped)

    # ------------------------------------------------------------------------------------------------ BLIP
    def _captions(self, examples: list[Example]) -> tuple[dict[str, torch.Tensor], int]:
        """BLIP's captioning: [DEC] prompt caption [SEP], the loss on the caption and [SEP] only."""
        prompt_tokens = len(self._ids(self.prompt)) - 1  # [CLS] and the prompt, without its [SEP]
        rows = [self._ids(self.prompt + pre_caption(e.caption, MAX_CAPTION_WORDS))[:MAX_TEXT_TOKENS] for e in examples]
        ids, mask = self._padded(rows)
        ids[:, 0] = self.loaded.model.config.text_config.bos_token_id
        labels = ids.masked_fill(mask == 0, IGNORED)
        labels[:, :prompt_tokens] = IGNORED
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}, int((labels[:, 1:] != IGNORED).sum())

    def _answers(self, examples: list[Example]) -> tuple[dict[str, torch.Tensor], int]:
        """BLIP's VQA: each question once, each of its distinct answers decoded against it, weighted by its share
        of the annotators' answers; the loss averages over questions."""
        questions, question_mask = self._padded([self._ids(e.question) for e in examples])
        answers, weights, question_of = [], [], []
        for index, example in enumerate(examples):
            counts = Counter(a.strip().lower() for a in example.answers)
            for answer, count in counts.items():
                answers.append(self._ids(answer))
                weights.append(count / sum(counts.values()))
                question_of.append(index)
        answer_ids, answer_mask = self._padded(answers)
        answer_ids[:, 0] = self.loaded.model.config.text_config.bos_token_id
        return {
            "input_ids": questions,
            "attention_mask": question_mask,
            "answer_ids": answer_ids,
            "answer_mask": answer_mask,
            "labels": answer_ids.masked_fill(answer_mask == 0, IGNORED),
            "answer_weights": torch.tensor(weights),
            "question_of": torch.tensor(question_of),
        }, len(examples)

    def _retrieval(self, examples: list[Example]) -> tuple[dict[str, torch.Tensor], int]:
        """Captions for ITC and ITM, and each example's image identity: captions of one image are all positives."""
        ids, mask = self._padded([self._ids(pre_caption(e.caption, MAX_CAPTION_WORDS))[:35] for e in examples])
        image_ids = torch.tensor([image_identity(e.image) for e in examples])
        return {"input_ids": ids, "attention_mask": mask, "image_ids": image_ids}, len(examples)

    # ------------------------------------------------------------------------------------------------ BLIP-2
    def _prompted(self, examples: list[Example]) -> tuple[dict[str, torch.Tensor], int]:
        """BLIP-2: the language model writes the target (a caption, or the most given answer) after the prompt
        (the question in the task's template); OPT continues the prompt, T5 encodes it and decodes the target."""
        prompts, targets = [], []
        for example in examples:
            if self.task == "vqa":
                prompts.append(self.loaded.prompt_template.format(example.question))
                targets.append(Counter(example.answers).most_common(1)[0][0])
            else:
                prompts.append(self.prompt)
                targets.append(example.caption.strip())

        def encode(text: str) -> list[int]:
            return self.loaded.processor.encode_text(text, with_images=True, return_tensors=None)["input_ids"][0]

        if not self.decoder_only:
            ids, mask = self._padded([encode(p) for p in prompts])
            labels, _ = self._padded([self._ids(t) for t in targets], pad=IGNORED)
            return {"input_ids": ids, "attention_mask": mask, "labels": labels}, int((labels != IGNORED).sum())
        eos = self.tokenizer.eos_token_id
        rows = [encode(" ".join(filter(None, (p, t)))) + [eos] for p, t in zip(prompts, targets, strict=True)]
        ids, mask = self._padded(rows)
        labels = ids.masked_fill(mask == 0, IGNORED)
        for row, prompt in enumerate(prompts):
            labels[row, : len(encode(prompt))] = IGNORED  # the image placeholders, bos and the prompt
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}, int((labels[:, 1:] != IGNORED).sum())

    # ------------------------------------------------------------------------------------------------ tokens
    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text)["input_ids"]

    def _padded(self, rows: list[list[int]], pad: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows padded on the right to the longest, and their attention mask."""
        width = max(len(row) for row in rows)
        value = self.tokenizer.pad_token_id if pad is None else pad
        ids = torch.tensor([row + [value] * (width - len(row)) for row in rows], dtype=torch.long)
        mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows], dtype=torch.long)
        return ids, mask
