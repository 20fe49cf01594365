"""Developer tooling of Multipass: the local stack, tiny models, the demo and the developer commands.

Unlike the runtime library (``multipass``) and the client (``multipass_client``), this package depends on
the services themselves, on purpose: ``multipass parse`` and ``multipass segment`` run the prompt parser
and the segmenter in-process, the tiny finishing models are built from the diffusion service's own
network definitions, and the local stack starts every service as a process. It also uses the client
library (the demo submits jobs through it). Nothing in the services or the runtime imports it.
"""
