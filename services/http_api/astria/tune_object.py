"""Astria's tune requests and objects over the gateway's registered tunes.

We do not train: a tune is registered from trained weights (a ``.safetensors`` LoRA or checkpoint) sent as
``tune[weights]`` (a file) or fetched by the gateway from ``tune[weights_url]``. Astria's fields map as:
``title`` → the tune's name, ``name`` → its class word (``woman``, ``man``, ...), ``token`` → its trigger
token (Astria's defaults: ``sks`` on sd15, ``ohwx`` on sdxl), ``branch`` → its family (``sd15`` → sd15,
``sdxl1`` → sdxl), ``model_type`` → its kind (``lora``/``faceid``/``pti`` → lora, ``checkpoint``/null →
checkpoint). ``images[]`` become the tune's reference face images (face swap, ``<faceid:ID>``).
Asking for training (images but no weights) is refused with 422 saying how to register weights.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from multipass.errors import InvalidInput, Violation
from multipass.v1 import jobs_pb2
from multipass_http_api.astria.prompt_form import Upload
from multipass_http_api.astria.prompt_object import astria_id, astria_time
from multipass_http_api.text_checks import refuse_unencodable

BRANCHES = {"sd15": "sd15", "sdxl1": "sdxl", "sdxl": "sdxl"}
MODEL_TYPES = {"lora": "lora", "pti": "lora", "faceid": "lora", "checkpoint": "checkpoint", "": "checkpoint"}
DEFAULT_TOKENS = {"sd15": "sks", "sdxl": "ohwx"}
TRAINING_REFUSED = (
    "training is not offered: this service registers tunes from trained weights. Send the weights as "
    "tune[weights] (a .safetensors LoRA or checkpoint file) or tune[weights_url] (an http(s) URL of one); "
    "tune[images][] are then kept as the tune's reference face images. A tune[model_type]=faceid tune needs "
    "no weights: its tune[images][] are the identity"
)
#: Fields accepted and ignored without a warning: training options that have no meaning here.
_TRAINING_OPTIONS = frozenset(
    {"steps", "face_crop", "training_face_correct", "preset", "auto_extend", "base_tune_id"}
)
_SCALARS = frozenset({"title", "name", "token", "branch", "model_type", "weights_url", "sha256", "callback"})


def tune_field(name: str) -> str:
    return f"tune[{name}]"


@dataclass(frozen=True)
class TuneForm:
    title: str = ""
    class_name: str = ""
    token: str = ""
    branch: str = ""
    model_type: str = ""
    weights_url: str = ""
    sha256: str = ""
    weights: Upload | None = None
    images: tuple[Upload, ...] = ()
    image_urls: tuple[str, ...] = ()
    #: ``tune[characteristics]``: names a prompt writes as ``{{name}}``, with their texts.
    characteristics: tuple[tuple[str, str], ...] = ()
    #: ``tune[prompts_attributes][]``: prompts to create on the tune once it is registered, each as its
    #: ``prompt[...]`` (name, value) fields.
    prompts: tuple[tuple[tuple[str, object], ...], ...] = ()
    #: ``tune[callback]``: where the tune object is POSTed once it is ready (here: once registered).
    callback: str = ""
    warnings: tuple[str, ...] = field(default=())

    @property
    def faceid(self) -> bool:
        """A ``model_type=faceid`` tune without weights: its face images are the identity (no training)."""
        return self.model_type == "faceid" and self.weights is None and not self.weights_url

    @property
    def family(self) -> str:
        return BRANCHES.get(self.branch or "sd15", "")

    def metadata(self) -> jobs_pb2.TuneMetadata:
        """The gateway's registration metadata (reference image ids are added once uploaded)."""
        family = self.family
        return jobs_pb2.TuneMetadata(
            name=self.title,
            token=self.token or DEFAULT_TOKENS.get(family, "sks"),
            class_name=self.class_name,
            base_family=family,
            kind="faceid" if self.faceid else MODEL_TYPES[self.model_type],
            url=self.weights_url,
            sha256=self.sha256,
            characteristics=dict(self.characteristics),
            reference_image_urls=list(self.image_urls),
        )

    def check(self) -> None:
        """InvalidInput naming every field the gateway would not be asked about."""
        problems: list[Violation] = []
        if len(self.prompts) > MAX_PROMPTS:
            problems.append(
                Violation(
                    tune_field("prompts_attributes"),
                    f"got {len(self.prompts)} prompts; at most {MAX_PROMPTS}",
                )
            )
        if not self.class_name:
            problems.append(
                Violation(tune_field("name"), "is required: the class word, e.g. woman, man, dog")
            )
        if not self.title:
            problems.append(Violation(tune_field("title"), "is required"))
        if self.branch and self.branch not in BRANCHES:
            why = {
                "fast": "Astria's mock training branch; here a tune is its trained weights, registered as sd15 "
                "or sdxl1",
                "flux1": "Flux models are not served here",
            }.get(self.branch)
            problems.append(
                Violation(
                    tune_field("branch"),
                    f"got {self.branch[:40]!r}; expected one of sd15, sdxl1" + (f" ({why})" if why else ""),
                )
            )
        if self.model_type not in MODEL_TYPES:
            problems.append(
                Violation(
                    tune_field("model_type"),
                    f"got {self.model_type[:40]!r}; expected lora, faceid, pti or checkpoint (null)",
                )
            )
        if self.weights is not None and self.weights_url:
            problems.append(
                Violation(tune_field("weights_url"), "give tune[weights] or tune[weights_url], not both")
            )
        if self.faceid:
            if not self.images and not self.image_urls:
                problems.append(
                    Violation(
                        "tune[images][]",
                        "a faceid tune needs at least one face image (tune[images][] or tune[image_urls][])",
                    )
                )
        elif self.weights is None and not self.weights_url:
            problems.append(Violation(tune_field("weights"), TRAINING_REFUSED))
        if problems:
            raise InvalidInput.of(problems)


def _text(name: str, value: object, problems: list[Violation]) -> str:
    if value is None:
        return ""
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value).strip()
    problems.append(Violation(tune_field(name), f"got a {type(value).__name__}; expected a string"))
    return ""


def build_tune_form(fields: Iterable[tuple[str, object]]) -> TuneForm:
    """The form from (name, value) pairs, names without the ``tune[...]`` wrapper; lists as ``images[]``."""
    problems: list[Violation] = []
    warnings: list[str] = []
    scalars: dict[str, str] = {}
    weights: Upload | None = None
    images: list[Upload] = []
    image_urls: list[str] = []
    characteristics: dict[str, str] = {}
    prompts = _Prompts()
    for name, value in fields:
        key = name.removesuffix("[]")
        if key == "prompts_attributes" or key.startswith("prompts_attributes]"):
            prompts.add(key, value, problems)
        elif key == "characteristics" or key.startswith("characteristics["):
            _characteristics(key, value, characteristics, problems)
        elif key == "weights":
            if isinstance(value, Upload):
                weights = value if value.data else None
            elif value not in (None, ""):
                problems.append(
                    Violation(tune_field("weights"), "expected a file upload (or tune[weights_url])")
                )
        elif key == "images":
            values = value if isinstance(value, list) else [value]
            for item in values:
                if isinstance(item, Upload):
                    images.append(item)
                elif item not in (None, ""):
                    problems.append(Violation("tune[images][]", "expected image file uploads"))
        elif key == "image_urls":
            values = value if isinstance(value, list) else [value]
            image_urls += [text for item in values if (text := _text("image_urls", item, problems))]
        elif key in _SCALARS:
            if isinstance(value, Upload):
                problems.append(Violation(tune_field(key), "got a file; expected a value"))
            else:
                scalars[key] = _text(key, value, problems)
        elif key in _TRAINING_OPTIONS:
            warnings.append(f"tune[{key}] ignored: tunes are registered from trained weights, not trained")
        else:
            warnings.append(f"unknown field tune[{name}] ignored")
    if problems:
        raise InvalidInput.of(problems)
    return TuneForm(
        title=scalars.get("title", ""),
        class_name=scalars.get("name", ""),
        token=scalars.get("token", ""),
        branch=scalars.get("branch", ""),
        model_type=scalars.get("model_type", "").lower(),
        weights_url=scalars.get("weights_url", ""),
        sha256=scalars.get("sha256", ""),
        weights=weights,
        images=tuple(images),
        image_urls=tuple(image_urls),
        characteristics=tuple(characteristics.items()),
        prompts=prompts.entries(),
        callback=scalars.get("callback", ""),
        warnings=tuple(dict.fromkeys(warnings)),
    )


_PROMPT_FIELD = re.compile(r"^\[([0-9]{0,4})\]\[([A-Za-z_]{1,40})\]$")
#: Most prompts one tune registration creates (``tune[prompts_attributes]``).
MAX_PROMPTS = 16


class _Prompts:
    """``tune[prompts_attributes]``: a JSON list of prompt objects, or form fields
    ``tune[prompts_attributes][N][text]`` (indexed) / ``tune[prompts_attributes][][text]`` (a field that
    repeats starts the next prompt, as Rails reads them)."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, object]] = {}
        self._open = 0

    def add(self, key: str, value: object, problems: list[Violation]) -> None:
        if key == "prompts_attributes":
            value = json_in_form(tune_field("prompts_attributes"), value)
            if not isinstance(value, list) or not all(isinstance(item, Mapping) for item in value):
                problems.append(
                    Violation(
                        tune_field("prompts_attributes"),
                        'expected a list of prompt objects, e.g. [{"text": "ohwx woman, portrait"}]',
                    )
                )
                return
            for item in value:
                self._entries[str(len(self._entries))] = {str(k): v for k, v in item.items()}
            return
        # prompts_attributes][N][field] or prompts_attributes][][field]
        parts = _PROMPT_FIELD.match(key[len("prompts_attributes]") :])
        if parts is None:
            problems.append(
                Violation(
                    tune_field("prompts_attributes"),
                    f"cannot read tune[{key[:60]}]; expected tune[prompts_attributes][N][field]",
                )
            )
            return
        index, name = parts.groups()
        if not index:
            current = self._entries.get(f"+{self._open}")
            if current is not None and name in current:
                self._open += 1
            index = f"+{self._open}"
        self._entries.setdefault(index, {})[name] = value

    def entries(self) -> tuple[tuple[tuple[str, object], ...], ...]:
        def order(index: str) -> tuple[int, int]:
            return (1, int(index[1:])) if index.startswith("+") else (0, int(index) if index.isdigit() else 0)

        return tuple(tuple(self._entries[i].items()) for i in sorted(self._entries, key=order))


def json_in_form(name: str, value: object) -> object:
    """A form field's JSON text as its object or list (``tune[characteristics]={"eye_color": "blue"}``,
    as Astria's clients send objects in multipart bodies); any other value as it is. InvalidInput names
    the field (``name``) when the JSON holds text no protobuf string can carry."""
    if isinstance(value, str) and value.strip()[:1] in ("{", "["):
        try:
            decoded = json.loads(value)
        except (ValueError, RecursionError):
            return value
        refuse_unencodable({name: decoded})
        return decoded
    return value


def _characteristics(key: str, value: object, into: dict[str, str], problems: list[Violation]) -> None:
    """``tune[characteristics]`` as a JSON object, or ``tune[characteristics][NAME]`` form fields (the
    gateway checks the names and values themselves)."""
    if key != "characteristics":  # characteristics[NAME]
        name = key[len("characteristics[") :].removesuffix("]")
        into[name] = _text(f"characteristics][{name}", value, problems)
        return
    value = json_in_form(tune_field("characteristics"), value)
    if isinstance(value, Mapping):
        for name, text in value.items():
            into[str(name)] = _text(f"characteristics][{name}", text, problems)
    elif value not in (None, ""):
        problems.append(
            Violation(
                tune_field("characteristics"),
                'expected an object of names and texts, e.g. {"eye_color": "blue eyes"}',
            )
        )


def tune_from_json(body: object) -> TuneForm:
    if not isinstance(body, Mapping) or not isinstance(body.get("tune"), Mapping):
        raise InvalidInput.of([Violation("tune", 'expected a JSON object {"tune": {...}}')])
    extra = [f"unknown field {key} ignored" for key in body if key != "tune"]
    form = build_tune_form(body["tune"].items())
    return TuneForm(**{**form.__dict__, "warnings": tuple(dict.fromkeys([*extra, *form.warnings]))})


def tune_from_multipart(items: Iterable[tuple[str, object]]) -> TuneForm:
    fields, extra = _form_fields(items)
    form = build_tune_form(fields)
    return TuneForm(**{**form.__dict__, "warnings": tuple(dict.fromkeys([*extra, *form.warnings]))})


def _form_fields(items: Iterable[tuple[str, object]]) -> tuple[list[tuple[str, object]], list[str]]:
    """``tune[...]`` form fields as (name, value) pairs without the wrapper, and warnings for the others."""
    fields: list[tuple[str, object]] = []
    extra: list[str] = []
    for key, value in items:
        if key.startswith("tune[") and "]" in key:
            inner, _, rest = key[5:].partition("]")
            if inner == "characteristics" and rest.startswith("[") and rest.endswith("]") and rest != "[]":
                fields.append((inner + rest, value))  # tune[characteristics][NAME]
                continue
            if inner == "prompts_attributes" and rest.startswith("[") and rest.count("[") == 2:
                fields.append((f"{inner}]{rest}", value))  # tune[prompts_attributes][N][field]
                continue
            fields.append((inner + ("[]" if rest == "[]" else ""), value))
        else:
            extra.append(f"unknown field {key} ignored")
    return fields, extra


#: What ``PATCH /tunes/:id`` changes: Astria field -> UpdateTuneRequest field.
UPDATABLE = {"title": "name", "name": "class_name", "characteristics": "characteristics"}


def tune_update(kind: str, body: object) -> tuple[jobs_pb2.UpdateTuneRequest, tuple[str, ...]]:
    """The gateway's update of a ``PATCH /tunes/:id`` body (JSON ``{"tune": {...}}`` or ``tune[...]`` form
    fields), and warnings for the fields that cannot change."""
    if kind == "form":
        fields, extra = _form_fields(body)  # type: ignore[arg-type]
    else:
        if not isinstance(body, Mapping) or not isinstance(body.get("tune"), Mapping):
            raise InvalidInput.of([Violation("tune", 'expected a JSON object {"tune": {...}}')])
        fields = list(body["tune"].items())
        extra = [f"unknown field {key} ignored" for key in body if key != "tune"]
    form = build_tune_form(fields)
    given = dict.fromkeys(name.removesuffix("[]").split("[")[0] for name, _value in fields)
    request = jobs_pb2.UpdateTuneRequest()
    values = {"title": form.title, "name": form.class_name}
    warnings = list(extra)
    for name in given:
        if name == "characteristics":
            request.characteristics.update(dict(form.characteristics))
        elif name in values:
            setattr(request, UPDATABLE[name], values[name])
        elif name not in _TRAINING_OPTIONS:  # those are warned about by build_tune_form
            warnings.append(
                f"tune[{name}] ignored: only tune[title], tune[name] and tune[characteristics] can change "
                "(register a new tune for other changes)"
            )
            continue
        else:
            continue
        request.update_mask.paths.append(UPDATABLE[name])
    return request, tuple(dict.fromkeys([*warnings, *form.warnings]))


def tune_object(
    tune: jobs_pb2.Tune, *, base_url: str, warnings: Iterable[str] = (), callback: str | None = None
) -> dict[str, object]:
    """The Astria tune object of a registered tune (registered weights count as trained when stored)."""
    created = astria_time(tune.created_at)
    updated = astria_time(tune.updated_at) if tune.HasField("updated_at") else created
    branch = {"sd15": "sd15", "sdxl": "sdxl1"}.get(tune.base_family, tune.base_family)
    obj: dict[str, object] = {
        "id": astria_id(tune.tune_id),
        "title": tune.name,
        "name": tune.class_name,
        "token": tune.token,
        "base_tune_id": None,
        "args": None,
        "steps": None,
        "face_crop": None,
        "training_face_correct": None,
        "ckpt_url": None,
        "ckpt_urls": [],
        "eta": None,
        "trained_at": created,
        "started_training_at": created,
        "expires_at": None,
        "created_at": created,
        "updated_at": updated,
        "branch": branch,
        "model_type": {"lora": "lora", "faceid": "faceid"}.get(tune.kind),
        "url": f"{base_url}/tunes/{tune.tune_id}.json",
        "orig_images": list(tune.reference_image_urls),
        "is_api": True,
        "callback": callback or None,
        "characteristics": dict(tune.characteristics),
    }
    if warnings:
        obj["warnings"] = list(warnings)
    return obj
