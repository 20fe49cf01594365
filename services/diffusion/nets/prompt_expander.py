"""The prompt expander of ``prompt_expander/``: a small causal language model that continues a prompt.

The model is ``<MODEL_DIR>/diffusion/prompt_expander/`` in transformers format (``config.json``,
weights, tokenizer files), e.g. a GPT-2 fine-tuned on image prompts. Decoding is greedy (deterministic)
unless ``temperature`` > 0, in which case it samples with ``seed``; at most ``max_new_tokens`` tokens are
added. The continuation is cut at the first line break, stripped of control characters and undecodable
bytes, and appended to the prompt. Without an installed model the request fails with
``FailedPrecondition`` naming the directory: expansion is never silently skipped.
"""

from __future__ import annotations

import threading
import unicodedata
from functools import lru_cache
from pathlib import Path

from multipass.errors import FailedPrecondition, InvalidInput, Violation
from multipass_diffusion.nets import components

MAX_NEW_TOKENS = 256
#: Prompt tokens kept (the end of a longer prompt) so prompt + continuation fits small models.
MAX_PROMPT_TOKENS = 256


class PromptExpander:
    def __init__(self, directory: Path):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.directory = Path(directory)
        self.tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True).eval()
        self._lock = threading.Lock()

    def expand(self, prompt: str, *, max_new_tokens: int, seed: int, temperature: float = 0.0) -> str:
        import torch

        encoded = self.tokenizer(prompt, return_tensors="pt")
        input_ids = encoded["input_ids"][:, -MAX_PROMPT_TOKENS:]
        limit = getattr(self.model.config, "max_position_embeddings", None) or getattr(
            self.model.config, "n_positions", None
        )
        if limit:
            max_new_tokens = max(0, min(max_new_tokens, int(limit) - input_ids.shape[1]))
        if max_new_tokens == 0:
            return prompt
        eos = self.tokenizer.eos_token_id
        kwargs = dict(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos,
            eos_token_id=eos,
        )
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_k=50)
        else:
            kwargs.update(do_sample=False)
        with self._lock, torch.random.fork_rng(devices=[]), torch.inference_mode():
            torch.manual_seed(int(seed))
            output = self.model.generate(**kwargs)
        new_tokens = output[0, input_ids.shape[1] :]
        text = self.tokenizer.decode(new_tokens, skip_special_tokens=True)
        return join(prompt, clean(text))


def clean(text: str) -> str:
    """First line of ``text`` without control characters or replacement characters, spaces collapsed."""
    line = text.replace("\r", "\n").split("\n", 1)[0]
    kept = "".join(ch for ch in line if ch != "\ufffd" and not unicodedata.category(ch).startswith("C"))
    return " ".join(kept.split())


def join(prompt: str, continuation: str) -> str:
    base = prompt.rstrip()
    if not continuation:
        return base
    if continuation[0] in ",.;:!?)":
        return base + continuation
    return f"{base} {continuation}"


@lru_cache(maxsize=2)
def _expander(directory: str, fingerprint: str) -> PromptExpander:
    return PromptExpander(Path(directory))


def expand_prompt(
    model_dir: Path, prompt: str, *, max_new_tokens: int = 48, seed: int = 0, temperature: float = 0.0
) -> str:
    """``prompt`` continued by the prompt expander under ``model_dir`` (the MULTIPASS_MODEL_DIR root)."""
    if not prompt.strip():
        raise InvalidInput.of([Violation("prompt", "is empty; there is nothing to expand")])
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise InvalidInput.of(
            [Violation("max_new_tokens", f"got {max_new_tokens}; expected 1..{MAX_NEW_TOKENS}")]
        )
    if not 0.0 <= temperature <= 2.0:
        raise InvalidInput.of([Violation("temperature", f"got {temperature:g}; expected 0..2")])
    directory = components.component_dir(model_dir, components.PROMPT_EXPANDER)
    if not directory.is_dir():
        raise FailedPrecondition(
            f"prompt expansion needs a causal language model in {directory}, which does not exist"
        )
    components.require(model_dir, components.PROMPT_EXPANDER, needed_by="prompt expansion")
    expander = _expander(str(directory), components.fingerprint(model_dir, components.PROMPT_EXPANDER))
    return expander.expand(prompt, max_new_tokens=max_new_tokens, seed=seed, temperature=temperature)
