"""ParserSettings.from_env: defaults, overrides, and failures naming the variable."""

import pytest

from multipass.errors import ConfigError
from multipass_prompt_parser.language import Limits
from multipass_prompt_parser.settings import ParserSettings


def test_defaults():
    settings = ParserSettings.from_env({})
    assert settings == ParserSettings()
    assert (settings.grpc_addr, settings.metrics_port, settings.log_level) == (
        "127.0.0.1:50051",
        9101,
        "INFO",
    )
    assert settings.limits == Limits(native_size=512, max_size=2048, max_persons=8, max_prompt_chars=4000)


def test_every_variable():
    settings = ParserSettings.from_env(
        {
            "MULTIPASS_PARSER_GRPC_ADDR": "0.0.0.0:6000",
            "MULTIPASS_PARSER_METRICS_PORT": "0",
            "MULTIPASS_MAX_PERSONS": "3",
            "MULTIPASS_MAX_SIZE": "1024",
            "MULTIPASS_NATIVE_SIZE": "768",
            "MULTIPASS_MAX_PROMPT_CHARS": "2000",
            "MULTIPASS_LOG_LEVEL": "DEBUG",
            "MULTIPASS_INTERNAL_TOKEN": "s3cret",
        }
    )
    assert settings == ParserSettings("0.0.0.0:6000", 0, 3, 1024, 768, 2000, "DEBUG", "s3cret")
    assert "s3cret" not in repr(settings)
    assert settings.limits == Limits(native_size=768, max_size=1024, max_persons=3, max_prompt_chars=2000)


def test_bad_values_are_named_together():
    with pytest.raises(ConfigError) as caught:
        ParserSettings.from_env(
            {
                "MULTIPASS_MAX_PERSONS": "0",
                "MULTIPASS_PARSER_METRICS_PORT": "x",
                "MULTIPASS_LOG_LEVEL": "LOUD",
            }
        )
    assert {v.field for v in caught.value.violations} == {
        "MULTIPASS_MAX_PERSONS",
        "MULTIPASS_PARSER_METRICS_PORT",
        "MULTIPASS_LOG_LEVEL",
    }


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"MULTIPASS_MAX_SIZE": "1020"}, "MULTIPASS_MAX_SIZE"),
        ({"MULTIPASS_NATIVE_SIZE": "500"}, "MULTIPASS_NATIVE_SIZE"),
        ({"MULTIPASS_NATIVE_SIZE": "1024", "MULTIPASS_MAX_SIZE": "768"}, "MULTIPASS_NATIVE_SIZE"),
        ({"MULTIPASS_MAX_SIZE": "128"}, "MULTIPASS_MAX_SIZE"),
        # Past the longest side a diffusion worker makes: such a w/h would be accepted, then fail mid-job.
        ({"MULTIPASS_MAX_SIZE": "4104"}, "MULTIPASS_MAX_SIZE"),
        ({"MULTIPASS_MAX_SIZE": "8192"}, "MULTIPASS_MAX_SIZE"),
    ],
)
def test_sizes_must_be_consistent(env, variable):
    with pytest.raises(ConfigError) as caught:
        ParserSettings.from_env(env)
    assert [v.field for v in caught.value.violations] == [variable]


@pytest.mark.parametrize(
    ("address", "host"),
    [
        ("127.0.0.1:50051", "127.0.0.1"),
        ("0.0.0.0:50051", "0.0.0.0"),
        ("[::]:50051", "::"),
        (":50051", "127.0.0.1"),
    ],
)
def test_metrics_listen_where_grpc_does(address, host):
    assert ParserSettings(grpc_addr=address).metrics_host == host
