"""Prompts of exactly ISL tokens under the served model's own tokenizer, unique per request."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from automation.errors import StageError

ATTEMPTS = 64


class PromptMaker:
    """Random token ids decoded to text, re-encoded and trimmed until the text is exactly `isl` tokens.

    Random ids give every request its own prefix, so no prompt reuses another's KV cache.
    """

    def __init__(self, tokenizer_json: str, isl: int, seed: int) -> None:
        from tokenizers import Tokenizer

        self.tokenizer: Any = Tokenizer.from_str(tokenizer_json)
        self.isl = isl
        self.seed = seed
        special = set(self.tokenizer.get_added_tokens_decoder())  # {id: AddedToken}
        unknown = getattr(self.tokenizer.model, "unk_token", None)
        unknown_id = self.tokenizer.token_to_id(unknown) if unknown is not None else None
        if unknown_id is not None:
            special.add(int(unknown_id))  # "[UNK]" never decodes back to itself
        size = self.tokenizer.get_vocab_size(with_added_tokens=False)
        self.ids = [i for i in range(size) if i not in special]

    def _count(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def make(self, index: int) -> str:
        """The prompt of request `index` (deterministic in seed and index).

        Raises:
            StageError: the tokenizer never round-trips to exactly isl tokens.
        """
        return self.make_many([index])[0]

    def make_many(self, indices: list[int]) -> list[str]:
        """The prompts of many requests at once: the tokenizer decodes and re-encodes them in one batch
        each (in Rust, on every core), which makes a level's prompts ~10× faster than one by one.

        Raises:
            StageError: the tokenizer never round-trips to exactly isl tokens.
        """
        rngs = [random.Random(self.seed * 1_000_003 + index) for index in indices]
        drafts = [rng.choices(self.ids, k=self.isl) for rng in rngs]
        texts = [str(t) for t in self.tokenizer.decode_batch(drafts, skip_special_tokens=True)]
        counts = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        prompts = []
        for rng, ids, text, count in zip(rngs, drafts, texts, counts, strict=True):
            prompts.append(text if len(count.ids) == self.isl else self._repair(rng, ids))
        return prompts

    def _repair(self, rng: random.Random, ids: list[int]) -> str:
        for _ in range(ATTEMPTS):
            text = str(self.tokenizer.decode(ids, skip_special_tokens=True))
            count = self._count(text)
            if len(count) == self.isl:
                return text
            # Decoding merged or split tokens somewhere: keep the prefix that round-tripped and draw
            # the rest again, which converges for any tokenizer whose tokens mostly round-trip.
            agree = next(
                (k for k, (a, b) in enumerate(zip(ids, count, strict=False)) if a != b),
                min(len(ids), len(count)),
            )
            ids = ids[:agree] + rng.choices(self.ids, k=self.isl - agree)
        raise StageError(
            f"could not build a prompt of exactly {self.isl} tokens with the model's tokenizer",
            hint="check that model.path holds the served model's tokenizer.json",
        )


def read_tokenizer(model_path: Path) -> str:
    """tokenizer.json from a local checkpoint directory."""
    path = Path(model_path).expanduser() / "tokenizer.json"
    try:
        return path.read_text()
    except OSError:
        raise StageError(
            f"no tokenizer.json at {path}: the benchmark needs the served model's tokenizer to build "
            "prompts of exactly ISL tokens",
            hint="run autodeploy where model.path is readable (node 0), or copy tokenizer.json there",
        ) from None
