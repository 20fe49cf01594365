"""The diffusion pass kinds: one module per kind, the handler base class, and what passes share.

:mod:`.registry` maps each kind to its handler; :mod:`.handler` declares the hooks the engine calls.
See docs/DIFFUSION.md (*Pass handlers*).
"""
