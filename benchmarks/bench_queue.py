"""Queue throughput and pickup latency: PostgreSQL vs SQLite, N workers, the tiny model.

For each store and each worker count N, in one run: N real ``Worker`` loops (threads, each
with its own store connection and its own tiny FluxRunner) drain M jobs submitted through
``JobService`` as fast as it can queue them. Reported per configuration:

- jobs/s: M divided by the time from the first submit to the last completion;
- backlog wait p50/p95: how long a job of that burst waited in the queue before a worker
  claimed it (``started_at - created_at``, both stamped by the job table);
- pickup p50/p95: the same wait for jobs submitted one at a time to idle workers (each
  after the previous one finished): the latency a lone request sees.

Workers are woken by an in-process event on submit (as in ``fluxserve serve``); in a
cluster the wake-up arrives by PostgreSQL NOTIFY instead. The tiny model makes each job
short (64x64, 1 step), so the figures are dominated by the queue, not the model.

Usage (from the repository root; PostgreSQL at FLUXSERVE_BENCH_POSTGRES or
postgresql://postgres@127.0.0.1:5432/test)::

    .venv/bin/python benchmarks/bench_queue.py [--jobs 200] [--workers 1,2,4]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psycopg

from fluxserve.domain import GenerationRequest
from fluxserve.engine.signals import Flag, Wakeup
from fluxserve.engine.worker import Worker, WorkerOptions
from fluxserve.jobs.service import JobService
from fluxserve.runtime.diffusers_runner import FluxRunner
from fluxserve.runtime.tiny import make_tiny
from fluxserve.storage.local import LocalStorage
from fluxserve.store.postgres import PostgresJobStore
from fluxserve.store.sqlite import SqliteJobStore
from fluxserve.weights import resolve_model

PICKUP_JOBS = 40
ADMIN = os.environ.get("FLUXSERVE_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def run(store_factory, runners, storage: Path, jobs: int) -> dict[str, float]:
    wake, stop = Wakeup(), Flag()
    stores = [store_factory() for _ in runners]
    blobs = LocalStorage(storage, storage / "secret")
    workers = [
        Worker(s, blobs, r, WorkerOptions(f"bench-{i}"), wake, stop)
        for i, (s, r) in enumerate(zip(stores, runners, strict=True))
    ]
    threads = [threading.Thread(target=w.run, daemon=True) for w in workers]
    for thread in threads:
        thread.start()
    submitter = store_factory()
    service = JobService(submitter, blobs, notify=wake.set)
    request = GenerationRequest(model="tiny", prompt="q", width=64, height=64, steps=1,
                                guidance=3.0, seed=1)  # fmt: skip
    started = time.perf_counter()
    ids = [service.submit(request).id for _ in range(jobs)]
    while True:
        done = [submitter.get(i) for i in ids]
        if all(j.status.is_terminal for j in done):
            break
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    pickups = []
    for _ in range(PICKUP_JOBS):
        job = service.submit(request)
        while not (job := submitter.get(job.id)).status.is_terminal:
            time.sleep(0.002)
        pickups.append((job.started_at - job.created_at) * 1000)
    pickups.sort()
    stop.set()
    wake.set()
    for thread in threads:
        thread.join(10)
    waits = sorted((j.started_at - j.created_at) * 1000 for j in done)
    for store in [*stores, submitter]:
        store.close()
    return {
        "jobs_per_s": jobs / elapsed,
        "p50_ms": statistics.median(waits),
        "p95_ms": waits[int(len(waits) * 0.95) - 1],
        "pickup_p50_ms": statistics.median(pickups),
        "pickup_p95_ms": pickups[int(len(pickups) * 0.95) - 1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--workers", default="1,2,4")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    root = Path(tempfile.mkdtemp(prefix="bench-queue-"))
    model = resolve_model(str(make_tiny(root / "tiny")), root)
    model = type(model)("tiny", model.spec, model.path)
    runners = [FluxRunner([model], threads=1) for _ in range(max(counts))]
    for runner in runners:
        runner.load()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{args.jobs} jobs per run, tiny model 64x64, 1 step")  # fmt: skip
    print(f"{'store':<10} {'workers':>7} {'jobs/s':>8} {'backlog p50/p95 ms':>20} "
          f"{'pickup p50/p95 ms':>18}")  # fmt: skip
    results = {}
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        for count in counts:
            for name in ("sqlite", "postgres"):
                if name == "sqlite":
                    path = root / f"{uuid.uuid4().hex}.sqlite3"
                    factory = lambda path=path: SqliteJobStore(path)  # noqa: E731
                else:
                    db = f"bench_{uuid.uuid4().hex[:10]}"
                    admin.execute(f'CREATE DATABASE "{db}"')
                    url = ADMIN.rsplit("/", 1)[0] + f"/{db}"
                    PostgresJobStore(url).close()  # migrate once
                    factory = lambda url=url: PostgresJobStore(url, migrate=False)  # noqa: E731
                figures = run(factory, runners[:count], root / uuid.uuid4().hex, args.jobs)
                if name == "postgres":
                    admin.execute(f'DROP DATABASE "{db}" WITH (FORCE)')
                results[(name, count)] = figures
                backlog = f"{figures['p50_ms']:.0f} / {figures['p95_ms']:.0f}"
                pickup = f"{figures['pickup_p50_ms']:.1f} / {figures['pickup_p95_ms']:.1f}"
                print(f"{name:<10} {count:>7} {figures['jobs_per_s']:>8.1f} {backlog:>20} "
                      f"{pickup:>18}")  # fmt: skip
    for count in counts:
        pg, lite = results[("postgres", count)], results[("sqlite", count)]
        print(f"{count} worker(s): postgres/sqlite throughput ratio "
              f"{pg['jobs_per_s'] / lite['jobs_per_s']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
