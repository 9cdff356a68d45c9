"""A small GPT-2-style byte-level BPE tokenizer (OPT's special tokens and ids), trained here with `tokenizers`."""

from __future__ import annotations

import json
from pathlib import Path

CORPUS = [
    "Question: what is in the picture? Answer: a cat lying on a blanket.",
    "a photograph of an astronaut in a white suit with an american flag",
    "a rocket lifting off into the blue sky, with smoke and fire below it",
    "a cup of coffee on a saucer, seen from above, on a wooden table",
] * 20


def save_bpe_tokenizer(directory: Path, padding_side: str = "left", vocab_size: int = 300) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],  # OPT's ids 0..3
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="</s> $A", special_tokens=[("</s>", 2)])
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {
        "bos_token": "</s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "padding_side": padding_side,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 64,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory
