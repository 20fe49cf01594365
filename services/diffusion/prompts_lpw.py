"""Weighted and long prompts (``use_lpw``) in A1111 syntax, for SD1.5 and SDXL text encoders.

Syntax: ``(text)`` multiplies the weight of its tokens by 1.1, ``[text]`` divides it by 1.1, ``(text:w)``
multiplies it by ``w``; brackets nest multiplicatively; ``\\(`` ``\\)`` ``\\[`` ``\\]`` are literal brackets.

Encoding (A1111's, which ``sd_embed`` also follows): every fragment is tokenised without special tokens,
the tokens are cut into chunks of 75, each chunk becomes ``BOS + 75 tokens + EOS`` padded to 77, and runs
through the text encoder on its own. The hidden states of each token are multiplied by its weight, then
the chunk is rescaled so that its mean equals the unweighted mean. Chunks are concatenated along the token
axis; the positive and negative prompts are padded with empty chunks to the same count. SDXL does this for
both encoders (penultimate hidden states), concatenates their features and takes the pooled embedding of
the second encoder's first chunk.

``compel`` was considered (it accepts weighted fragments) but its maths differ from A1111's: it moves a
weighted token along the line from the empty-prompt embedding instead of scaling and re-normalising the
chunk, and it downweights by blending with a prompt lacking the fragment. Outputs would not match A1111's
for the same prompt, so the chunked encoder lives here (about a hundred lines, tested against a real CLIP
vocabulary).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CHUNK_TOKENS = 75
ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1

_ATTENTION = re.compile(
    r"""
    \\\(|\\\)|\\\[|\\]|\\\\|\\|   # escaped brackets and backslashes
    \(|\[|                        # openers
    :\s*([+-]?[.\d]+)\s*\)|       # explicit weight closing a round bracket
    \)|]|                         # closers
    [^\\()\[\]:]+|                # plain text
    :                             # a colon that is not a weight
    """,
    re.X,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


def strip_break(text: str) -> str:
    """``BREAK`` is the prompt language's segment separator and must never reach a text encoder."""
    return _BREAK.sub(" ", text).strip()


def parse_weights(text: str) -> list[tuple[str, float]]:
    """Split A1111-syntax ``text`` into (fragment, weight) pairs; adjacent equal weights are merged."""
    parts: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for part in parts[start:]:
            part[1] *= factor

    for match in _ATTENTION.finditer(strip_break(text)):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            parts.append([token[1:] if len(token) > 1 else token, 1.0])
        elif token == "(":
            round_open.append(len(parts))
        elif token == "[":
            square_open.append(len(parts))
        elif weight is not None and round_open:
            try:
                factor = float(weight)
            except ValueError:
                parts.append([token, 1.0])
                continue
            scale_from(round_open.pop(), factor)
        elif token == ")" and round_open:
            scale_from(round_open.pop(), ROUND_MULTIPLIER)
        elif token == "]" and square_open:
            scale_from(square_open.pop(), SQUARE_MULTIPLIER)
        else:
            parts.append([token, 1.0])
    for start in round_open:
        scale_from(start, ROUND_MULTIPLIER)
    for start in square_open:
        scale_from(start, SQUARE_MULTIPLIER)
    merged: list[list] = []
    for part in parts:
        if merged and merged[-1][1] == part[1]:
            merged[-1][0] += part[0]
        else:
            merged.append(part)
    return [(text, float(weight)) for text, weight in merged] or [("", 1.0)]


@dataclass(frozen=True)
class TokenChunks:
    """Token ids and per-token weights, each chunk 77 long (BOS + 75 + EOS, padded)."""

    ids: list[list[int]]
    weights: list[list[float]]

    @property
    def count(self) -> int:
        return len(self.ids)


def count_tokens(tokenizer, text: str) -> int:
    """Tokens of ``text`` without BOS/EOS."""
    return len(tokenizer(strip_break(text), add_special_tokens=False, truncation=False)["input_ids"])


def truncation_warning(tokenizer, text: str, field: str) -> str | None:
    """The warning for text beyond the 75-token limit (without use_lpw), or None when it fits."""
    total = count_tokens(tokenizer, text)
    dropped = total - CHUNK_TOKENS
    if dropped <= 0:
        return None
    return f"{field} truncated: {dropped} of {total} tokens beyond the model's {CHUNK_TOKENS}-token limit were dropped (use_lpw=true encodes long prompts)"


def chunk_tokens(tokenizer, fragments: list[tuple[str, float]], *, min_chunks: int = 1) -> TokenChunks:
    """Tokenise weighted fragments and cut them into 77-token chunks (at least ``min_chunks``)."""
    texts = [text for text, _ in fragments]
    tokenised = tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"] if texts else []
    flat_ids: list[int] = []
    flat_weights: list[float] = []
    for ids, (_, weight) in zip(tokenised, fragments, strict=True):
        flat_ids += ids
        flat_weights += [weight] * len(ids)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    ids_out: list[list[int]] = []
    weights_out: list[list[float]] = []
    start = 0
    while start < len(flat_ids) or len(ids_out) < max(1, min_chunks):
        ids = flat_ids[start : start + CHUNK_TOKENS]
        weights = flat_weights[start : start + CHUNK_TOKENS]
        start += CHUNK_TOKENS
        padding = CHUNK_TOKENS - len(ids)
        ids_out.append([bos, *ids, eos] + [pad] * padding)
        weights_out.append([1.0, *weights, 1.0] + [1.0] * padding)
    return TokenChunks(ids_out, weights_out)


def weight_chunk(hidden, weights):
    """A1111's emphasis: scale each token's features by its weight, then restore the chunk's mean."""
    import torch

    multipliers = torch.tensor(weights, dtype=hidden.dtype, device=hidden.device).reshape(1, -1, 1)
    if bool(torch.all(multipliers == 1)):
        return hidden
    original_mean = hidden.float().mean()
    weighted = hidden * multipliers
    return weighted * (original_mean / weighted.float().mean()).to(hidden.dtype)


@dataclass
class EncodedPrompts:
    prompt_embeds: object
    negative_prompt_embeds: object
    pooled_prompt_embeds: object | None = None
    negative_pooled_prompt_embeds: object | None = None

    def pipeline_kwargs(self) -> dict:
        kwargs = {"prompt_embeds": self.prompt_embeds, "negative_prompt_embeds": self.negative_prompt_embeds}
        if self.pooled_prompt_embeds is not None:
            kwargs["pooled_prompt_embeds"] = self.pooled_prompt_embeds
            kwargs["negative_pooled_prompt_embeds"] = self.negative_pooled_prompt_embeds
        return kwargs


class LpwEncoder:
    """Encodes prompt pairs with weights and without a length limit, for the text encoders of one model."""

    def __init__(self, tokenizers: list, text_encoders: list, *, sdxl: bool):
        self.tokenizers = tokenizers
        self.text_encoders = text_encoders
        self.sdxl = sdxl

    def encode(self, prompt: str, negative_prompt: str) -> EncodedPrompts:
        import torch

        positive = parse_weights(prompt)
        negative = parse_weights(negative_prompt)
        first = self.tokenizers[0]
        chunks = max(chunk_tokens(first, positive).count, chunk_tokens(first, negative).count)
        features_pos, features_neg = [], []
        pooled_pos = pooled_neg = None
        with torch.no_grad():
            for tokenizer, encoder in zip(self.tokenizers, self.text_encoders, strict=True):
                pos_chunks = chunk_tokens(tokenizer, positive, min_chunks=chunks)
                neg_chunks = chunk_tokens(tokenizer, negative, min_chunks=chunks)
                z_pos, pooled_pos = self._encode_chunks(encoder, pos_chunks)
                z_neg, pooled_neg = self._encode_chunks(encoder, neg_chunks)
                features_pos.append(z_pos)
                features_neg.append(z_neg)
        prompt_embeds = torch.cat(features_pos, dim=-1)
        negative_embeds = torch.cat(features_neg, dim=-1)
        if not self.sdxl:
            return EncodedPrompts(prompt_embeds, negative_embeds)
        return EncodedPrompts(
            prompt_embeds, negative_embeds, pooled_pos, negative_pooled_prompt_embeds=pooled_neg
        )

    def _encode_chunks(self, encoder, chunks: TokenChunks):
        import torch

        outputs = []
        pooled = None
        for index, (ids, weights) in enumerate(zip(chunks.ids, chunks.weights, strict=True)):
            tokens = torch.tensor([ids], dtype=torch.long, device=encoder.device)
            if self.sdxl:
                result = encoder(tokens, output_hidden_states=True)
                hidden = result.hidden_states[-2]
                if index == 0:
                    pooled = result[0] if result[0].dim() == 2 else None
            else:
                hidden = encoder(tokens)[0]
            outputs.append(weight_chunk(hidden, weights))
        return torch.cat(outputs, dim=1), pooled
