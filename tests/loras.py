"""Test LoRAs: made with PEFT for the tiny transformers, saved as safetensors, and served
from a loopback HTTP server (the server under test needs --allow-private-urls for it)."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def make_lora(model_dir: Path, target: Path, seed: int, rank: int = 4,
              modules: tuple[str, ...] = ("to_q", "to_k", "to_v")) -> Path:  # fmt: skip
    """A LoRA for the diffusers model in ``model_dir`` (random, non-zero weights), written
    to ``target`` as diffusers writes LoRAs; the file's path."""
    import torch
    from diffusers import DiffusionPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    pipeline = DiffusionPipeline.from_pretrained(model_dir)
    transformer = pipeline.transformer
    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(modules),
                        init_lora_weights=False)  # fmt: skip
    transformer.add_adapter(config, adapter_name="made")
    layers = get_peft_model_state_dict(transformer, adapter_name="made")
    target.parent.mkdir(parents=True, exist_ok=True)
    type(pipeline).save_lora_weights(
        target.parent, transformer_lora_layers=layers, weight_name=target.name
    )
    return target


class FileServer:
    """A loopback HTTP server for a directory, counting the requests for each path."""

    def __init__(self, directory: Path) -> None:
        counts: dict[str, int] = {}
        self.counts = counts

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                counts[self.path] = counts.get(self.path, 0) + 1
                super().do_GET()

            def log_message(self, *args) -> None:  # quiet
                pass

        handler = functools.partial(Handler, directory=str(directory))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{name}"


@contextmanager
def serving(directory: Path) -> Iterator[FileServer]:
    server = FileServer(directory)
    server.thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()
