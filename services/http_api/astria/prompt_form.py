"""An Astria prompt request (multipart ``prompt[...]`` fields or JSON ``{"prompt": {...}}``) as a typed form.

Parameters keep their Astria names, which are also the gateway's ``SubmitJobRequest.params`` names, and
travel as strings: the gateway (its prompt parser) validates every value and names the field. This module
only normalises what Astria clients send differently (JSON numbers and booleans, ``"1"``/``"0"``, empty
strings for "unset") and sets aside what the gateway does not take: the text, the callback, uploaded files
and unknown fields, which Astria ignores; we ignore them too and say so in ``warnings``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from multipass.errors import InvalidInput, Violation

#: Fields passed to the gateway as ``params`` under the same name.
PARAMS = (
    "negative_prompt",
    "num_images",
    "seed",
    "steps",
    "cfg_scale",
    "w",
    "h",
    "super_resolution",
    "inpaint_faces",
    "face_correct",
    "face_swap",
    "hires_fix",
    "film_grain",
    "color_grading",
    "ar",
    "scheduler",
    "use_lpw",
    "controlnet",
    "controlnet_txt2img",
    "controlnet_conditioning_scale",
    "denoising_strength",
    "input_image_url",
    "mask_image_url",
    "prompt_expansion",
)
BOOLEAN_PARAMS = frozenset(
    {
        "super_resolution",
        "inpaint_faces",
        "face_correct",
        "face_swap",
        "hires_fix",
        "film_grain",
        "use_lpw",
        "controlnet_txt2img",
        "prompt_expansion",
    }
)
#: Astria's other names of a parameter (its prompt-create docs list ``aspect_ratio``; its answers and the
#: prompt language say ``ar``): the value is the parameter's.
ALIASES = {"aspect_ratio": "ar"}
#: File fields and the gateway field an upload of them becomes.
FILE_FIELDS = ("input_image", "mask_image")
_TRUE = frozenset({"true", "1", "t", "yes", "on"})
_FALSE = frozenset({"false", "0", "f", "no", "off"})
#: Floats up to this are integers exactly: a whole one is sent as the integer it is.
_EXACT_FLOAT_INTEGER = 2**53
MAX_TEXT_CHARS = 20_000
MAX_VALUE_CHARS = 2_048


def form_field(name: str) -> str:
    """The Astria spelling of a prompt field: ``prompt[name]``."""
    return f"prompt[{name}]"


@dataclass(frozen=True)
class Upload:
    """A file sent in a multipart body."""

    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class PromptForm:
    text: str | None = None
    #: Gateway parameters by Astria name; only the fields the request gave.
    params: dict[str, str] = field(default_factory=dict)
    callback: str | None = None
    uploads: dict[str, Upload] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    #: Gateway fields the request gave under another name (``params.ar`` → ``prompt[aspect_ratio]``), so
    #: that a refusal names the field the client sent.
    field_names: dict[str, str] = field(default_factory=dict)

    def merged_over(self, original: PromptForm) -> PromptForm:
        """This form's fields over ``original``'s (a duplicate with overrides)."""
        return PromptForm(
            text=self.text if self.text is not None else original.text,
            params={**original.params, **self.params},
            callback=self.callback if self.callback is not None else original.callback,
            uploads={**original.uploads, **self.uploads},
            warnings=self.warnings,
            field_names={**original.field_names, **self.field_names},
        )


def _scalar(name: str, value: object, problems: list[Violation]) -> str | None:
    """A JSON or form value as the gateway's string form; None for null (unset)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) <= _EXACT_FLOAT_INTEGER:
        return str(int(value))  # 2.0 is the number 2 (JSON has one number type; clients write either)
    if isinstance(value, int | float):
        return repr(value) if isinstance(value, float) else str(value)
    if isinstance(value, str):
        limit = MAX_TEXT_CHARS if name in ("text", "negative_prompt") else MAX_VALUE_CHARS
        if len(value) > limit:
            problems.append(Violation(form_field(name), f"is {len(value)} characters; at most {limit}"))
            return None
        return value
    problems.append(Violation(form_field(name), f"got a {type(value).__name__}; expected a string or number"))
    return None


def _boolean(name: str, value: str, problems: list[Violation]) -> str | None:
    """``"true"``/``"false"``; None for an empty value (unset: the text's block or the default decides)."""
    lowered = value.strip().lower()
    if not lowered:
        return None
    if lowered in _TRUE:
        return "true"
    if lowered in _FALSE:
        return "false"
    problems.append(
        Violation(
            form_field(name),
            f"got {value[:40]!r}; expected true or false (also 1/0, yes/no, on/off, t/f), or empty for unset",
        )
    )
    return None


def build_form(fields: Iterable[tuple[str, object]]) -> PromptForm:
    """The form from (name, value) pairs, names without the ``prompt[...]`` wrapper.

    Values are strings, JSON scalars or :class:`Upload`. InvalidInput names every malformed field.
    """
    problems: list[Violation] = []
    warnings: list[str] = []
    text: str | None = None
    callback: str | None = None
    params: dict[str, str] = {}
    uploads: dict[str, Upload] = {}
    aliased: dict[str, str] = {}
    for name, value in fields:
        if name in FILE_FIELDS:
            if isinstance(value, Upload):
                if value.data:
                    uploads[name] = value
                continue
            if value in (None, ""):
                continue
            problems.append(Violation(form_field(name), "expected a file upload (or use " + f"{name}_url)"))
            continue
        if isinstance(value, Upload):
            if name in PARAMS or name in ("text", "callback"):
                problems.append(Violation(form_field(name), "got a file; expected a value"))
            else:
                warnings.append(f"unknown field {form_field(name)} ignored")
            continue
        if name not in PARAMS and name not in ALIASES and name not in ("text", "callback"):
            warnings.append(f"unknown field {form_field(name)} ignored")
            continue
        scalar = _scalar(name, value, problems)
        if scalar is None:
            continue
        if name in ALIASES:
            if scalar.strip():
                aliased[name] = scalar.strip()
        elif name == "text":
            text = scalar
        elif name == "callback":
            callback = scalar.strip() or None
        elif name in BOOLEAN_PARAMS:
            flag = _boolean(name, scalar, problems)
            if flag is not None:
                params[name] = flag
        elif scalar.strip():
            params[name] = scalar.strip() if name != "negative_prompt" else scalar
    field_names = _aliases(aliased, params, problems)
    if problems:
        raise InvalidInput.of(problems)
    return PromptForm(text, params, callback, uploads, tuple(dict.fromkeys(warnings)), field_names)


def _aliases(aliased: dict[str, str], params: dict[str, str], problems: list[Violation]) -> dict[str, str]:
    """Parameters given under another name (:data:`ALIASES`) set into ``params``; a value that differs
    from the one given under the parameter's own name is a problem. The gateway fields so named."""
    names: dict[str, str] = {}
    for alias, value in aliased.items():
        target = ALIASES[alias]
        if params.get(target, value) != value:
            problems.append(
                Violation(
                    form_field(alias),
                    f"got {value[:40]!r} and {form_field(target)} {params[target][:40]!r}: give one of them",
                )
            )
            continue
        params[target] = value
        names[f"params.{target}"] = form_field(alias)
    return names


def _inner_name(key: str, root: str) -> str | None:
    """``prompt[steps]`` → ``steps``; None for a key outside ``root[...]``."""
    prefix = f"{root}["
    if key.startswith(prefix) and key.endswith("]"):
        return key[len(prefix) : -1]
    return None


def from_multipart(items: Iterable[tuple[str, object]]) -> PromptForm:
    """The form from multipart/urlencoded items (``prompt[text]=...``); other top-level keys are ignored."""
    fields: list[tuple[str, object]] = []
    ignored: list[str] = []
    for key, value in items:
        name = _inner_name(key, "prompt")
        if name is None:
            ignored.append(f"unknown field {key} ignored")
        else:
            fields.append((name, value))
    form = build_form(fields)
    return replace(form, warnings=tuple(dict.fromkeys([*ignored, *form.warnings])))


def from_json(body: object) -> PromptForm:
    """The form from a JSON body ``{"prompt": {...}}`` (a flat object is accepted as the prompt itself)."""
    if not isinstance(body, Mapping):
        raise InvalidInput.of([Violation("prompt", 'expected a JSON object {"prompt": {...}}')])
    inner = body.get("prompt", body) if "prompt" in body else body
    if not isinstance(inner, Mapping):
        raise InvalidInput.of([Violation("prompt", "expected an object of prompt fields")])
    extra = [f"unknown field {key} ignored" for key in body if key != "prompt"] if inner is not body else []
    form = build_form(inner.items())
    return replace(form, warnings=tuple(dict.fromkeys([*extra, *form.warnings])))


def _param_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def form_of_job(job, text: str, callback: str | None) -> PromptForm:
    """The form that would create ``job`` again (``POST /prompts/{id}/duplicate``): its text, the
    parameters its request set explicitly, its callback. The route adds the job's input and mask images
    (read back from the store)."""
    params = job.parsed.params
    explicit = set(job.parsed.explicit_params)
    values = {name: _param_text(getattr(params, name)) for name in PARAMS if name in explicit}
    if values.get("controlnet") == "":
        values["controlnet"] = "none"  # turned off over the text's block: an empty value would read as unset
    return PromptForm(text=text, params=values, callback=callback)
