"""Generation for the Keras classes: greedy, sampling and beam search over fixed-shape buffers, so a whole
``generate`` compiles as one XLA program (``tf.function(jit_compile=True)`` / ``jax.jit``).

The search follows blipkit's torch search (``blipkit.generation.search``) step for step - the same candidates,
stopping rules and length normalisation - so greedy and beam ids equal the torch classes' (and the reference's).
What differs is the bookkeeping: token ids, the attention mask and every layer's keys and values live in buffers of
the final length, written at the current position; the loop is ``keras.ops.while_loop``. Sampling draws from the
backend's own stateless generator keyed by ``seed`` and the step, so a seed reproduces a sample on one backend (not
torch's numbers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
from keras import ops

from blipkit.generation.config import GenerationConfig

NEG = -1.0e9  # the reference's score for "impossible" in beam search

# (input_ids (rows, n), position_ids (rows, n), key_mask (rows, length), start, caches) -> (logits (rows, vocab) of
# the last position, caches)
Decode = Callable[..., tuple[Any, Any]]


def generate(decode: Decode, caches, input_ids, attention_mask, config: GenerationConfig, seed: int | None):
    """Ids (prompt included) for each prompt row; ``caches`` hold ``rows * expand`` rows of the final length
    (``buffer_length``). Runs inside or outside a compiled function alike."""
    rows, prompt_length = input_ids.shape
    max_length = buffer_length(config, prompt_length)
    eos = eos_ids(config)
    attention_mask = ops.cast(attention_mask, "int32")
    min_total = prompt_length + config.min_new_tokens if config.min_new_tokens else config.min_length
    expand = config.num_beams if config.num_beams > 1 else config.num_return_sequences
    input_ids = ops.repeat(ops.cast(input_ids, "int32"), expand, axis=0)
    attention_mask = ops.repeat(attention_mask, expand, axis=0)
    process = _processors(config, attention_mask, eos, min_total)
    seed = 0 if seed is None else int(seed)
    if config.num_beams > 1:
        return _beam_search(decode, caches, input_ids, attention_mask, config, process, eos, max_length, seed)
    return _greedy_or_sample(decode, caches, input_ids, attention_mask, config, process, eos, max_length, seed)


def buffer_length(config: GenerationConfig, prompt_length: int) -> int:
    if config.max_new_tokens is not None:
        return prompt_length + config.max_new_tokens
    if config.max_length is not None:
        return config.max_length
    return prompt_length + 20  # the reference's default


def rows_per_prompt(config: GenerationConfig) -> int:
    return config.num_beams if config.num_beams > 1 else config.num_return_sequences


def _greedy_or_sample(decode, caches, ids, mask, config, process, eos, max_length, seed):
    rows, prompt_length = ops.shape(ids)[0], ids.shape[1]  # rows may be unknown until run (an exported signature)
    pad = config.pad_token_id
    buffer = ops.pad(ids, ((0, 0), (0, max_length - prompt_length)), constant_values=pad)
    key_mask = ops.pad(ops.cast(mask, "bool"), ((0, 0), (0, max_length - prompt_length)), constant_values=False)
    positions = _positions(mask)
    logits, caches = decode(ids, positions, key_mask, 0, caches)
    last = positions[:, -1]
    unfinished = ops.ones((rows,), "bool")

    def body(length, buffer, key_mask, last, unfinished, logits, caches):
        scores = process(buffer, length, ops.cast(logits, "float32"))
        if config.do_sample:
            tokens = ops.argmax(scores + _gumbel(ops.shape(scores), seed, length), axis=-1)
        else:
            tokens = ops.argmax(scores, axis=-1)
        tokens = ops.where(unfinished, ops.cast(tokens, "int32"), pad)
        if eos is not None:
            unfinished = ops.logical_and(unfinished, ops.logical_not(_is_in(tokens, eos)))
        buffer = _write_column(buffer, length, tokens)
        key_mask = _write_column(key_mask, length, ops.ones((rows,), "bool"))
        last = last + 1
        # Decodes one step past the last token: a fixed-shape loop cannot skip it, and it costs one step in twenty.
        logits, caches = decode(tokens[:, None], last[:, None], key_mask, length, caches)
        return length + 1, buffer, key_mask, last, unfinished, logits, caches

    def cond(length, buffer, key_mask, last, unfinished, logits, caches):
        return ops.logical_and(length < max_length, ops.any(unfinished))

    state = (ops.convert_to_tensor(prompt_length, "int32"), buffer, key_mask, last, unfinished, logits, caches)
    length, buffer, *_ = ops.while_loop(cond, body, state)
    return buffer, length


def _beam_search(decode, caches, ids, mask, config, process, eos, max_length, seed):
    """The torch search's vectorised beam search: ``keep`` candidates per prompt each step, the best ``num_beams``
    unfinished continue, finished ones compete for ``num_beams`` slots by length-normalised score."""
    beams = config.num_beams
    rows, prompt_length = ops.shape(ids)[0], ids.shape[1]
    batch = rows // beams
    keep = max(2, 1 + (len(eos) if eos is not None else 0)) * beams
    is_top_beam = ops.arange(keep) < beams
    fill = -1 if eos is None else (config.pad_token_id or eos[0])  # what the reference writes past the end

    running = ops.reshape(ops.pad(ids, ((0, 0), (0, max_length - prompt_length)), constant_values=fill),
                          (-1, beams, max_length))  # fmt: skip
    key_mask = ops.pad(ops.cast(mask, "bool"), ((0, 0), (0, max_length - prompt_length)), constant_values=False)
    running_scores = ops.concatenate([ops.zeros((batch, 1)), ops.full((batch, beams - 1), NEG)], axis=1)
    finished_seqs = running
    finished_scores = ops.full((batch, beams), NEG)
    finished_lengths = ops.zeros((batch, beams), "int32")
    is_finished = ops.zeros((batch, beams), "bool")
    can_improve = ops.ones((batch, 1), "bool")
    row_offset = ops.arange(batch, dtype="int32")[:, None] * beams
    columns = ops.arange(max_length, dtype="int32")

    positions = _positions(mask)
    logits, caches = decode(ids, positions, key_mask, 0, caches)
    last = positions[:, -1]

    def body(length, running, running_scores, finished_seqs, finished_scores, finished_lengths, is_finished,
             can_improve, key_mask, last, logits, caches, done):  # fmt: skip
        log_probs = ops.log_softmax(ops.cast(logits, "float32"), axis=-1)
        log_probs = process(ops.reshape(running, (-1, max_length)), length, log_probs)
        vocab = log_probs.shape[-1]
        total = ops.reshape(ops.reshape(log_probs, (-1, beams, vocab)) + running_scores[:, :, None], (batch, -1))
        if config.do_sample:
            # Sampling without replacement (Gumbel top-k), best first as the torch search sorts its draws.
            _, flat = ops.top_k(total + _gumbel(ops.shape(total), seed, length), keep)
            top_scores = ops.take_along_axis(total, flat, axis=1)
            order = ops.flip(ops.argsort(top_scores, axis=1), axis=1)
            flat, top_scores = ops.take_along_axis(flat, order, axis=1), ops.take_along_axis(top_scores, order, axis=1)
        else:
            top_scores, flat = ops.top_k(total, keep)
        flat = ops.cast(flat, "int32")
        parents, tokens = flat // vocab, flat % vocab
        candidates = _gather_beams(running, parents)
        candidates = ops.where(columns == length, tokens[:, :, None], candidates)
        hits_stop = ops.broadcast_to(length + 1 >= max_length, ops.shape(tokens))
        if eos is not None:
            hits_stop = ops.logical_or(hits_stop, _is_in(tokens, eos))
        stop_penalty = ops.cast(hits_stop, "float32") * NEG

        running_candidates = top_scores + stop_penalty
        _, chosen = ops.top_k(running_candidates, beams)
        running = _gather_beams(candidates, chosen)
        running_scores = ops.take_along_axis(running_candidates, chosen, axis=1)
        chosen_parents = ops.take_along_axis(parents, ops.cast(chosen, "int32"), axis=1)

        just_finished = ops.logical_and(hits_stop, is_top_beam[None, :])
        generated = ops.cast(length + 1 - prompt_length, "float32")
        normalised = top_scores / ops.power(generated, float(config.length_penalty))
        batch_full = ops.logical_and(ops.all(is_finished, axis=-1, keepdims=True), config.early_stopping is True)
        for excluded in (batch_full, ops.logical_not(can_improve), ops.logical_not(just_finished)):
            normalised = normalised + ops.cast(excluded, "float32") * NEG
        merged_scores = ops.concatenate([finished_scores, normalised], axis=1)
        _, best = ops.top_k(merged_scores, beams)
        finished_seqs = _gather_beams(ops.concatenate([finished_seqs, candidates], axis=1), best)
        finished_scores = ops.take_along_axis(merged_scores, best, axis=1)
        new_lengths = ops.full(ops.shape(tokens), length + 1 - prompt_length, "int32")
        finished_lengths = ops.take_along_axis(ops.concatenate([finished_lengths, new_lengths], 1), best, axis=1)
        is_finished = ops.take_along_axis(ops.concatenate([is_finished, just_finished], 1), best, axis=1)

        length = length + 1
        can_improve = ops.logical_and(
            can_improve,
            _improvement_possible(
                running_scores, finished_scores, is_finished, length, prompt_length, max_length, config
            ),  # fmt: skip
        )
        done = ops.logical_or(ops.logical_not(ops.any(can_improve)), ops.all(hits_stop))
        if config.early_stopping is True:
            done = ops.logical_or(done, ops.all(is_finished))

        rows_chosen = ops.reshape(chosen_parents + row_offset, (-1,))
        caches = keras.tree.map_structure(lambda c: ops.take(c, rows_chosen, axis=0), caches)
        key_mask = _write_column(key_mask, length - 1, ops.ones((rows,), "bool"))
        last = last + 1
        step_ids = ops.reshape(_column(running, length - 1), (-1, 1))
        logits, caches = decode(step_ids, last[:, None], key_mask, length - 1, caches)
        return (length, running, running_scores, finished_seqs, finished_scores, finished_lengths, is_finished,
                can_improve, key_mask, last, logits, caches, done)  # fmt: skip

    def cond(*state):
        return ops.logical_not(state[-1])

    state = (ops.convert_to_tensor(prompt_length, "int32"), running, running_scores, finished_seqs, finished_scores,
             finished_lengths, is_finished, can_improve, key_mask, last, logits, caches,
             ops.convert_to_tensor(False))  # fmt: skip
    state = ops.while_loop(cond, body, state)
    finished_seqs, finished_lengths = state[3], state[5]
    returned = config.num_return_sequences
    sequences = ops.reshape(finished_seqs[:, :returned], (-1, max_length))
    return sequences, prompt_length + ops.max(finished_lengths[:, :returned])


def _improvement_possible(running_scores, finished_scores, is_finished, length, prompt_length, max_length, config):
    """Whether the best running beam could still beat the worst finished hypothesis (the reference's heuristic)."""
    if config.early_stopping == "never" and config.length_penalty > 0.0:
        best_length = ops.convert_to_tensor(float(max_length - prompt_length))
    else:
        best_length = ops.cast(length - prompt_length, "float32")
    best_running = running_scores[:, :1] / ops.power(best_length, float(config.length_penalty))
    worst_finished = ops.where(is_finished, ops.min(finished_scores, axis=1, keepdims=True), NEG)
    return ops.any(best_running > worst_finished, axis=-1, keepdims=True)


def _gather_beams(seqs, index):
    """seqs (batch, n, length) at beams ``index`` (batch, k) -> (batch, k, length)."""
    index = ops.cast(index, "int32")
    shape = ops.shape(index)
    return ops.take_along_axis(seqs, ops.broadcast_to(index[:, :, None], (shape[0], shape[1], seqs.shape[2])), axis=1)


def _column(seqs, index):
    """seqs[..., index] for a traced index."""
    return ops.sum(ops.where(ops.arange(seqs.shape[-1]) == index, seqs, 0), axis=-1)


def _write_column(buffer, index, values):
    return ops.slice_update(buffer, (0, index), ops.cast(values[:, None], buffer.dtype))


def _positions(mask):
    """Position ids counted over real tokens only; padding gets 0 (the reference's rule)."""
    return ops.where(mask != 0, ops.cumsum(mask, axis=-1) - 1, 0)


def _is_in(tokens, ids: list[int]):
    hit = tokens == ids[0]
    for other in ids[1:]:
        hit = ops.logical_or(hit, tokens == other)
    return hit


def eos_ids(config: GenerationConfig) -> list[int] | None:
    eos = config.eos_token_id
    if eos is None:
        return None
    return [eos] if isinstance(eos, int) else list(eos)


def _gumbel(shape, seed: int, step):
    """Gumbel noise from the backend's stateless generator, keyed by (seed, step)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        key = tf.stack([tf.constant(seed, tf.int32), tf.cast(step, tf.int32)])
        uniform = tf.random.stateless_uniform(shape, seed=key, minval=1e-20, maxval=1.0)
    elif backend == "jax":
        import jax

        key = jax.random.fold_in(jax.random.PRNGKey(seed), step)
        uniform = jax.random.uniform(key, shape, minval=1e-20, maxval=1.0)
    else:
        raise NotImplementedError(f"sampling runs on the TensorFlow and JAX backends, not {backend}")
    return -ops.log(-ops.log(uniform))


# Logits processors over the fixed-length id buffer: (ids (rows, length), current length, scores) -> scores.
Processor = Callable[[Any, Any, Any], Any]


def _processors(config: GenerationConfig, mask, eos: list[int] | None, min_total: int) -> Processor:
    chain: list[Processor] = []
    if config.repetition_penalty != 1.0:
        chain.append(_repetition_penalty(float(config.repetition_penalty), ops.argmax(mask != 0, axis=1)))
    if config.no_repeat_ngram_size and config.no_repeat_ngram_size > 0:
        chain.append(_no_repeat_ngram(config.no_repeat_ngram_size))
    if eos is not None and min_total > 0:
        chain.append(_min_length(min_total, eos))
    if config.do_sample:
        keep = 1 + (len(eos) if eos is not None else 1) if config.num_beams > 1 else 1
        if config.temperature != 1.0:
            chain.append(lambda ids, length, scores: scores / float(config.temperature))
        if config.top_k:
            chain.append(_top_k(config.top_k, keep))
        if config.top_p < 1.0:
            chain.append(_top_p(float(config.top_p), keep))

    def apply(ids, length, scores):
        for processor in chain:
            scores = processor(ids, length, scores)
        return scores

    return apply


def _seen(ids, length, valid_from, vocab: int):
    """(rows, vocab) booleans: which tokens appear in ids[:, valid_from:length]."""
    positions = ops.arange(ids.shape[1])[None, :]
    valid = ops.logical_and(positions < length, positions >= valid_from[:, None])
    return ops.any(ops.logical_and(ops.one_hot(ids, vocab, dtype="bool"), valid[:, :, None]), axis=1)


def _repetition_penalty(penalty: float, prompt_start) -> Processor:
    def apply(ids, length, scores):
        seen = _seen(ids, length, prompt_start, scores.shape[-1])
        penalised = ops.where(scores < 0, scores * penalty, scores / penalty)
        return ops.where(seen, penalised, scores)

    return apply


def _no_repeat_ngram(size: int) -> Processor:
    def apply(ids, length, scores):
        total = ids.shape[1]
        if total < size:
            return scores
        windows = ops.stack([ids[:, j : total - size + 1 + j] for j in range(size)], axis=-1)  # (rows, w, size)
        prefix = ops.take(ids, length - size + 1 + ops.arange(size - 1), axis=1)  # the last size-1 tokens
        starts = ops.arange(total - size + 1)
        matches = ops.logical_and(ops.all(windows[..., :-1] == prefix[:, None, :], axis=-1),
                                  (starts + size <= length)[None, :])  # fmt: skip
        matches = ops.logical_and(matches, length >= size)
        banned = ops.any(ops.logical_and(ops.one_hot(windows[..., -1], scores.shape[-1], dtype="bool"),
                                         matches[:, :, None]), axis=1)  # fmt: skip
        return ops.where(banned, -float("inf"), scores)

    return apply


def _min_length(length_needed: int, eos: list[int]) -> Processor:
    def apply(ids, length, scores):
        is_eos = _is_in(ops.arange(scores.shape[-1]), eos)
        return ops.where(ops.logical_and(is_eos, length < length_needed)[None, :], -float("inf"), scores)

    return apply


def _top_k(k: int, keep: int) -> Processor:
    k = max(k, keep)

    def apply(ids, length, scores):
        threshold = ops.top_k(scores, min(k, scores.shape[-1]))[0][:, -1:]
        return ops.where(scores < threshold, -float("inf"), scores)

    return apply


def _top_p(p: float, keep: int) -> Processor:
    def apply(ids, length, scores):
        order = ops.argsort(scores, axis=-1)  # ascending
        ascending = ops.take_along_axis(scores, order, axis=-1)
        cumulative = ops.cumsum(ops.softmax(ascending, axis=-1), axis=-1)
        remove = cumulative <= (1 - p)
        remove = ops.logical_and(remove, ops.arange(scores.shape[-1]) < scores.shape[-1] - keep)
        remove = ops.take_along_axis(remove, ops.argsort(order, axis=-1), axis=-1)  # back to vocabulary order
        return ops.where(remove, -float("inf"), scores)

    return apply
