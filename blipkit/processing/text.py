"""Tokenizers on the `tokenizers` library: any tokenizer.json (BLIP-2's GPT-2 BPE, T5), and BLIP's BERT WordPiece
with [DEC] (bos) and [ENC], which can also be built from a bare vocab.txt."""

from __future__ import annotations

import json
import os
import reprlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from blipkit.hub import ModelFiles, read_json
from blipkit.processing.batch import BatchFeature

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
VOCAB_FILE = "vocab.txt"

SPECIAL_ROLES = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token", "bos_token", "eos_token")
DEFAULT_SPECIALS = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}


class TextTokenizer:
    """A ``tokenizer.json`` with the reference's special tokens, padding (side from the config), truncation and
    decoding. Special tokens come from tokenizer_config.json / special_tokens_map.json."""

    default_specials: dict[str, str] = {}
    tokenizer_class = "PreTrainedTokenizerFast"  # what transformers should load a saved copy as

    def __init__(self, tokenizer: Tokenizer, config: dict[str, Any]) -> None:
        self._tokenizer = tokenizer
        self.config = config
        self.model_max_length = int(config.get("model_max_length") or 512)
        self.padding_side = config.get("padding_side", "right")
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        for role in SPECIAL_ROLES:
            token = _token_content(config.get(role))
            if token is None and self._tokenizer.token_to_id(self.default_specials.get(role, "")) is not None:
                token = self.default_specials[role]  # a default only where the vocabulary has it
            setattr(self, role, token)
        extra = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
        self.additional_special_tokens = [_token_content(t) for t in extra]
        special = [t for t in (*(getattr(self, r) for r in SPECIAL_ROLES), *self.additional_special_tokens) if t]
        # Every special token must be an "added" special token so decode(skip_special_tokens=True) drops it; ones
        # missing from a vocab.txt ([DEC], [ENC]) get the next free ids, as the reference gives them.
        self._tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
        for role in SPECIAL_ROLES:
            token = getattr(self, role)
            setattr(self, f"{role}_id", self._tokenizer.token_to_id(token) if token else None)
        self.all_special_ids = sorted({self._tokenizer.token_to_id(t) for t in special})

    # ----------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike | ModelFiles, **hub_kwargs: Any) -> TextTokenizer:
        files = ModelFiles.open(name_or_path, **hub_kwargs)
        config_path = files.get(TOKENIZER_CONFIG, required=False)
        config = read_json(config_path) if config_path else {}
        specials_path = files.get(SPECIAL_TOKENS_MAP, required=False)
        if specials_path:
            config = {**read_json(specials_path), **config}
        tokenizer_path = files.get(TOKENIZER_FILE, required=False)
        if tokenizer_path is not None:
            try:
                return cls(Tokenizer.from_file(str(tokenizer_path)), config)
            except Exception as e:  # the tokenizers library raises a bare Exception for bad files
                raise ValueError(f"{tokenizer_path} is not a valid tokenizer file: {e}") from e
        return cls._without_tokenizer_json(files, config)

    @classmethod
    def _without_tokenizer_json(cls, files: ModelFiles, config: dict[str, Any]) -> TextTokenizer:
        raise FileNotFoundError(f"{files.name} has no {TOKENIZER_FILE}")

    def add_special_token(self, token: str) -> int:
        """Add ``token`` as a special token (e.g. BLIP-2's ``<image>``) unless it exists; return its id."""
        if self._tokenizer.token_to_id(token) is None:
            self._tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False)])
        return self._tokenizer.token_to_id(token)

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._tokenizer.save(str(directory / TOKENIZER_FILE))
        config = {k: v for k, v in self.config.items() if k != "additional_special_tokens"}
        config.update({role: getattr(self, role) for role in SPECIAL_ROLES if getattr(self, role)})
        config["extra_special_tokens"] = self.additional_special_tokens
        config["model_max_length"] = self.model_max_length
        config.setdefault("tokenizer_class", self.tokenizer_class)
        (directory / TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    # -------------------------------------------------------------------------------------------- encoding
    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=False)

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> int | list[int]:
        if isinstance(tokens, str):
            return self._tokenizer.token_to_id(tokens)
        return [self._tokenizer.token_to_id(t) for t in tokens]

    def tokenize(self, text: str) -> list[str]:
        return self._tokenizer.encode(text, add_special_tokens=False).tokens

    def __call__(
        self,
        text: str | list[str],
        padding: bool | str = False,
        truncation: bool | str = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
        add_special_tokens: bool = True,
        return_attention_mask: bool = True,
        **unused: Any,
    ) -> BatchFeature:
        """Encode one text or a batch: ``input_ids`` and ``attention_mask``, as lists or (``"pt"``) tensors."""
        texts = check_texts(text)
        ids = [e.ids for e in self._encode(texts, add_special_tokens, truncation, max_length)]
        if max_length is None:  # as the reference: an explicit max_length says the caller chose the length
            self._warn_if_too_long(ids)
        if padding in (True, "longest", "max_length"):
            width = max(len(s) for s in ids)
            if padding == "max_length":
                width = max_length if max_length is not None else self.model_max_length
            if self.pad_token_id is None:
                raise ValueError("this tokenizer has no pad token, so texts of different lengths cannot be padded")
            masks = [_pad([1] * len(s), width, 0, self.padding_side) for s in ids]
            ids = [_pad(s, width, self.pad_token_id, self.padding_side) for s in ids]
        elif padding not in (False, None, "do_not_pad"):
            raise ValueError(f"padding must be True, False, 'longest', 'max_length' or 'do_not_pad', got {padding!r}")
        else:
            masks = [[1] * len(s) for s in ids]
        out: dict[str, Any] = {"input_ids": ids}
        if return_attention_mask:
            out["attention_mask"] = masks
        if isinstance(text, str) and return_tensors is None:
            return BatchFeature({k: v[0] for k, v in out.items()})
        return ids_as_tensors(out, return_tensors)

    def _encode(self, texts: list[str], add_special_tokens: bool, truncation: bool | str, max_length: int | None):
        if not truncation or truncation == "do_not_truncate":
            return self._tokenizer.encode_batch(texts, add_special_tokens=add_special_tokens)
        # The library truncates the text and then adds the special tokens ([CLS] ... [SEP], </s>), within the limit.
        limit = max_length if max_length is not None else self.model_max_length
        try:
            self._tokenizer.enable_truncation(limit)
            return self._tokenizer.encode_batch(texts, add_special_tokens=add_special_tokens)
        except Exception as e:  # the tokenizers library raises a bare Exception
            raise ValueError(f"cannot truncate to max_length={limit}: {e}") from e
        finally:
            self._tokenizer.no_truncation()

    def _warn_if_too_long(self, ids: list[list[int]]) -> None:
        """Warn, as the reference does, of text the model cannot read whole (it refuses more than its positions)."""
        longest = max(len(s) for s in ids)
        if self.model_max_length and longest > self.model_max_length:
            warnings.warn(
                "Token indices sequence length is longer than the specified maximum sequence length for this model "
                f"({longest} > {self.model_max_length}). Running this sequence through the model will result in "
                f"indexing errors: pass truncation=True to cut it to {self.model_max_length} tokens",
                stacklevel=3,
            )

    # -------------------------------------------------------------------------------------------- decoding
    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = False) -> list[str]:
        if isinstance(sequences, torch.Tensor):
            sequences = sequences.tolist()
        return self._tokenizer.decode_batch([list(s) for s in sequences], skip_special_tokens=skip_special_tokens)


class BlipTokenizer(TextTokenizer):
    """BLIP's tokenizer: BERT uncased WordPiece with [DEC] (bos, 30522) and [ENC] (30523). Loads ``tokenizer.json``,
    or builds the same pipeline from ``vocab.txt`` and ``tokenizer_config.json`` when that is all a repo has."""

    default_specials = DEFAULT_SPECIALS
    tokenizer_class = "BertTokenizer"

    @property
    def enc_token_id(self) -> int | None:
        return self._tokenizer.token_to_id("[ENC]")

    @classmethod
    def _without_tokenizer_json(cls, files: ModelFiles, config: dict[str, Any]) -> BlipTokenizer:
        vocab_path = files.get(VOCAB_FILE, required=False)
        if vocab_path is None:
            raise FileNotFoundError(f"{files.name} has neither {TOKENIZER_FILE} nor {VOCAB_FILE}")
        return cls.from_vocab(vocab_path, config)

    @classmethod
    def from_vocab(cls, vocab_path: str | os.PathLike, config: dict[str, Any] | None = None) -> BlipTokenizer:
        """Build the BERT WordPiece pipeline from a vocab.txt (the BLIP defaults: [DEC] bos, [ENC] extra)."""
        config = {"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"], "do_lower_case": True, **(config or {})}
        vocab = {
            line.rstrip("\n"): i for i, line in enumerate(Path(vocab_path).read_text(encoding="utf-8").splitlines())
        }
        unk = _token_content(config.get("unk_token", "[UNK]"))
        if unk not in vocab:
            raise ValueError(f"{vocab_path} does not contain the unknown token {unk!r}; is it a WordPiece vocabulary?")
        tokenizer = Tokenizer(WordPiece(vocab, unk_token=unk, max_input_chars_per_word=100))
        tokenizer.normalizer = normalizers.BertNormalizer(
            clean_text=True,
            handle_chinese_chars=config.get("tokenize_chinese_chars", True),
            strip_accents=config.get("strip_accents"),
            lowercase=config.get("do_lower_case", True),
        )
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece(prefix="##")
        cls_token = _token_content(config.get("cls_token", "[CLS]"))
        sep_token = _token_content(config.get("sep_token", "[SEP]"))
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{cls_token} $A {sep_token}",
            pair=f"{cls_token} $A {sep_token} $B:1 {sep_token}:1",
            special_tokens=[(cls_token, vocab[cls_token]), (sep_token, vocab[sep_token])],
        )
        return cls(tokenizer, config)


def _pad(sequence: list[int], width: int, value: int, side: str) -> list[int]:
    padding = [value] * (width - len(sequence))
    return padding + sequence if side == "left" else sequence + padding


def check_texts(text: Any, name: str = "text") -> list[str]:
    """Accept one string or a non-empty list of strings (``name`` says which argument); name what is wrong otherwise."""
    if isinstance(text, str):
        return [text]
    if isinstance(text, (list, tuple)):
        if not text:
            raise ValueError(f"{name} is an empty list: give at least one string")
        bad = next((i for i, t in enumerate(text) if not isinstance(t, str)), None)
        if bad is not None:
            raise TypeError(f"{name} must be strings; item {bad} is {_describe(text[bad])}")
        return list(text)
    raise TypeError(f"{name} must be a string or a list of strings, got {_describe(text)}")


def check_text(text: Any, name: str) -> str:
    """Accept one string; name the argument and the value otherwise."""
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a string, got {_describe(text)}")
    return text


def _describe(value: Any) -> str:
    return f"{reprlib.repr(value)} ({type(value).__name__})"


def _token_content(token: Any) -> str | None:
    if isinstance(token, dict):  # {"content": "[PAD]", ...} as older tokenizer_config.json files write them
        return token.get("content")
    return token


def ids_as_tensors(encoded: dict[str, list[list[int]]], return_tensors: str | None) -> BatchFeature:
    """Token id rows as int64 torch tensors ("pt"), numpy arrays ("np": what the Keras classes take) or lists."""
    if return_tensors is None:
        return BatchFeature(encoded)
    if return_tensors not in ("pt", "np"):
        raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
    if len({len(row) for row in encoded["input_ids"]}) > 1:
        raise ValueError("texts of different lengths cannot form one tensor: pass padding=True")
    if return_tensors == "np":
        return BatchFeature({k: np.asarray(v, dtype=np.int64) for k, v in encoded.items()})
    return BatchFeature({k: torch.tensor(v, dtype=torch.long) for k, v in encoded.items()})
