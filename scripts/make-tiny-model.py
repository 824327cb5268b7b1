#!/usr/bin/env python3
"""Write a tiny Qwen3-shaped model directory (config + tokenizer, no weights) for the CPU rehearsal.

Dynamo's frontend and mocker need a tokenizer and a config.json, never weights. The vocabulary is
large (152k words "w4".."w152063") because the mocker emits random token ids, and decode(ids) must
re-encode to the same ids so that prompts of exactly ISL tokens can be built.
Usage: scripts/make-tiny-model.py DIRECTORY
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

VOCAB = 152064
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    vocab = {token: i for i, token in enumerate(SPECIAL)}
    vocab["[UNK]"] = 3
    vocab.update({f"w{i}": i for i in range(4, VOCAB)})
    added = [
        {
            "id": i,
            "content": t,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, t in enumerate(SPECIAL)
    ]
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"},
    }
    config = {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "num_hidden_layers": 2,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "intermediate_size": 128,
        "max_position_embeddings": 32768,
        "vocab_size": VOCAB,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "torch_dtype": "bfloat16",
    }
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        # Declared, so that clients drawing random token ids (aiperf) leave [UNK] out: its text re-encodes
        # to 3 tokens, and such prompts came out longer than ISL (2.6 % at ISL 4000).
        "unk_token": "[UNK]",
        "bos_token": None,
        "model_max_length": 32768,
        "chat_template": CHAT_TEMPLATE,
    }
    files = {
        "tokenizer.json": tokenizer,
        "config.json": config,
        "tokenizer_config.json": tokenizer_config,
        "generation_config.json": {"eos_token_id": 0},
    }
    for name, content in files.items():
        (directory / name).write_text(json.dumps(content))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    write(Path(sys.argv[1]))
