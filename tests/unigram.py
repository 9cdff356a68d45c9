"""A small T5-style unigram tokenizer (T5's special tokens, ids and pipeline), built with `tokenizers`."""

from __future__ import annotations

import json
from pathlib import Path

from tests.bpe import CORPUS

SENTINELS = 3  # T5 has 100 <extra_id_N> tokens after the vocabulary; a few do here


def save_unigram_tokenizer(directory: Path, vocab_size: int = 200) -> Path:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",  # T5's ids 0..2
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    sentinels = [f"<extra_id_{i}>" for i in reversed(range(SENTINELS))]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in sentinels])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "extra_ids": SENTINELS,
        "additional_special_tokens": sentinels,
        "tokenizer_class": "T5Tokenizer",
        "model_max_length": 32,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory
