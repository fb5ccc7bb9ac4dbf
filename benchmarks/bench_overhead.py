"""How much does serving a FLUX job over HTTP cost, beyond the diffusers pipeline call?

One run, on the built-in ``tiny`` model at 256x256 (4 steps, guidance 3.0, JPEG output):

(a) the bare pipeline: ``FluxPipeline.__call__`` with the arguments fluxserve's FluxRunner
    passes, timed in this process; JPEG encoding (``encode_image`` + ``generation_metadata``)
    is timed separately on each image, outside that timing.
(b) a real server: ``fluxserve serve`` as a subprocess, one job at a time through the BFL
    API (POST /v1/flux-dev, then GET the polling_url every ~2 ms until Ready), timed from
    just before the POST to the response that says Ready.

(a) and (b) alternate job by job in one run, so a change in the machine's speed during the
run (common on shared VMs) hits both alike; they never overlap, so they never compete for
the CPU. Both sides run torch on the same number of CPU threads: the count the
server's worker picks by default (``configure_threads``: on CPU every core but one, which the
API process and its clients need), or ``--torch-threads N`` for both.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_overhead.py [--jobs 30]

See docs/benchmarks.md for what the figures mean and the last recorded run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

WIDTH = HEIGHT = 256
STEPS = 4  # the tiny model's default
GUIDANCE = 3.0
MAX_SEQUENCE_LENGTH = 256  # the tiny model's spec, as FluxRunner passes it
PROMPT = "a lighthouse on a rocky cliff at dusk, waves breaking below"
WARMUP = 3
MIN_JOBS = 20
TARGET_OVERHEAD_MS = 15.0  # p50 overhead beyond image encoding
READY_TIMEOUT = 300.0  # seconds for the server to load the model
JOB_TIMEOUT = 120.0  # seconds for one job to become Ready
WARMUP_SEED_BASE = 1_000_000  # warm-up seeds differ from the timed ones
NOISY_PERCENT = 10.0  # other processes' CPU (% of one core) above which a run is flagged


# -- statistics ------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between order statistics."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Series:
    name: str
    seconds: list[float] = field(default_factory=list)

    def p(self, q: float) -> float:
        return percentile(self.seconds, q) * 1000.0

    @property
    def mean(self) -> float:
        return statistics.fmean(self.seconds) * 1000.0


# -- hardware ----------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_lines() -> list[str]:
    import diffusers
    import torch

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    return [
        f"CPU:            {cpu_model()} ({os.cpu_count()} logical cores, {affinity} usable)",
        f"GPU:            {'CUDA available' if torch.cuda.is_available() else 'none (CPU run)'}",
        f"Python:         {platform.python_version()} on {platform.system()} {platform.release()}",
        f"torch:          {torch.__version__} (diffusers {diffusers.__version__})",
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')}",
    ]


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def other_cpu_seconds(exclude_sessions: set[int]) -> float | None:
    """CPU time so far of every process outside ``exclude_sessions`` (with reaped children).

    A gauge of other load on a shared machine; None where there is no /proc.
    """
    ticks = 0
    try:
        entries = list(os.scandir("/proc"))
    except OSError:
        return None
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            # After "(comm)": state ppid pgrp session ... utime stime cutime cstime (11-14).
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) not in exclude_sessions:
            ticks += sum(int(x) for x in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


class OtherLoad:
    """How busy the rest of the machine was during a phase, in % of one core."""

    def __init__(self, *extra_sessions: int) -> None:
        self.sessions = {os.getsid(0), *extra_sessions}
        self.cpu = other_cpu_seconds(self.sessions)
        self.started = time.perf_counter()
        self.percent: float | None = None

    def stop(self) -> OtherLoad:
        cpu = other_cpu_seconds(self.sessions)
        if cpu is not None and self.cpu is not None:
            self.percent = 100.0 * (cpu - self.cpu) / (time.perf_counter() - self.started)
        return self

    def __str__(self) -> str:
        return "n/a" if self.percent is None else f"{self.percent:.0f}% of one core"


# -- (a) the bare pipeline ----------------------------------------------------------------------
def load_pipeline(model_dir: Path, device: str, threads: int | None):
    """A ``call(seed) -> images`` over the bare FluxPipeline, and the torch thread count."""
    import diffusers
    import torch
    import transformers

    from fluxserve.runtime.device import configure_threads, pick_device, pick_dtype

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    # The device and dtype the server's worker picks for the same --device (CPU: float32).
    torch_device = pick_device(device)
    pipe = diffusers.FluxPipeline.from_pretrained(model_dir, dtype=pick_dtype(torch_device))
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(torch_device)
    threads = configure_threads(torch_device, threads)  # as the worker's FluxRunner.load

    def call(seed: int):
        # As FluxRunner.generate: inference mode, a seeded CPU generator, the same kwargs.
        generator = torch.Generator("cpu").manual_seed(seed)
        with torch.inference_mode():
            return pipe(
                prompt=PROMPT,
                width=WIDTH,
                height=HEIGHT,
                num_inference_steps=STEPS,
                guidance_scale=GUIDANCE,
                max_sequence_length=MAX_SEQUENCE_LENGTH,
                generator=generator,
            ).images

    return call, threads


def time_encode(image, seed: int) -> float:
    """Seconds to encode ``image`` as the worker does (JPEG with generation metadata)."""
    from fluxserve.domain import GenerationRequest, OutputFormat
    from fluxserve.runtime.postprocess import encode_image, generation_metadata

    request = GenerationRequest(
        model="tiny", prompt=PROMPT, width=WIDTH, height=HEIGHT, steps=STEPS,
        guidance=GUIDANCE, seed=seed, output_format=OutputFormat.JPEG, endpoint="flux-dev",
    )  # fmt: skip
    started = time.perf_counter()
    data = encode_image(image, OutputFormat.JPEG, generation_metadata(request, True))
    elapsed = time.perf_counter() - started
    if data[:2] != b"\xff\xd8":
        raise RuntimeError("encode_image did not produce a JPEG")
    return elapsed


# -- (b) the server ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command() -> list[str]:
    script = Path(sys.executable).parent / "fluxserve"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "fluxserve"]


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


def wait_ready(client: httpx.Client, proc: subprocess.Popen, log: Path) -> float:
    started = time.perf_counter()
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}:\n{log_tail(log)}")
        try:
            if client.get("/readyz").status_code == 200:
                return time.perf_counter() - started
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the server was not ready after {READY_TIMEOUT:.0f} s:\n{log_tail(log)}")


@dataclass
class JobTiming:
    end_to_end: float  # POST sent -> the GET that answered Ready
    submit: float  # POST round trip
    worker: float  # the server's own start_time -> end_time (claim -> complete)
    polls: int


def run_job(client: httpx.Client, seed: int, poll_interval: float) -> JobTiming:
    body = {
        "prompt": PROMPT,
        "width": WIDTH,
        "height": HEIGHT,
        "steps": STEPS,
        "guidance": GUIDANCE,
        "seed": seed,
    }
    started = time.perf_counter()
    response = client.post("/v1/flux-dev", json=body)
    submitted = time.perf_counter()
    response.raise_for_status()
    polling_url = response.json()["polling_url"]
    polls = 0
    deadline = time.monotonic() + JOB_TIMEOUT
    while True:
        result = client.get(polling_url)
        polls += 1
        result.raise_for_status()
        payload = result.json()
        status = payload["status"]
        if status == "Ready":
            finished = time.perf_counter()
            break
        if status != "Pending":
            raise RuntimeError(f"job for seed {seed} ended {status}: {payload}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"job for seed {seed} not Ready after {JOB_TIMEOUT:.0f} s")
        time.sleep(poll_interval)
    sample = payload["result"]
    return JobTiming(
        end_to_end=finished - started,
        submit=submitted - started,
        worker=sample["end_time"] - sample["start_time"],
        polls=polls,
    )


def stop_server(proc: subprocess.Popen) -> None:
    """SIGINT (uvicorn's graceful stop; the pool then stops its worker), then kill."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
        return
    except subprocess.TimeoutExpired:
        print("the server did not stop within 60 s of SIGINT; killing it", file=sys.stderr)
    # The server runs in its own session, so its group is its pid and holds its worker.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@contextlib.contextmanager
def running_server(model_dir: Path, data_dir: Path, args: argparse.Namespace, log: Path):
    """``fluxserve serve`` in its own session; yields (client, pid, seconds until ready)."""
    port = free_port()
    command = [
        *server_command(), "serve", "--model", str(model_dir), "--data-dir", str(data_dir),
        "--port", str(port), "--device", args.device, "--torch-threads", str(args.torch_threads),
        "--log-level", args.log_level,
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30.0) as client:
            yield client, proc.pid, wait_ready(client, proc, log)
    finally:
        stop_server(proc)


@dataclass
class Pinning:
    """Which core runs the model on both sides, and which runs the API and the client.

    Both pipelines, (a) in this process and (b) in the server's worker, run on the same
    core, and the API and the client share the other, as they would have cores of their
    own on a GPU host. Without it, a 2-vCPU VM puts (a) and (b) on cores whose speed differs
    from run to run, and the figures swung by +-15 ms.
    """

    model_core: int
    service_cores: set[int]

    @classmethod
    def choose(cls, enabled: bool) -> Pinning | None:
        if not enabled or not hasattr(os, "sched_getaffinity"):
            return None
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2:
            return None
        return cls(model_core=cores[-1], service_cores=set(cores[:-1]))

    @staticmethod
    def pin_process(pid: int, cores: set[int]) -> None:
        for task in os.listdir(f"/proc/{pid}/task"):  # every thread of the process
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(int(task), cores)

    def pin_server(self, client: httpx.Client, server_pid: int) -> None:
        self.pin_process(server_pid, self.service_cores)
        for worker in client.get("/readyz").json()["workers"]:
            self.pin_process(int(worker["worker_id"].rsplit("-", 1)[1]), {self.model_core})

    def for_model(self) -> None:
        os.sched_setaffinity(0, {self.model_core})

    def for_client(self) -> None:
        os.sched_setaffinity(0, self.service_cores)


def bench_interleaved(
    call, client: httpx.Client, server_pid: int, args: argparse.Namespace
) -> tuple[Series, Series, list[JobTiming], OtherLoad]:
    pinning = Pinning.choose(not args.no_pin)
    if pinning:
        pinning.pin_server(client, server_pid)
        pinning.for_client()
        print(
            f"    pinned: the model (both sides) on core {pinning.model_core}, "
            f"the API and this client on {sorted(pinning.service_cores)}",
            flush=True,
        )
    """(a) and (b) alternate, job by job, so drift in the machine's speed hits both alike.

    They never overlap: while (a) runs the server is idle (its worker waits on an event).
    The order flips every round so neither side always runs right after the other.
    """
    for i in range(WARMUP):
        call(WARMUP_SEED_BASE + i)
        run_job(client, WARMUP_SEED_BASE + i, args.poll_interval)
    pipeline, encode = Series("(a) pipeline call"), Series("JPEG encode + metadata")
    timings: list[JobTiming] = []
    load = OtherLoad(server_pid)  # the server runs in its own session

    def side_a(seed: int) -> None:
        if pinning:
            pinning.for_model()
        started = time.perf_counter()
        images = call(seed)
        pipeline.seconds.append(time.perf_counter() - started)
        encode.seconds.append(time_encode(images[0], seed))
        if pinning:
            pinning.for_client()

    def side_b(seed: int) -> None:
        timings.append(run_job(client, seed, args.poll_interval))

    for seed in range(args.jobs):
        first, second = (side_a, side_b) if seed % 2 == 0 else (side_b, side_a)
        first(seed)
        second(seed)
    return pipeline, encode, timings, load.stop()


# -- report ------------------------------------------------------------------------------------
def row(name: str, p50: float, p95: float, mean: float) -> str:
    return f"| {name:<46} | {p50:10.1f} | {p95:10.1f} | {mean:10.1f} |"


def report(
    pipeline: Series, encode: Series, e2e: Series, worker: Series, submit: Series
) -> tuple[float, bool]:
    overhead50 = e2e.p(50) - pipeline.p(50)
    overhead95 = e2e.p(95) - pipeline.p(95)
    beyond = overhead50 - encode.p(50)
    met = beyond <= TARGET_OVERHEAD_MS
    print()
    print(f"| {'ms':<46} | {'p50':>10} | {'p95':>10} | {'mean':>10} |")
    print(f"|{'-' * 48}|{'-' * 11}:|{'-' * 11}:|{'-' * 11}:|")
    for series in (pipeline, encode, e2e, worker, submit):
        print(row(series.name, series.p(50), series.p(95), series.mean))
    print(row("overhead (b) - (a)", overhead50, overhead95, e2e.mean - pipeline.mean))
    print(
        row(
            "overhead beyond encoding (overhead - enc p50)",
            beyond,
            overhead95 - encode.p(50),
            e2e.mean - pipeline.mean - encode.p(50),
        )
    )
    # Paired: each job's (b) minus the (a) call made right beside it. Drift in the machine's
    # speed cancels within a pair, so on a shared VM this is the steadier estimate.
    paired = Series(
        "paired overhead beyond encoding (b_i-a_i-enc)",
        [
            b - a - enc
            for b, a, enc in zip(e2e.seconds, pipeline.seconds, encode.seconds, strict=True)
        ],
    )
    print(row(paired.name, paired.p(50), paired.p(95), paired.mean))
    print(
        f"| {'ratio (b) / (a)':<46} | {e2e.p(50) / pipeline.p(50):10.3f} | "
        f"{e2e.p(95) / pipeline.p(95):10.3f} | {e2e.mean / pipeline.mean:10.3f} |"
    )
    print()
    print("Overheads are percentile(b) - percentile(a) at the same percentile (p50, p95) and")
    print("mean(b) - mean(a); 'beyond encoding' subtracts the encode p50 from each. The paired")
    print("row takes percentiles of per-job differences between neighbouring (a) and (b) runs.")
    for name, value in (("p50", beyond), ("paired p50", paired.p(50))):
        verdict = "MET" if value <= TARGET_OVERHEAD_MS else "NOT MET"
        print(
            f"Target: {name} overhead <= {TARGET_OVERHEAD_MS:.0f} ms beyond image encoding: "
            f"{value:.1f} ms -> {verdict}"
        )
    return beyond, met


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--jobs", type=int, default=50, help=f"timed calls/jobs per side (>= {MIN_JOBS})"
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=0.002,
        help="seconds between polls of get_result (default 0.002)",
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="torch device for both sides, passed to the server as --device (default auto: "
        "cuda when available, else cpu)",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch CPU threads for both sides (default: what the server's worker picks)",
    )
    parser.add_argument(
        "--log-level", default="warning", help="the server's --log-level (default warning)"
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin the model (both sides) and the API+client to separate cores",
    )
    parser.add_argument(
        "--server-log", type=Path, default=None, help="keep the server's output in this file"
    )
    args = parser.parse_args(argv)
    if args.jobs < MIN_JOBS:
        parser.error(f"--jobs must be at least {MIN_JOBS}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import transformers

    from fluxserve.runtime.tiny import make_tiny

    transformers.utils.logging.disable_progress_bar()  # make_tiny's "Writing model shards"
    print(
        f"fluxserve overhead benchmark: tiny model, {WIDTH}x{HEIGHT}, {STEPS} steps, "
        f"guidance {GUIDANCE}, jpeg"
    )
    print(
        f"  {args.jobs} timed runs per side after {WARMUP} warm-ups; "
        f"poll interval {args.poll_interval * 1000:.1f} ms; device {args.device}"
    )
    for line in hardware_lines():
        print("  " + line)

    with tempfile.TemporaryDirectory(prefix="fluxserve-bench-") as tmp:
        root = Path(tmp)
        model_dir = make_tiny(root / "tiny")
        call, args.torch_threads = load_pipeline(model_dir, args.device, args.torch_threads)
        print(f"  torch CPU threads, both sides: {args.torch_threads}")
        log = root / "server.log"
        print(f"\nserver starting ... (load average {load_average()})", flush=True)
        started = time.perf_counter()
        try:
            with running_server(model_dir, root / "data", args, log) as (client, pid, ready):
                print(f"    ready after {ready:.1f} s; (a) and (b) interleaved ...", flush=True)
                pipeline, encode, timings, load = bench_interleaved(call, client, pid, args)
        finally:
            if args.server_log is not None and log.exists():
                shutil.copyfile(log, args.server_log)
        print(f"    done in {time.perf_counter() - started:.1f} s (load average {load_average()})")
        polls = [t.polls for t in timings]
        print(f"    polls per job: median {statistics.median(polls):.0f}, max {max(polls)}")

    print(f"\nOther processes' CPU during the timed runs: {load}")
    if load.percent is not None and load.percent > NOISY_PERCENT:
        print(
            f"WARNING: other processes used more than {NOISY_PERCENT:.0f}% of a core while this "
            "ran; the figures are inflated by that load. Run again on a quiet machine."
        )
    e2e = Series("(b) HTTP end-to-end (POST -> Ready)", [t.end_to_end for t in timings])
    worker = Series("  of which worker claim -> complete (server)", [t.worker for t in timings])
    submit = Series("  of which POST round trip", [t.submit for t in timings])
    report(pipeline, encode, e2e, worker, submit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
