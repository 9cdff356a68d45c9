"""Tiny BLIP-2 checkpoints saved with their processors, as the Hub lays them out: Flan-T5 (a unigram tokenizer),
OPT (a BPE tokenizer) and an ITM model - for tests that load models by directory the way users load them by id."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.bpe import save_bpe_tokenizer
from tests.builders.configs import FLAN, QFORMER, QUERIES, SAME_WIDTH, TINY_T5, VISION
from tests.builders.models import reference_blip2
from tests.reference import perturb_, save_reference
from tests.unigram import save_unigram_tokenizer


def save_tiny_blips(root: Path) -> dict[str, Path]:
    """Directories ``caption``, ``vqa`` and ``itm`` under ``root``: a tiny reference BLIP of each task's class, with
    its processor (the VQA model's text width the vision width, as its cross-attention to questions needs)."""
    save_reference("BlipForConditionalGeneration", root / "caption")
    save_reference("BlipForQuestionAnswering", root / "vqa", **SAME_WIDTH)
    save_reference("BlipForImageTextRetrieval", root / "itm")
    return {name: root / name for name in ("caption", "vqa", "itm")}


def save_tiny_blip2s(root: Path, opt_padding_side: str = "left") -> dict[str, Path]:
    """Directories ``t5``, ``opt`` and ``itm`` under ``root``, each a reference model with its processor."""
    import transformers

    def processor(tokenizer_dir, num_query_tokens):
        image_processor = transformers.BlipImageProcessorPil(size={"height": 28, "width": 28})
        tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
        return transformers.Blip2Processor(image_processor, tokenizer, num_query_tokens=num_query_tokens)

    def save(class_name, directory, processor, **config):
        config = transformers.Blip2Config(vision_config=VISION, num_query_tokens=QUERIES, **config)
        torch.manual_seed(0)
        perturb_(getattr(transformers, class_name)(config)).save_pretrained(directory)
        processor.save_pretrained(directory)

    t5 = processor(save_unigram_tokenizer(root / "unigram"), QUERIES)
    image_token = t5.tokenizer.convert_tokens_to_ids("<image>")
    t5_text = {**TINY_T5, **FLAN, "vocab_size": image_token + 1}
    save("Blip2ForConditionalGeneration", root / "t5", t5, qformer_config=QFORMER, text_config=t5_text,
         image_token_index=image_token)  # fmt: skip
    opt = processor(save_bpe_tokenizer(root / "bpe", padding_side=opt_padding_side), QUERIES)
    image_token = opt.tokenizer.convert_tokens_to_ids("<image>")
    reference_blip2(root / "opt", image_token=image_token, vocab_size=image_token + 1)
    opt.save_pretrained(root / "opt")
    save("Blip2ForImageTextRetrieval", root / "itm", processor(root / "bpe", None),
         qformer_config={**QFORMER, "vocab_size": 400, "use_qformer_text_input": True})  # fmt: skip
    return {name: root / name for name in ("opt", "t5", "itm")}
