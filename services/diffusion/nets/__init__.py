"""The worker's optional networks and their loaders: super-resolution, face restoration, face swap and
identity embedding, prompt expansion; where they live in the model directory (:mod:`.components`).

Importing this package is light: torch, diffusers, transformers and onnxruntime load with the first model.
"""
