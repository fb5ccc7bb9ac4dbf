"""The only package that imports torch, diffusers and transformers (``base``,
``postprocess`` and ``provenance`` excepted, which the engine uses without them)."""
