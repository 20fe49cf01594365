"""The ``prompt_expansion`` pass option: the prompt continued by the prompt expander before sampling.

The gateway asks for it with ``options["prompt_expansion"] = "true"`` on the base pass (and hires): the
engine calls :func:`expand_spec` before the pass-cache key is computed, so the key holds the expanded
prompt, and the pass samples with it; :func:`expansion_report` is what the pass result says about it.
The model: :mod:`multipass_diffusion.nets.prompt_expander`.
"""

from __future__ import annotations

from pathlib import Path

from multipass.errors import InvalidInput, Violation
from multipass.v1 import diffusion_pb2
from multipass_diffusion.nets.prompt_expander import MAX_NEW_TOKENS, expand_prompt
from multipass_diffusion.spec_options import option_int

#: ``spec.options`` keys: switch (true/false) and the most tokens added (1..MAX_NEW_TOKENS).
OPTION = "prompt_expansion"
TOKENS_OPTION = "prompt_expansion_tokens"
DEFAULT_NEW_TOKENS = 48
#: Pass kinds that sample with ``spec.prompt`` (the others refuse the option).
EXPANDING_KINDS = ("base", "person", "hires", "faces")
_ON = ("true", "on", "yes", "1")
_OFF = ("", "false", "off", "no", "0")


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
