"""The only package that imports torch, diffusers and transformers (``base`` and
``postprocess`` excepted, which the engine uses without them)."""
