"""LoRA adapters: where a request's LoRAs come from (sources) and the bounded disk cache
that holds them on a worker (files). Torch-free; the runtime loads them onto the GPU."""
