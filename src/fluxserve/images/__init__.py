"""Images from clients and for the pipelines: decoding and checking inputs (``inputs``),
Pillow operations on them (``ops``) and output sizes (``sizing``). Torch-free."""
