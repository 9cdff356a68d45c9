"""Tiny configurations of every family, and the generation settings several parity tests share."""

from __future__ import annotations

from tests.reference import IMAGE_SIZE

SAME_WIDTH = {"vision_config": {"hidden_size": 32, "intermediate_size": 56, "num_hidden_layers": 2,
                                "num_attention_heads": 4, "image_size": IMAGE_SIZE, "patch_size": 8}}  # fmt: skip

VISION = {"hidden_size": 48, "intermediate_size": 56, "num_hidden_layers": 2, "num_attention_heads": 4,
          "image_size": 28, "patch_size": 14}  # fmt: skip

QFORMER = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 3, "num_attention_heads": 4,
           "encoder_hidden_size": 48, "cross_attention_frequency": 2}  # fmt: skip

IMAGE_TOKEN = 98

QUERIES = 4

TINY_OPT = {"model_type": "opt", "vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2, "ffn_dim": 37,
            "num_attention_heads": 4, "max_position_embeddings": 64, "dropout": 0.0}  # fmt: skip

SAMPLING = [
    {"do_sample": True, "top_k": 10},
    {"do_sample": True, "num_beams": 3},
    {"do_sample": True, "num_beams": 2, "num_return_sequences": 2, "top_k": 10},
]

EOS = 1


TINY_T5 = {"model_type": "t5", "vocab_size": 99, "d_model": 32, "d_kv": 6, "d_ff": 37, "num_layers": 2,
           "num_heads": 4, "relative_attention_num_buckets": 8, "relative_attention_max_distance": 20,
           "dropout_rate": 0.0, "decoder_start_token_id": 0}  # fmt: skip

FLAN = {"feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}  # T5 v1.1: gated, unscaled output
