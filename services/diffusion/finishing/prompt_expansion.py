"""Prompt expansion: continue a short prompt with a small causal language model.

The model is ``<MODEL_DIR>/diffusion/prompt_expander/`` in transformers format (``config.json``,
weights, tokenizer files), e.g. a GPT-2 fine-tuned on image prompts. Decoding is greedy (deterministic)
unless ``temperature`` > 0, in which case it samples with ``seed``; at most ``max_new_tokens`` tokens are
added. The continuation is cut at the first line break, stripped of control characters and undecodable
bytes, and appended to the prompt. Without an installed model the request fails with
``FailedPrecondition`` naming the directory: expansion is never silently skipped.

As a pass option (the gateway asks for it with ``options["prompt_expansion"] = "true"`` on the base pass):
the engine calls :func:`expand_spec` before the pass-cache key is computed, so the key holds the expanded
prompt, and the pass samples with it; :func:`expansion_report` is what the pass result says about it.
"""

from __future__ import annotations

import threading
import unicodedata
from functools import lru_cache
from pathlib import Path

from multipass.errors import FailedPrecondition, InvalidInput, Violation
from multipass.v1 import diffusion_pb2
from multipass_diffusion.finishing import components
from multipass_diffusion.finishing.options import option_int

MAX_NEW_TOKENS = 256
#: ``spec.options`` keys: switch (true/false) and the most tokens added (1..MAX_NEW_TOKENS).
OPTION = "prompt_expansion"
TOKENS_OPTION = "prompt_expansion_tokens"
DEFAULT_NEW_TOKENS = 48
#: Pass kinds that sample with ``spec.prompt`` (the others refuse the option).
EXPANDING_KINDS = ("base", "person", "hires", "faces")
_ON = ("true", "on", "yes", "1")
_OFF = ("", "false", "off", "no", "0")
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


def requested(spec: diffusion_pb2.PassSpec) -> bool:
    """Whether ``spec.options`` asks for prompt expansion; InvalidInput for a bad value or pass kind."""
    raw = spec.options.get(OPTION, "").strip().lower()
    if raw in _OFF:
        return False
    field = f"spec.options[{OPTION}]"
    if raw not in _ON:
        raise InvalidInput.of([Violation(field, f"got {raw!r}; expected true or false")])
    if spec.kind not in EXPANDING_KINDS:
        raise InvalidInput.of(
            [
                Violation(
                    field,
                    f"the {spec.kind} pass samples with no prompt; expansion applies to {', '.join(EXPANDING_KINDS)}",
                )
            ]
        )
    option_int(spec, TOKENS_OPTION, DEFAULT_NEW_TOKENS, low=1, high=MAX_NEW_TOKENS)
    return True


def expand_spec(spec: diffusion_pb2.PassSpec, model_dir: Path) -> tuple[diffusion_pb2.PassSpec, str | None]:
    """(the spec with its prompt expanded, the expanded prompt); (spec, None) when the prompt is empty.

    Greedy decoding, seeded by ``spec.seed``: the same prompt and seed always expand the same way, so the
    base and hires passes of one image agree. FailedPrecondition when the prompt expander is not installed.
    """
    if not spec.prompt.strip():
        return spec, None
    tokens = option_int(spec, TOKENS_OPTION, DEFAULT_NEW_TOKENS, low=1, high=MAX_NEW_TOKENS)
    expanded = expand_prompt(model_dir, spec.prompt, max_new_tokens=tokens, seed=spec.seed)
    result = diffusion_pb2.PassSpec()
    result.CopyFrom(spec)
    result.prompt = expanded
    return result, expanded


def expansion_report(original: str, expanded: str | None) -> tuple[list[str], dict[str, str]]:
    """(warnings, metadata) of an expansion for the pass result."""
    if expanded is None:
        return ["prompt_expansion skipped: the prompt is empty"], {}
    if expanded == original.rstrip():
        note = "prompt_expansion added nothing to the prompt"
    else:
        note = f"prompt_expansion: the prompt became {expanded!r}"
    return [note], {"expanded_prompt": expanded}
