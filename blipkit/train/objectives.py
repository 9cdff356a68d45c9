"""What each task trains for, as BLIP and BLIP-2 train it: an ``nn.Module`` around the model whose ``forward`` takes a
``Batch``'s tensors and returns the loss summed over the batch's units (``Batch.units``).

Sums, not means: the trainer divides by the units of the whole optimizer step over every process, so that one process
with a batch of 2N and two processes with N each take the same step. Wrapping the objective, not the model, is also
what lets DistributedDataParallel see every model call (they all run inside ``forward``).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from blipkit.train.batches import IGNORED

LABEL_SMOOTHING = 0.1  # BLIP's caption and answer decoders train with it; BLIP-2's language models without


def token_loss(logits: torch.Tensor, labels: torch.Tensor, smoothing: float, shifted: bool = True) -> torch.Tensor:
    """Cross-entropy summed over the labelled tokens; ``shifted``: logits at t predict labels at t + 1."""
    if shifted:
        logits, labels = logits[:, :-1], labels[:, 1:]
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        labels.reshape(-1),
        ignore_index=IGNORED,
        reduction="sum",
        label_smoothing=smoothing,
    )


class Objective(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, **tensors: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError


class CaptionObjective(Objective):
    """The language modelling loss on the target text (a caption, or BLIP-2's answer), the prompt masked."""

    def forward(self, pixel_values, input_ids, attention_mask, labels):
        model = self.model
        if not hasattr(model, "qformer"):  # BLIP: the caption decoder reads the image
            logits = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask).logits
            loss = token_loss(logits, labels, LABEL_SMOOTHING)
        elif model.config.use_decoder_only_language_model:  # OPT: logits for the query outputs, then the text
            logits = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask).logits
            loss = token_loss(logits[:, -labels.shape[1] :], labels, 0.0)
        else:  # T5: the decoder reads the labels shifted right; its logits line up with them
            out = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask, labels=labels)
            loss = token_loss(out.logits, labels, 0.0, shifted=False)
        return loss, {"lm": float(loss.detach())}


class AnswerObjective(Objective):
    """BLIP's VQA loss: each distinct answer decoded against its question (as the image-grounded encoder read it),
    weighted by the share of annotators who gave it, summed per question."""

    def forward(self, pixel_values, input_ids, attention_mask, answer_ids, answer_mask, labels, answer_weights,
                question_of):  # fmt: skip
        model = self.model
        _, questions = model.encode_question(input_ids, pixel_values, attention_mask)
        logits = model.text_decoder(
            input_ids=answer_ids,
            attention_mask=answer_mask,
            encoder_hidden_states=questions[question_of],
            encoder_attention_mask=attention_mask[question_of],  # BLIP trains with the question's own padding masked
        ).logits
        per_token = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
            labels[:, 1:].reshape(-1),
            ignore_index=IGNORED,
            reduction="none",
            label_smoothing=LABEL_SMOOTHING,
        )
        per_answer = per_token.view(len(labels), -1).sum(1)
        loss = (per_answer * answer_weights).sum()
        return loss, {"answer": float(loss.detach())}


class RetrievalObjective(Objective):
    """BLIP's retrieval fine-tuning: image-text contrastive (ITC) plus image-text matching (ITM) on hard negatives.

    ITC: cosine similarities over a learned temperature against every text and image of the batch (gathered from all
    processes), captions of the same image all counted as positives. With ``momentum``, BLIP's momentum encoders
    (an exponential moving average of the encoders) give the targets, mixed with the ground truth by ``alpha``
    (distillation), and queues of their past features serve as extra negatives. ITM: each pair, plus for each image a
    text and for each text an image drawn by their similarity among the non-matching ones (hard negatives), classified
    by the ITM head; the loss per pair as BLIP averages it over its three pairs.
    """

    def __init__(
        self, model: nn.Module, momentum: float = 0.0, queue_size: int = 0, alpha: float = 0.4, temperature=0.07
    ) -> None:
        super().__init__(model)
        # BLIP learns the temperature; the reference's retrieval checkpoint has no slot for it, so it lives here
        # (saved with the trainer's state).
        self.temperature = nn.Parameter(torch.tensor(float(temperature)))
        self.momentum, self.alpha = momentum, alpha
        if momentum:
            self.momentum_model = copy.deepcopy(model).requires_grad_(False)
            dim = model.config.image_text_hidden_size
            self.register_buffer("image_queue", F.normalize(torch.randn(queue_size, dim), dim=1))
            self.register_buffer("text_queue", F.normalize(torch.randn(queue_size, dim), dim=1))
            self.register_buffer("id_queue", torch.full((queue_size,), -1, dtype=torch.long))
            self.register_buffer("queue_at", torch.zeros((), dtype=torch.long))

    def forward(self, pixel_values, input_ids, attention_mask, image_ids):
        model = self.model
        with torch.no_grad():
            self.temperature.clamp_(0.001, 0.5)
        image_tokens, image_features = model.read_images(pixel_values)
        text_features = model.get_text_features(input_ids, attention_mask)
        ids = image_ids
        all_images, all_texts, all_ids = gather(image_features), gather(text_features), gather(ids)
        if self.momentum:
            targets_i2t, targets_t2i, all_images, all_texts, all_ids = self._distilled(
                pixel_values, input_ids, attention_mask, ids, all_images, all_texts, all_ids
            )
        else:
            positives = (ids[:, None] == all_ids[None]).float()
            targets_i2t = targets_t2i = positives / positives.sum(1, keepdim=True)
        i2t = image_features @ all_texts.t() / self.temperature
        t2i = text_features @ all_images.t() / self.temperature
        itc = -((F.log_softmax(i2t, 1) * targets_i2t).sum(1) + (F.log_softmax(t2i, 1) * targets_t2i).sum(1)).sum() / 2
        itm = self._matching(image_tokens, image_features, text_features, input_ids, attention_mask, image_ids)
        return itc + itm, {"itc": float(itc.detach()), "itm": float(itm.detach())}

    def _matching(self, image_tokens, image_features, text_features, input_ids, attention_mask, image_ids):
        batch = len(image_ids)
        with torch.no_grad():  # hard negatives: drawn by similarity among the other images' pairs
            same = image_ids[:, None] == image_ids[None]
            similarity = (image_features @ text_features.t() / self.temperature).float()
            weights_i2t = F.softmax(similarity, 1).masked_fill(same, 0)
            weights_t2i = F.softmax(similarity.t(), 1).masked_fill(same, 0)
            has_negative = (~same).any(1)
        rows = torch.arange(batch, device=image_ids.device)[has_negative]
        negative_texts = torch.multinomial(weights_i2t[has_negative], 1).squeeze(1)
        negative_images = torch.multinomial(weights_t2i[has_negative], 1).squeeze(1)
        tokens = torch.cat([image_tokens, image_tokens[negative_images], image_tokens[rows]])
        ids = torch.cat([input_ids, input_ids[rows], input_ids[negative_texts]])
        mask = torch.cat([attention_mask, attention_mask[rows], attention_mask[negative_texts]])
        labels = torch.cat([torch.ones(batch), torch.zeros(2 * len(rows))]).long().to(ids.device)
        logits = self.model.match_logits(tokens, ids, mask)
        return F.cross_entropy(logits.float(), labels, reduction="sum") * batch / len(labels)

    @torch.no_grad()
    def _distilled(self, pixel_values, input_ids, attention_mask, ids, all_images, all_texts, all_ids):
        """BLIP's momentum distillation: the momentum encoders' similarities (over the batch and the queues) as soft
        targets mixed with the ground truth; their features join the queues."""
        for own, average in zip(self.model.parameters(), self.momentum_model.parameters(), strict=True):
            average.mul_(self.momentum).add_(own.detach(), alpha=1 - self.momentum)
        _, images_m = self.momentum_model.read_images(pixel_values)
        texts_m = self.momentum_model.get_text_features(input_ids, attention_mask)
        all_images_m, all_texts_m = gather(images_m), gather(texts_m)
        queued = self.id_queue >= 0
        bank_images = torch.cat([all_images_m, self.image_queue[queued]])
        bank_texts = torch.cat([all_texts_m, self.text_queue[queued]])
        bank_ids = torch.cat([all_ids, self.id_queue[queued]])
        positives = (ids[:, None] == bank_ids[None]).float()
        truth = positives / positives.sum(1, keepdim=True)
        soft_i2t = F.softmax(images_m @ bank_texts.t() / self.temperature, 1)
        soft_t2i = F.softmax(texts_m @ bank_images.t() / self.temperature, 1)
        targets_i2t = self.alpha * soft_i2t + (1 - self.alpha) * truth
        targets_t2i = self.alpha * soft_t2i + (1 - self.alpha) * truth
        self._enqueue(all_images_m, all_texts_m, all_ids)
        # The online features are scored against the momentum bank, as BLIP does.
        return targets_i2t, targets_t2i, bank_images, bank_texts, bank_ids

    def _enqueue(self, images: torch.Tensor, texts: torch.Tensor, ids: torch.Tensor) -> None:
        size, at = len(self.id_queue), int(self.queue_at)
        slots = (torch.arange(len(ids)) + at) % size
        self.image_queue[slots], self.text_queue[slots], self.id_queue[slots] = images, texts, ids
        self.queue_at.fill_((at + len(ids)) % size)


def gather(t: torch.Tensor) -> torch.Tensor:
    """``t`` from every process, concatenated in rank order, gradients flowing back to each process's own part."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return t
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(t))
