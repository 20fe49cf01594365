"""Parsing one prompt document into a :class:`ParsedPrompt`: the language's single entry point.

Pure: no gRPC, no I/O. Every problem in the input is collected and raised at the end as one
:class:`multipass.errors.InvalidInput` with one violation per problem; any other exception is a bug.

Order of work: the trailing parameter block is split off (``document``), inline flags are removed from
the text (``flags``), the rest is split on BREAK (``breaks``), model tags are taken out of each segment
(``tags``), parameters are read (``params``), the negative prompt is split the same way, and the
rules that span several parts are checked (``rules``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from multipass_prompt_parser import rules
from multipass_prompt_parser.breaks import break_lookalikes, join, split_on_break, tidy
from multipass_prompt_parser.document import split_document
from multipass_prompt_parser.flags import FlagValues, extract_flags
from multipass_prompt_parser.language import HIRES_DENOISING_DEFAULT, Limits, shorten
from multipass_prompt_parser.model import MaskSpec, ParsedPrompt, Person
from multipass_prompt_parser.params import resolve_params
from multipass_prompt_parser.problems import Problems
from multipass_prompt_parser.tags import ModelTag, extract_tags, find_tag_starts

DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Segment:
    """One BREAK segment with its tags taken out."""

    index: int
    text: str
    tags: tuple[ModelTag, ...]

    @property
    def name(self) -> str:
        return segment_name(self.index)


def segment_name(index: int) -> str:
    if index == 0:
        return "the base segment"
    if index == 1:
        return "the common segment"
    return f"person {index - 2} (segment {index})"


def parse_prompt(
    text: str,
    params: Mapping[str, str] | None = None,
    *,
    limits: Limits = DEFAULT_LIMITS,
    has_input_image: bool = False,
    has_mask_image: bool = False,
) -> ParsedPrompt:
    """Parse a prompt document; ``params`` override its parameter block.

    ``has_input_image`` / ``has_mask_image`` say that the caller supplies such an image by other means
    than a URL parameter (an upload). Raises InvalidInput listing every problem found.
    """
    problems = Problems()
    if len(text) > limits.max_prompt_chars:
        problems.add(
            "text",
            f"the prompt document has {len(text)} characters; at most {limits.max_prompt_chars} are allowed",
        )
        problems.raise_if_any()

    document = split_document(text, problems)
    body, flags = extract_flags(document.text, problems, limits)
    values = resolve_params(document.block, params or {}, problems, limits)
    raw_segments = split_on_break(body)
    segments = [_segment(index, raw, problems) for index, raw in enumerate(raw_segments)]
    base = segments[0]
    common = segments[1] if len(segments) > 1 else Segment(1, "", ())
    person_segments = segments[2:]
    _check_person_segments(person_segments, problems, limits)
    _check_repeated_tunes(base, common, person_segments, problems)

    negative_base, negative_common, person_negatives = _split_negative(
        values.params.negative_prompt, len(person_segments), problems
    )
    person_negatives += [""] * (len(person_segments) - len(person_negatives))
    persons = tuple(
        Person(
            index=segment.index - 2,
            prompt=segment.text,
            negative_prompt=negative,
            loras=segment.tags + common.tags,
            effective_prompt=join(segment.text, common.text),
            effective_negative_prompt=join(negative, negative_common),
        )
        for segment, negative in zip(person_segments, person_negatives, strict=False)
    )
    context = rules.Context(
        base_text=base.text,
        common_text=common.text,
        base_tags=base.tags,
        common_tags=common.tags,
        persons=persons,
        multi_pass=len(raw_segments) > 1,
        flags=flags,
        values=values,
        has_input_image=has_input_image,
        has_mask_image=has_mask_image,
    )
    warnings = rules.check(context, problems)
    problems.raise_if_any()

    return ParsedPrompt(
        base_prompt=base.text,
        common_prompt=common.text,
        base_effective_prompt=join(base.text, common.text),
        base_loras=base.tags + common.tags,
        common_loras=common.tags,
        persons=persons,
        negative_base=negative_base,
        negative_common=negative_common,
        base_effective_negative_prompt=join(negative_base, negative_common),
        mask=_mask(flags),
        hires_denoising_strength=(
            flags.hires_denoising_strength
            if flags.hires_denoising_strength is not None
            else HIRES_DENOISING_DEFAULT
        ),
        tiled_upscale=flags.tiled_upscale,
        only_upscale=flags.only_upscale,
        keep_background=context.keep_background,
        multi_pass=context.multi_pass,
        params=values.params,
        explicit_params=tuple(sorted(values.explicit)),
        warnings=(*document.warnings, *break_lookalikes(body), *values.warnings, *warnings),
    )


def _segment(index: int, raw: str, problems: Problems) -> Segment:
    text, tags = extract_tags(raw, problems, segment_name(index))
    return Segment(index=index, text=tidy(text), tags=tuple(tags))


def _check_person_segments(persons: Sequence[Segment], problems: Problems, limits: Limits) -> None:
    if len(persons) > limits.max_persons:
        problems.add(
            "text",
            f"the prompt has {len(persons)} person segments (BREAK segments after the base and common "
            f"ones); at most {limits.max_persons} are allowed",
        )
        return
    for segment in persons:
        if not segment.text and not segment.tags:
            problems.add(
                "text",
                f"{segment.name} is empty; write who the person is, e.g. 'ohwx woman <lora:TUNE_ID:1>', "
                "or remove the extra BREAK",
            )


def _check_repeated_tunes(
    base: Segment, common: Segment, persons: Sequence[Segment], problems: Problems
) -> None:
    """A tune may appear once per pass: once in a segment, and not again in a segment that shares
    the pass with the common segment."""
    common_tunes = {(tag.kind, tag.tune_id) for tag in common.tags}
    for segment in (base, common, *persons):
        seen: set[tuple[str, str]] = set()
        for tag in segment.tags:
            key = (tag.kind, tag.tune_id)
            if key in seen:
                problems.add(
                    f"tag {shorten(tag.tag)}",
                    f"tune {tag.tune_id!r} appears twice in {segment.name}; keep one tag",
                )
            elif segment is not common and key in common_tunes:
                problems.add(
                    f"tag {shorten(tag.tag)}",
                    f"tune {tag.tune_id!r} in {segment.name} is already in the common segment, "
                    "which applies to every pass; keep one tag",
                )
            seen.add(key)


def _split_negative(negative: str, person_count: int, problems: Problems) -> tuple[str, str, list[str]]:
    """Negative base, negative common and person negatives. Without BREAK the whole negative prompt
    is common: it applies to the base pass and to every person pass."""
    for tag in find_tag_starts(negative)[:1]:
        problems.add(
            "params.negative_prompt",
            f"model tags are not allowed in the negative prompt; found {tag!r}...",
        )
    parts = [tidy(part) for part in split_on_break(negative)]
    if len(parts) == 1:
        return "", parts[0], []
    person_parts = parts[2:]
    if len(person_parts) > person_count:
        problems.add(
            "params.negative_prompt",
            f"the negative prompt has {len(person_parts)} person segments but the prompt has "
            f"{person_count} person{'s' if person_count != 1 else ''}; give at most one negative segment per person",
        )
    return parts[0], parts[1], person_parts


def _mask(flags: FlagValues) -> MaskSpec | None:
    if not flags.mask_prompt:
        return None
    return MaskSpec(
        prompt=flags.mask_prompt,
        negative=flags.mask_negative,
        invert=flags.mask_invert,
        dilate_pixels=flags.dilate_pixels,
        dilate_percent=flags.dilate_percent,
    )
