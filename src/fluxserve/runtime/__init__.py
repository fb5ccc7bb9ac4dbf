"""The only package that imports torch, diffusers and transformers (``base``,
``postprocess``, ``provenance`` and ``tiers`` excepted, which the engine and the settings
use without them)."""
