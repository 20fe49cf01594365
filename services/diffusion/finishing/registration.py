"""Importing this module registers the finishing passes with the engine's pass registry.

It is the entry to list in ``multipass_diffusion.passes._MODULES`` (the engine imports each listed module
once, when it first looks a pass kind up), next to ``passes.base`` and ``passes.person``.
"""

from __future__ import annotations

from multipass_diffusion import finishing, passes

finishing.register(passes.register)
