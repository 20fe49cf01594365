"""``multipass up --help`` names every service the local stack starts."""

from __future__ import annotations

import pytest

from multipass_client.cli.main import main
from multipass_dev.stack.local_stack import DIFFUSION, GATEWAY, HTTP_API, PARSER, SEGMENTATION


def test_up_help_names_every_service_it_starts(capsys):
    with pytest.raises(SystemExit):
        main(["up", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert [s.name for s in (PARSER, SEGMENTATION, DIFFUSION, GATEWAY, HTTP_API) if s.name not in text] == []
    assert "four services" not in text
