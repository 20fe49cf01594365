"""The segmentation service (``multipass.v1.Segmentation``): person slots, one mask per person, text masks, faces.

Modules, from the edge inwards:

- ``__main__`` / ``service``: settings, logging, model loading, the gRPC server and /metrics.
- ``server``: the thin servicer (object-store I/O, proto conversion, metrics).
- ``segmenter``: the domain facade on numpy images (no gRPC, no store).
- ``person_masks``, ``sam_masks``, ``grounding``, ``faces``, ``slots``, ``pose_render``, ``mask_ops``: the work.
- ``models``: loading SAM, the grounding detector and the face detector from ``MULTIPASS_MODEL_DIR``.
"""
