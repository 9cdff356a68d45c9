"""The decoding loops: greedy / sampling and beam search, each a prefill followed by one-token decode steps.

The model supplies a ``Decoder``: ``prefill`` reads the prompt and ``step`` each chosen token - given their positions
and the attention mask over everything so far, each returns the next-token logits; the decoder keeps its own KV
cache. Everything else - lengths, masks, positions,
logits processors, stopping, beams - is here, and follows the reference's ``generate`` token for token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F

from blipkit.generation import logits as lp
from blipkit.generation.cache import grown_capacity
from blipkit.generation.config import GenerationConfig

# One generator for all of a call's sampling, or one per prompt (see ``generate``); None: torch's global one.
Generators = torch.Generator | Sequence[torch.Generator] | None
NEG = -1.0e9  # the reference's score for "impossible" in beam search


class Decoder(Protocol):
    def prefill(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """(rows, prompt) ids, positions and mask -> (rows, vocab) logits of the prompt's last position."""
        ...

    def step(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(rows, 1) ids and positions, (rows, past + 1) mask -> (rows, vocab) logits of the new position."""
        ...

    def reorder(self, rows: torch.Tensor) -> None: ...


# A decoder for (rows per prompt, total length); rows of one prompt are consecutive.
DecoderFactory = Callable[[int, int], Decoder]


def generate(
    make_decoder: DecoderFactory,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    config: GenerationConfig,
    max_positions: int | None = None,
    generator: Generators = None,
) -> torch.Tensor:
    """Token ids (prompt included) for every prompt row: (rows * num_return_sequences, length). An empty prompt,
    (rows, 0), is an encoder-decoder's: each row starts from ``decoder_start_token_id`` (else ``bos_token_id``).

    ``generator``: one for all the sampling, or one per prompt row - each prompt's samples then come from its own
    generator alone, the same whatever other prompts share its batch."""
    config.validate()
    if isinstance(generator, Sequence) and len(generator) != input_ids.shape[0]:
        raise ValueError(f"{len(generator)} generators for {input_ids.shape[0]} prompts: give one per prompt, or one")
    if input_ids.shape[1] == 0:
        input_ids, attention_mask = _decoder_start(input_ids, config)
    eos = _eos_tensor(config.eos_token_id, input_ids.device)
    if attention_mask is None:
        attention_mask = _infer_attention_mask(input_ids, config.pad_token_id, eos)
    prompt_length = input_ids.shape[1]
    max_length = _max_length(config, prompt_length, max_positions)
    if max_positions is not None and max_length > max_positions:
        raise ValueError(
            f"generation would reach {max_length} tokens but the model has {max_positions} positions; "
            "lower max_length / max_new_tokens or shorten the prompt"
        )
    min_total = prompt_length + config.min_new_tokens if config.min_new_tokens else config.min_length

    expand = config.num_beams if config.num_beams > 1 else config.num_return_sequences
    input_ids = input_ids.repeat_interleave(expand, 0)
    attention_mask = attention_mask.repeat_interleave(expand, 0)
    process = _processors(config, attention_mask, eos, min_total)
    decoder = make_decoder(expand, max_length)
    if config.num_beams > 1:
        return _beam_search(decoder, input_ids, attention_mask, config, process, eos, max_length, generator)
    return _greedy_or_sample(decoder, input_ids, attention_mask, config, process, eos, max_length, generator)


def _greedy_or_sample(decoder, ids, mask, config, process, eos, max_length, generator) -> torch.Tensor:
    positions = _positions(mask)
    logits = decoder.prefill(ids, positions, mask)
    unfinished = torch.ones(ids.shape[0], dtype=torch.bool, device=ids.device)
    while True:
        scores = process(ids, logits.float())
        tokens = _draw(scores.softmax(-1), 1, generator).squeeze(1) if config.do_sample else scores.argmax(-1)
        if eos is not None:
            tokens = torch.where(unfinished, tokens, config.pad_token_id)
            unfinished &= ~torch.isin(tokens, eos)
        ids = torch.cat([ids, tokens[:, None]], 1)
        if ids.shape[1] >= max_length or not unfinished.any():
            return ids
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
        positions = positions[:, -1:] + 1
        logits = decoder.step(tokens[:, None], positions, mask)


def _beam_search(decoder, ids, mask, config, process, eos, max_length, generator) -> torch.Tensor:
    """Vectorised beam search with the reference's bookkeeping: ``keep`` candidates per prompt each step, the best
    ``num_beams`` unfinished ones continue, finished ones compete for ``num_beams`` slots by length-normalised score.
    """
    beams, prompt_length = config.num_beams, ids.shape[1]
    batch = ids.shape[0] // beams
    device = ids.device
    keep = max(2, 1 + (len(eos) if eos is not None else 0)) * beams
    is_top_beam = torch.arange(keep, device=device) < beams
    # The reference fills unwritten positions with `pad_token_id or eos_token_id[0]`: a pad id of 0 is falsy there,
    # so BLIP's beam outputs end in [SEP] (its eos) rather than [PAD]. We write what it writes.
    fill = -1 if eos is None else (config.pad_token_id or int(eos[0]))

    # (batch, beams, width): widened with `fill` as decoding goes, never to max_length up front.
    running = ids.view(batch, beams, -1).clone()
    finished_seqs = running.clone()
    running_scores = torch.zeros(batch, beams, device=device)
    running_scores[:, 1:] = NEG
    finished_scores = torch.full((batch, beams), NEG, device=device)
    finished_lengths = torch.zeros(batch, beams, dtype=torch.long, device=device)
    is_finished = torch.zeros(batch, beams, dtype=torch.bool, device=device)
    can_improve = torch.ones(batch, 1, dtype=torch.bool, device=device)
    row_offset = torch.arange(batch, device=device)[:, None] * beams

    positions = _positions(mask)
    logits = decoder.prefill(ids, positions, mask)
    length = prompt_length
    while True:
        running = _with_room(running, length + 1, max_length, fill)
        finished_seqs = _with_room(finished_seqs, length + 1, max_length, fill)
        width = running.shape[2]
        log_probs = process(running[:, :, :length].reshape(batch * beams, length), logits.float().log_softmax(-1))
        vocab = log_probs.shape[-1]
        total = (log_probs.view(batch, beams, vocab) + running_scores[:, :, None]).view(batch, -1)
        if config.do_sample:
            flat = _draw(total.softmax(-1), keep, generator)
            # Best first, as topk gives them: only the top `beams` candidates may finish, so a finished draw must
            # not lose its place for having been drawn late (the reference sorts the same way since 5.24).
            top_scores, order = total.gather(1, flat).sort(dim=1, descending=True)
            flat = flat.gather(1, order)
        else:
            top_scores, flat = torch.topk(total, keep)
        parents, tokens = flat // vocab, flat % vocab
        candidates = running.gather(1, parents[:, :, None].expand(-1, -1, width)).clone()
        candidates[:, :, length] = tokens
        hits_stop = (length + 1 >= max_length) | (
            torch.isin(tokens, eos) if eos is not None else torch.zeros_like(tokens, dtype=torch.bool)
        )

        # The best `beams` candidates that did not stop keep running.
        running_candidates = top_scores + hits_stop.float() * NEG
        chosen = torch.topk(running_candidates, beams)[1]
        running = candidates.gather(1, chosen[:, :, None].expand(-1, -1, width))
        running_scores = running_candidates.gather(1, chosen)
        chosen_parents = parents.gather(1, chosen)

        # Candidates that stopped (among the top `beams`) compete with earlier finished hypotheses.
        just_finished = hits_stop & is_top_beam[None, :]
        normalised = top_scores / ((length + 1 - prompt_length) ** config.length_penalty)
        batch_full = is_finished.all(-1, keepdim=True) & (config.early_stopping is True)
        normalised = normalised + batch_full.float() * NEG + (~can_improve).float() * NEG + (~just_finished) * NEG
        merged_scores = torch.cat([finished_scores, normalised], 1)
        best = torch.topk(merged_scores, beams)[1]
        merged_seqs = torch.cat([finished_seqs, candidates], 1)
        finished_seqs = merged_seqs.gather(1, best[:, :, None].expand(-1, -1, width))
        finished_scores = merged_scores.gather(1, best)
        new_lengths = torch.full_like(tokens, length + 1 - prompt_length)
        finished_lengths = torch.cat([finished_lengths, new_lengths], 1).gather(1, best)
        is_finished = torch.cat([is_finished, just_finished], 1).gather(1, best)

        length += 1
        can_improve = can_improve & _improvement_possible(
            running_scores, finished_scores, is_finished, length, prompt_length, max_length, config
        )
        stop = (
            not can_improve.any()
            or (bool(is_finished.all()) and config.early_stopping is True)
            or bool(hits_stop.all())
        )
        if stop:
            break
        decoder.reorder((chosen_parents + row_offset).view(-1))
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
        positions = positions[:, -1:] + 1
        logits = decoder.step(running[:, :, length - 1].reshape(-1, 1), positions, mask)

    returned = config.num_return_sequences
    sequences = finished_seqs[:, :returned].reshape(batch * returned, -1)
    return sequences[:, : prompt_length + int(finished_lengths[:, :returned].max())]


def _draw(probs: torch.Tensor, count: int, generator: Generators) -> torch.Tensor:
    """``count`` draws from each row of ``probs``; with one generator per prompt, each prompt's consecutive rows
    are drawn together from its own (as a batch of that prompt alone would draw them)."""
    if not isinstance(generator, Sequence):
        return torch.multinomial(probs, count, generator=generator)
    parts = probs.split(probs.shape[0] // len(generator))
    return torch.cat([torch.multinomial(part, count, generator=g) for part, g in zip(parts, generator, strict=True)])


def _with_room(seqs: torch.Tensor, needed: int, max_length: int, fill: int) -> torch.Tensor:
    """``seqs`` (batch, beams, width), widened with ``fill`` when it cannot hold ``needed`` positions."""
    if needed <= seqs.shape[2]:
        return seqs
    return F.pad(seqs, (0, grown_capacity(seqs.shape[2], needed, max_length) - seqs.shape[2]), value=fill)


def _improvement_possible(running_scores, finished_scores, is_finished, length, prompt_length, max_length, config):
    """Whether the best running beam could still beat the worst finished hypothesis (the reference's heuristic)."""
    if config.early_stopping == "never" and config.length_penalty > 0.0:
        best_length = max_length - prompt_length
    else:
        best_length = length - prompt_length
    best_running = running_scores[:, :1] / (best_length**config.length_penalty)
    worst_finished = torch.where(is_finished, finished_scores.min(1, keepdim=True)[0], NEG)
    return (best_running > worst_finished).any(-1, keepdim=True)


def _processors(config: GenerationConfig, mask: torch.Tensor, eos: torch.Tensor | None, min_total: int) -> lp.Processor:
    chain: list[lp.Processor] = []
    if config.repetition_penalty != 1.0:
        # Each row's first real token: left padding is not penalised.
        chain.append(lp.repetition_penalty(float(config.repetition_penalty), (mask != 0).int().argmax(1)))
    if config.no_repeat_ngram_size and config.no_repeat_ngram_size > 0:
        chain.append(lp.no_repeat_ngram(config.no_repeat_ngram_size))
    if eos is not None and min_total > 0:
        chain.append(lp.min_length(min_total, eos))
    if config.do_sample:
        keep = 1 + (len(eos) if eos is not None else 1) if config.num_beams > 1 else 1
        if config.temperature != 1.0:
            chain.append(lp.temperature(float(config.temperature)))
        if config.top_k:
            chain.append(lp.top_k(config.top_k, keep))
        if config.top_p < 1.0:
            chain.append(lp.top_p(float(config.top_p), keep))
    return lp.compose(chain)


def _max_length(config: GenerationConfig, prompt_length: int, max_positions: int | None) -> int:
    if config.max_new_tokens is not None:
        return prompt_length + config.max_new_tokens
    if config.max_length is not None:
        return config.max_length
    default = prompt_length + 20  # the reference's default: 20 new tokens, within the model's positions
    return min(default, max_positions) if max_positions is not None else default


def _decoder_start(empty: torch.Tensor, config: GenerationConfig) -> tuple[torch.Tensor, torch.Tensor]:
    start = config.decoder_start_token_id if config.decoder_start_token_id is not None else config.bos_token_id
    if start is None:
        raise ValueError("generation needs decoder_start_token_id (T5 starts decoding with pad_token_id: 0)")
    ids = torch.full((empty.shape[0], 1), start, dtype=torch.long, device=empty.device)
    # The start token is pad (0) for T5: an explicit mask stops it being taken for padding.
    return ids, torch.ones_like(ids)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids counted over real tokens only; padding gets 0 (the reference's rule)."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)


def _infer_attention_mask(ids: torch.Tensor, pad: int | None, eos: torch.Tensor | None) -> torch.Tensor:
    """Without a mask, pad tokens are masked - unless pad is also an eos id (then nothing can be inferred)."""
    if pad is not None and bool((ids == pad).any()) and (eos is None or pad not in eos.tolist()):
        return ids.ne(pad).long()
    return torch.ones_like(ids)


def _eos_tensor(eos: int | list[int] | None, device: torch.device) -> torch.Tensor | None:
    if eos is None:
        return None
    return torch.tensor([eos] if isinstance(eos, int) else list(eos), device=device)
