"""LoRA switch time for ``fluxserve bench --lora``: how long making another LoRA active
takes, by a plain load/unload and by hot-swap, on the benchmark's model.

Each round makes the next of the given LoRAs active in a set that holds one adapter, as a
worker with ``--max-loaded-loras 1`` does when jobs alternate between LoRAs. Hot-swap needs
LoRAs on the same layers (else it falls back to a load, and says so in the log).
"""

from __future__ import annotations

import hashlib
import statistics
import time
from pathlib import Path
from typing import Any

from fluxserve.runtime.base import LoraFile
from fluxserve.runtime.loras import AdapterSet


def lora_files(paths: list[Path]) -> list[LoraFile]:
    return [
        LoraFile(path, hashlib.sha256(str(path.resolve()).encode()).hexdigest(), path.name, 1.0)
        for path in paths
    ]


def switch_seconds(pipeline: Any, files: list[LoraFile], rounds: int, hotswap: bool,
                   model: str) -> tuple[list[float], list[str]]:  # fmt: skip
    """Seconds per switch over ``rounds`` switches (after one untimed first load), and
    what each switch took (load, hotswap)."""
    adapters = AdapterSet(1, hotswap=hotswap)
    adapters.apply(pipeline, [files[0]], model)
    times, ways = [], []
    for n in range(rounds):
        lora = files[(n + 1) % len(files)]
        started = time.perf_counter()
        report = adapters.apply(pipeline, [lora], model)
        times.append(time.perf_counter() - started)
        ways.append(report[0]["gpu"])
    pipeline.delete_adapters(list(adapters.loaded.values()))
    return times, ways


def measure_switch(pipeline: Any, paths: list[Path], rounds: int, model: str) -> dict:
    """p50 milliseconds of a switch by load/unload and by hot-swap, and their ratio."""
    files = lora_files(paths)
    if len(files) < 2:
        raise ValueError("--lora needs two LoRAs or more to switch between")
    result: dict[str, Any] = {"loras": [f.name for f in files], "rounds": rounds}
    for name, hotswap in (("load_unload", False), ("hotswap", True)):
        times, ways = switch_seconds(pipeline, files, rounds, hotswap, model)
        result[f"{name}_ms_p50"] = round(statistics.median(times) * 1000, 3)
        result[f"{name}_took"] = sorted(set(ways))
    result["hotswap_speedup"] = round(result["load_unload_ms_p50"] / result["hotswap_ms_p50"], 2)
    return result


def describe_switch(result: dict) -> str:
    return (
        f"LoRA switch ({', '.join(result['loras'])}; {result['rounds']} switches): "
        f"load/unload {result['load_unload_ms_p50']:.1f} ms, hot-swap "
        f"{result['hotswap_ms_p50']:.1f} ms ({result['hotswap_speedup']:.2f}x; took "
        f"{'/'.join(result['hotswap_took'])})"
    )
