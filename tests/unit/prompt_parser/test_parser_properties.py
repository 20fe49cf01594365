"""Property: any text and any parameter map either parse or raise InvalidInput, nothing else; what
parses satisfies the language's invariants and converts to the proto."""

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from multipass.errors import InvalidInput
from multipass_prompt_parser.convert import to_proto
from multipass_prompt_parser.language import FLAG_NAMES, PARAMS, Limits
from multipass_prompt_parser.parser import parse_prompt
from multipass_prompt_parser.problems import MAX_REPORTED

VALUES = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        [
            "",
            "1",
            "0",
            "-1",
            "8",
            "30",
            "7.5",
            "1e3",
            "nan",
            "true",
            "false",
            "TRUE",
            "1:1",
            "portrait",
            "anamorphic",
            "pose",
            "canny",
            "euler_a",
            "Ektar",
            "512",
            "768",
            "2048",
            "2056",
            "https://example.com/a.png",
            "ftp://x/y",
            "http://",
            "a BREAK b BREAK c BREAK d",
            "x <lora:1:1>",
        ]
    ),
)
NAMES = st.one_of(
    st.sampled_from(sorted(PARAMS)),
    st.sampled_from(["stesp", "cfg", "mask_prompt", "--seed"]),
    st.text(max_size=8),
)
FRAGMENTS = st.one_of(
    st.text(max_size=24),
    st.sampled_from(
        [
            "BREAK",
            " BREAK ",
            "\nBREAK\n",
            "BREAKFAST",
            "\n",
            ", ",
            " ",
            "--",
            "<",
            ">",
            ":",
            "=",
            "(",
            ")",
            "[",
            "]",
            "%",
            "-",
            "(word:1.3)",
            "\\(",
            "ohwx woman",
            "\r\n",
        ]
    ),
    st.builds(
        lambda name, value: f" --{name} {value}",
        st.sampled_from([*FLAG_NAMES, "ar", "mask_promt", "x"]),
        st.one_of(st.text(max_size=6), st.sampled_from(["", "-20", "20%", "0.3", "foreground", "2"])),
    ),
    st.builds(
        lambda kind, tune, weight: f"<{kind}:{tune}{weight}>",
        st.sampled_from(["lora", "faceid", "LoRA", "lyco", "x"]),
        st.one_of(st.text(max_size=5), st.sampled_from(["849330", "861629", "style.v2", ""])),
        st.one_of(
            st.just(""),
            st.builds(
                lambda w: f":{w}",
                st.one_of(st.text(max_size=4), st.sampled_from(["1", "0.5", "-2", "9", "x"])),
            ),
        ),
    ),
    st.builds(lambda name, value: f"\n{name}={value}", NAMES, VALUES),
)
DOCUMENTS = st.lists(FRAGMENTS, max_size=24).map("".join)
PARAM_MAPS = st.dictionaries(NAMES, VALUES, max_size=6)
LIMITS = st.builds(
    Limits,
    native_size=st.sampled_from([256, 512, 1024]),
    max_size=st.sampled_from([1024, 2048]),
    max_persons=st.integers(1, 8),
    max_prompt_chars=st.sampled_from([60, 4000]),
)
WORDS = st.lists(
    st.one_of(
        st.sampled_from(
            ["a", "red", "fox", "ohwx", "woman", "man", "(soft light:1.2)", "[blur]", ",", "break"]
        ),
        st.text(st.characters(codec="utf-8", exclude_characters="<>-=\n\r"), max_size=6),
    ),
    max_size=6,
).map(" ".join)
GOOD_TAGS = st.lists(
    st.builds(
        lambda kind, tune, weight: f"<{kind}:{tune}{weight}>",
        st.sampled_from(["lora", "faceid"]),
        st.sampled_from(["849330", "861629", "12", "style.v2"]),
        st.sampled_from(["", ":1", ":0.5", ":-1"]),
    ),
    max_size=2,
).map(" ".join)
GOOD_FLAGS = st.sampled_from(
    [
        "",
        "",
        " --mask_prompt person",
        " --mask_prompt door --mask_negative hat --mask_invert --mask_dilate -20%",
        " --mask_prompt face --mask_dilate 8",
        " --hires_denoising_strength 0.3",
        " --tiled_upscale",
        " --only_upscale",
    ]
)
GOOD_VALUES = {
    "num_images": st.sampled_from(["1", "4", "8"]),
    "negative_prompt": st.sampled_from(
        ["", "blurry", "a BREAK b", "a BREAK b BREAK c", "x BREAK y BREAK z BREAK w"]
    ),
    "seed": st.sampled_from(["", "0", "42", "4294967295"]),
    "steps": st.sampled_from(["1", "30", "50"]),
    "cfg_scale": st.sampled_from(["0", "7", "15"]),
    "ar": st.sampled_from(["1:1", "portrait", "16:9", "landscape", "anamorphic"]),
    "w": st.sampled_from(["", "256", "512", "1024"]),
    "h": st.sampled_from(["", "256", "768"]),
    "controlnet": st.sampled_from(["", "pose", "canny"]),
    "input_image_url": st.sampled_from(["", "https://example.com/in.png"]),
    "mask_image_url": st.sampled_from(["", "https://example.com/m.png"]),
    "hires_fix": st.sampled_from(["true", "false"]),
    "super_resolution": st.sampled_from(["1", "0"]),
    "use_lpw": st.sampled_from(["true", "false"]),
}


@st.composite
def good_documents(draw):
    segments = [draw(st.one_of(st.just(""), WORDS)) + draw(GOOD_TAGS) + draw(GOOD_FLAGS)]
    if draw(st.booleans()):
        segments.append(draw(st.one_of(st.just(""), WORDS)))
        segments += [draw(WORDS) + " " + draw(GOOD_TAGS) for _ in range(draw(st.integers(0, 4)))]
    block = draw(st.dictionaries(st.sampled_from(sorted(GOOD_VALUES)), st.just(""), max_size=5))
    lines = [f"{name}={draw(GOOD_VALUES[name])}" for name in block]
    return draw(st.sampled_from([" BREAK ", "\nBREAK\n"])).join(segments) + "".join(
        "\n" + line for line in lines
    )


GOOD_PARAMS = st.dictionaries(st.sampled_from(sorted(GOOD_VALUES)), st.just(""), max_size=4).flatmap(
    lambda names: st.fixed_dictionaries({name: GOOD_VALUES[name] for name in names})
)
BREAK_WORD = re.compile(r"(?<!\w)BREAK(?!\w)")


def check_outcome(text, params, limits, has_input_image, has_mask_image):
    try:
        parsed = parse_prompt(
            text, params, limits=limits, has_input_image=has_input_image, has_mask_image=has_mask_image
        )
    except InvalidInput as error:
        assert 1 <= len(error.violations) <= MAX_REPORTED + 1
        assert all(v.field and v.description for v in error.violations)
        return
    texts = [
        parsed.base_prompt,
        parsed.common_prompt,
        parsed.base_effective_prompt,
        parsed.negative_base,
        parsed.negative_common,
        parsed.base_effective_negative_prompt,
        *(
            t
            for p in parsed.persons
            for t in (p.prompt, p.effective_prompt, p.negative_prompt, p.effective_negative_prompt)
        ),
    ]
    if parsed.mask is not None:
        texts += [parsed.mask.prompt, parsed.mask.negative]
    for t in texts:
        assert not BREAK_WORD.search(t), t
        assert "<lora:" not in t.lower() and "<faceid:" not in t.lower(), t
        assert t == t.strip(" ,")
    params_out = parsed.params
    assert params_out.w % 8 == 0 and params_out.h % 8 == 0
    assert 256 <= params_out.w <= limits.max_size and 256 <= params_out.h <= limits.max_size
    assert [p.index for p in parsed.persons] == list(range(len(parsed.persons)))
    assert len(parsed.persons) <= limits.max_persons
    assert not parsed.persons or parsed.multi_pass
    if parsed.keep_background:
        assert parsed.persons and not parsed.base_prompt and not parsed.common_prompt
    assert to_proto(parsed).SerializeToString()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DOCUMENTS, PARAM_MAPS, LIMITS, st.booleans(), st.booleans())
def test_language_shaped_input_parses_or_is_invalid(text, params, limits, has_input_image, has_mask_image):
    check_outcome(text, params, limits, has_input_image, has_mask_image)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(good_documents(), GOOD_PARAMS, LIMITS, st.booleans(), st.booleans())
def test_mostly_valid_input_parses_or_is_invalid(text, params, limits, has_input_image, has_mask_image):
    check_outcome(text, params, limits, has_input_image, has_mask_image)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.dictionaries(st.text(max_size=20), st.text(max_size=20), max_size=4))
def test_arbitrary_text_parses_or_is_invalid(text, params):
    check_outcome(text, params, Limits(), False, False)
