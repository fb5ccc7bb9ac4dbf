"""Submits under load: how fast a real server accepts jobs while its worker is busy.

Per mode, a real server (subprocesses, the built-in ``tiny`` model), with its one worker
kept busy by a long job queued first, then by the jobs the benchmark queues:

- **burst**: ``--burst`` (300) clients submit at once, each on its own new connection
  (``httpx.AsyncClient``): submits/s = N / (last answer - first send), and each submit's
  latency (send -> answer) p50 / p95 / max;
- **steady**: ``--rate`` (50) submits a second for ``--duration`` seconds on keep-alive
  connections, each sent at its scheduled time (latency counts from that time, so a stall of
  the client or the server is not hidden): p50 / p95 / p99 / max.

Every submit is ``POST /v1/flux-dev`` (256x256, 2 steps) and must answer 200 with an id.
Each phase also shows the API processes' CPU per submit (from /proc: not the worker's, not
PostgreSQL's), and the end says whether issue 17's targets for the embedded store are met
(burst >= 300 submits/s, steady p95 <= 50 ms).

Modes (``--modes``):

- ``sqlite``: ``fluxserve serve`` with the embedded store (its worker in a child process);
- ``postgres``: two API replicas (``serve --no-worker --database ...``) and one
  ``fluxserve worker``, sharing a fresh PostgreSQL database and data dir; submits alternate
  between the replicas.

``--baseline-src DIR`` runs each round twice, the servers importing fluxserve from DIR
(e.g. ``git archive HEAD src | tar -x -C /tmp/base``) and from this checkout, in
alternating order, and prints the ratios: before/after on the same machine in one run.
Each round starts fresh servers on a fresh data dir (and database), so every round meets
the same queue depth.

Usage (from the repository root; PostgreSQL at FLUXSERVE_BENCH_POSTGRES or
postgresql://postgres@127.0.0.1:5432/test)::

    .venv/bin/python benchmarks/bench_submits.py [--modes sqlite,postgres] [--rounds 3]
        [--burst 300] [--rate 50] [--duration 10] [--baseline-src DIR]

The benchmark process imports neither torch nor fluxserve: only the servers use the CPU
for serving. See docs/benchmarks.md for the recorded figures.
"""

from __future__ import annotations

import argparse
import asyncio
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
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ADMIN = os.environ.get("FLUXSERVE_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
JOB = {"prompt": "a lighthouse on a rocky cliff at dusk", "width": 256, "height": 256, "steps": 2}
# The first job: long enough (several seconds on 2 CPU cores) that the worker is generating
# when the burst starts; the burst's own jobs keep it busy after that.
BUSY_JOB = {"prompt": "busy", "width": 512, "height": 512, "steps": 50}
READY_TIMEOUT = 180.0
WARMUP_SUBMITS = 20
REQUEST_TIMEOUT = 120.0
# Issue 17's targets on a 2-core machine, embedded store, one worker busy.
TARGET_BURST_RATE = 300.0  # submits/s for a burst of 300
TARGET_STEADY_P95_MS = 50.0  # at a steady 50 submits/s


# -- statistics ------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between order statistics."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Phase:
    """One burst or one steady run: each submit's latency (s), the wall time, failures."""

    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0
    failures: list[str] = field(default_factory=list)
    server_cpu: float = 0.0  # CPU seconds of the API process(es) meanwhile (not workers)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.wall if self.wall else 0.0

    def ms(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000.0 if self.latencies else float("nan")

    @property
    def cpu_per_submit_ms(self) -> float:
        return self.server_cpu / len(self.latencies) * 1000.0 if self.latencies else 0.0


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU of these processes (not their children)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


# -- servers ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Proc:
    """A fluxserve process in its own session (its group holds its worker children)."""

    def __init__(self, args: list[str], log: Path, src: Path | None) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        if src is not None:  # import fluxserve from another tree (the baseline)
            env["PYTHONPATH"] = str(src)
        self.log_path = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fluxserve", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
                return
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


class Api(Proc):
    def __init__(self, args: list[str], log: Path, src: Path | None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        super().__init__([*args, "--port", str(self.port)], log, src)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        with httpx.Client(base_url=self.base, timeout=5) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the server exited:\n{self.tail()}")
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/readyz").status_code == 200:
                        return
                time.sleep(0.1)
        raise RuntimeError(f"the server was not ready in {READY_TIMEOUT:.0f} s:\n{self.tail()}")


@contextlib.contextmanager
def deployment(
    mode: str, root: Path, tiny: Path, src: Path | None, log_level: str
) -> Iterator[list[Api]]:
    """The servers of one mode, ready; yields the API replicas to submit to."""
    data = root / "data"
    (data / "models").mkdir(parents=True)
    (data / "models" / "tiny").symlink_to(tiny, target_is_directory=True)
    common = ["--model", "tiny", "--data-dir", str(data), "--log-level", log_level]
    procs: list[Proc] = []
    database = None
    try:
        if mode == "sqlite":
            procs.append(Api(["serve", *common], root / "serve.log", src))
        else:
            database = create_database()
            common += ["--database", database]
            # The first member migrates the schema: start one replica before the others.
            first = Api(["serve", "--no-worker", *common], root / "api-1.log", src)
            procs.append(first)
            first.wait_ready()
            procs.append(Api(["serve", "--no-worker", *common], root / "api-2.log", src))
            procs.append(Proc(["worker", *common], root / "worker.log", src))
        apis = [p for p in procs if isinstance(p, Api)]
        for api in apis:
            api.wait_ready()
        yield apis
    finally:
        for proc in procs:
            proc.stop()
        if database is not None:
            drop_database(database)


def create_database() -> str:
    import psycopg

    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return ADMIN.rsplit("/", 1)[0] + f"/{name}"


def drop_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- load ------------------------------------------------------------------------------------
async def submit(client: httpx.AsyncClient, base: str, phase: Phase, sent: float) -> None:
    try:
        response = await client.post(f"{base}/v1/flux-dev", json=JOB)
    except httpx.HTTPError as exc:
        phase.failures.append(f"{type(exc).__name__}: {exc}")
        return
    answered = time.perf_counter()
    if response.status_code != 200 or "id" not in response.json():
        phase.failures.append(f"{response.status_code} {response.text[:200]}")
        return
    phase.latencies.append(answered - sent)


async def burst(bases: list[str], count: int) -> Phase:
    """``count`` clients at once, each on a new connection."""
    phase = Phase()
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT) as client:
        started = time.perf_counter()
        await asyncio.gather(
            *(submit(client, bases[i % len(bases)], phase, started) for i in range(count))
        )
        phase.wall = time.perf_counter() - started
    return phase


async def steady(bases: list[str], rate: float, duration: float) -> Phase:
    """``rate`` submits a second for ``duration`` s, each sent at its scheduled time."""
    phase = Phase()
    count = int(rate * duration)
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT) as client:
        for base in bases:  # open a connection to each replica first
            await client.get(f"{base}/healthz")
        started = time.perf_counter()
        tasks = []
        for i in range(count):
            due = started + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(submit(client, bases[i % len(bases)], phase, due)))
        await asyncio.gather(*tasks)
        phase.wall = time.perf_counter() - started
    return phase


def start_busy_job(base: str) -> None:
    """Queue the long job and wait until the worker is generating it (progress > 0)."""
    with httpx.Client(base_url=base, timeout=30) as client:
        response = client.post("/v1/flux-dev", json=BUSY_JOB)
        response.raise_for_status()
        job_id = response.json()["id"]
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            result = client.get("/v1/get_result", params={"id": job_id}).json()
            if result["status"] != "Pending":
                raise RuntimeError(f"the busy job ended before the burst: {result}")
            if (result.get("progress") or 0) > 0:
                return
            time.sleep(0.05)
    raise RuntimeError("the worker did not start the busy job")


def warm_up(bases: list[str]) -> None:
    with httpx.Client(timeout=30) as client:
        for i in range(WARMUP_SUBMITS):
            client.post(f"{bases[i % len(bases)]}/v1/flux-dev", json=JOB).raise_for_status()


@dataclass
class Round:
    burst: Phase
    steady: Phase


def run_round(
    mode: str, root: Path, tiny: Path, src: Path | None, args: argparse.Namespace
) -> Round:
    with deployment(mode, root, tiny, src, args.log_level) as apis:
        bases = [api.base for api in apis]
        start_busy_job(bases[0])
        warm_up(bases)
        pids = [api.proc.pid for api in apis]
        before = cpu_seconds(pids)
        burst_phase = asyncio.run(burst(bases, args.burst))
        burst_phase.server_cpu = cpu_seconds(pids) - before
        time.sleep(args.pause)
        before = cpu_seconds(pids)
        steady_phase = asyncio.run(steady(bases, args.rate, args.duration))
        steady_phase.server_cpu = cpu_seconds(pids) - before
    for phase in (burst_phase, steady_phase):
        if phase.failures:
            print(f"    {len(phase.failures)} failed submit(s), e.g. {phase.failures[0]}")
    return Round(burst_phase, steady_phase)


def failed(one: Round) -> bool:
    return bool(one.burst.failures or one.steady.failures)


# -- report ----------------------------------------------------------------------------------
def describe(name: str, one: Round) -> str:
    b, s = one.burst, one.steady
    return (
        f"  {name:<9} burst  {b.rate:5.0f}/s  p50 {b.ms(50):6.0f}  p95 {b.ms(95):6.0f}  "
        f"max {b.ms(100):6.0f} ms  (API CPU {b.cpu_per_submit_ms:.2f} ms/submit)\n"
        f"  {'':<9} steady {s.rate:5.1f}/s  p50 {s.ms(50):6.1f}  p95 {s.ms(95):6.1f}  "
        f"p99 {s.ms(99):6.1f}  max {s.ms(100):6.1f} ms  "
        f"(API CPU {s.cpu_per_submit_ms:.2f} ms/submit)"
    )


def summary(rounds: list[Round]) -> dict[str, float]:
    """Medians over rounds of each round's figures."""

    def med(values: list[float]) -> float:
        return statistics.median(values)

    return {
        "burst_rate": med([r.burst.rate for r in rounds]),
        "burst_cpu_ms": med([r.burst.cpu_per_submit_ms for r in rounds]),
        "burst_p50": med([r.burst.ms(50) for r in rounds]),
        "burst_p95": med([r.burst.ms(95) for r in rounds]),
        "steady_p50": med([r.steady.ms(50) for r in rounds]),
        "steady_p95": med([r.steady.ms(95) for r in rounds]),
        "steady_p99": med([r.steady.ms(99) for r in rounds]),
    }


def hardware() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def report(results: dict[tuple[str, str], list[Round]], modes: list[str], compared: bool) -> None:
    print("\nmedians over rounds (burst_rate in submits/s, the rest in ms):")
    for (mode, name), rounds in results.items():
        figures = summary(rounds)
        print(f"  {mode:<9} {name:<9} " + "  ".join(
            f"{k} {v:.2f}" if k.endswith("cpu_ms") else f"{k} {v:.1f}"
            for k, v in figures.items()))  # fmt: skip
    if compared:
        for mode in modes:
            now = summary(results[(mode, "current")])
            before = summary(results[(mode, "baseline")])
            print(
                f"  {mode}: burst rate current/baseline "
                f"{now['burst_rate'] / before['burst_rate']:.2f}; API CPU per submit "
                f"baseline/current {before['burst_cpu_ms'] / now['burst_cpu_ms']:.2f}; "
                f"steady p95 baseline/current {before['steady_p95'] / now['steady_p95']:.2f}"
            )
    if "sqlite" in modes:
        lite = summary(results[("sqlite", "current")])
        burst_met = lite["burst_rate"] >= TARGET_BURST_RATE
        steady_met = lite["steady_p95"] <= TARGET_STEADY_P95_MS
        print(f"  targets (embedded, current): burst >= {TARGET_BURST_RATE:g}/s "
              f"{'met' if burst_met else 'NOT met'}, steady p95 <= "
              f"{TARGET_STEADY_P95_MS:g} ms {'met' if steady_met else 'NOT met'}")  # fmt: skip
    if "sqlite" in modes and "postgres" in modes:
        lite = summary(results[("sqlite", "current")])
        pg = summary(results[("postgres", "current")])
        print(f"  current: postgres/sqlite burst rate "
              f"{pg['burst_rate'] / lite['burst_rate']:.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="sqlite,postgres")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--burst", type=int, default=300, help="concurrent submits")
    parser.add_argument("--rate", type=float, default=50.0, help="steady submits a second")
    parser.add_argument("--duration", type=float, default=10.0, help="steady seconds")
    parser.add_argument("--pause", type=float, default=2.0, help="seconds between phases")
    parser.add_argument("--log-level", default="info", help="the servers' (default: theirs)")
    parser.add_argument("--baseline-src", type=Path, help="a src/ dir to compare against")
    args = parser.parse_args()
    if args.baseline_src is not None and not (args.baseline_src / "fluxserve").is_dir():
        parser.error(f"{args.baseline_src} holds no fluxserve package")
    modes = args.modes.split(",")
    variants: list[tuple[str, Path | None]] = [("current", None)]
    if args.baseline_src is not None:
        variants.append(("baseline", args.baseline_src.resolve()))
    root = Path(tempfile.mkdtemp(prefix="bench-submits-"))
    results: dict[tuple[str, str], list[Round]] = {}
    try:
        tiny = root / "tiny"
        subprocess.run(
            [sys.executable, "-m", "fluxserve", "models", "make-tiny", str(tiny)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        print(f"{hardware()}; burst {args.burst}, steady {args.rate:g}/s for "
              f"{args.duration:g} s, {args.rounds} round(s), server log level "
              f"{args.log_level}")  # fmt: skip
        for mode in modes:
            print(f"{mode}:", flush=True)
            for n in range(args.rounds):
                order = variants if n % 2 == 0 else variants[::-1]
                for name, src in order:
                    where = root / f"{mode}-{name}-{n}"
                    one = run_round(mode, where, tiny, src, args)
                    results.setdefault((mode, name), []).append(one)
                    print(describe(name, one), flush=True)
                    if failed(one):  # keep the servers' logs
                        print(f"    logs kept in {where}")
                    else:
                        shutil.rmtree(where, ignore_errors=True)
        report(results, modes, args.baseline_src is not None)
    finally:
        if not any(failed(one) for rounds in results.values() for one in rounds):
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
