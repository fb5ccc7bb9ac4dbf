"""Cluster mode with real processes: API-only replicas and `fluxserve worker`s sharing one
PostgreSQL job store and one data dir (local storage), killed and restarted under load."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import signal
import statistics
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from fluxserve.domain import JobStatus
from fluxserve.store.postgres import PostgresJobStore
from fluxserve.store.tables import jobs
from tests.helpers import FLUXSERVE, free_port

pytestmark = pytest.mark.process

SMALL = {"width": 256, "height": 256, "steps": 2}
# A job of a few seconds on 2 CPU cores with tiny: long enough to kill its worker mid-way.
LONG = {"width": 768, "height": 768, "steps": 40}
# A job of about half a second: 20 of them keep two workers busy for several seconds.
MEDIUM = {"width": 512, "height": 512, "steps": 20}

CHILD_READY = re.compile(rb"fluxserve\.engine\.worker: worker (\S+) serving ")


def job_done_lines(log: bytes) -> list[str]:
    """The ids of the jobs a worker's log says it completed."""
    return [m.decode() for m in re.findall(rb"fluxserve\.engine\.worker: job (\S+) done ", log)]


def pid_of(worker_id: str) -> int:
    """A worker id is ``<hostname>-<pid>`` (the hostname may hold dashes)."""
    return int(worker_id.rsplit("-", 1)[1])


def parent_pid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def is_alive(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(condition, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Proc:
    """A fluxserve process in its own session, so its whole group can be killed."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log_path = log
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            [FLUXSERVE, *args], stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> bytes:
        return self.log_path.read_bytes()

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.log_path.name}: still running after {timeout} s") from None

    def kill_group(self) -> None:
        """SIGKILL the process and everything it started (its workers too)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()


class Api(Proc):
    """`fluxserve serve --no-worker`: an API-only replica."""

    def __init__(self, cluster: Cluster, name: str, log_level: str = "warning") -> None:
        # At warning, no access log: the soak makes thousands of calls.
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        args = ["serve", "--no-worker", *cluster.common, "--port", str(self.port)]
        args += ["--log-level", log_level]
        super().__init__(args, cluster.dir / f"{name}.log")
        self.http = httpx.Client(base_url=self.base, timeout=30)

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, f"API replica exited:\n{self.log().decode()[-3000:]}"
            try:
                return self.http.get("/readyz").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, timeout, f"{self.log_path.name} to be ready", 0.1)

    def submit(self, **fields) -> str:
        response = self.http.post("/v1/flux-dev", json={"prompt": "a fox", **fields})
        assert response.status_code == 200, response.text
        return response.json()["id"]

    def result(self, job_id: str) -> dict:
        response = self.http.get("/v1/get_result", params={"id": job_id})
        assert response.status_code == 200, response.text
        return response.json()

    def kill_group(self) -> None:
        self.http.close()
        super().kill_group()


class WorkerProc(Proc):
    """`fluxserve worker`: a parent that runs one worker process (the child)."""

    def __init__(self, cluster: Cluster, name: str, *flags: str) -> None:
        super().__init__(["worker", *cluster.common, *flags], cluster.dir / f"{name}.log")

    def child_ids(self) -> list[str]:
        """The worker ids of the children that became ready, in order."""
        return [m.decode() for m in CHILD_READY.findall(self.log())]

    def wait_child(self, count: int = 1, timeout: float = 120) -> str:
        """Wait until ``count`` children have become ready; the latest one's worker id."""

        def ready() -> list[str] | None:
            assert self.proc.poll() is None, f"worker exited:\n{self.log().decode()[-3000:]}"
            ids = self.child_ids()
            return ids if len(ids) >= count else None

        return wait_for(ready, timeout, f"{self.log_path.name}: child {count} ready", 0.1)[-1]


class Cluster:
    def __init__(self, directory: Path, database: str, tiny: Path, lease: float) -> None:
        self.dir = directory
        self.data_dir = directory / "data"
        # `--model tiny` finds the model built once for the session, as if built on first use.
        (self.data_dir / "models").mkdir(parents=True)
        (self.data_dir / "models" / "tiny").symlink_to(tiny, target_is_directory=True)
        self.database = database
        self.common = ["--database", database, "--model", "tiny", "--data-dir", str(self.data_dir)]
        self.common += ["--lease-seconds", str(lease)]
        self.procs: list[Proc] = []
        self._store: PostgresJobStore | None = None

    def api(self, name: str, log_level: str = "warning") -> Api:
        api = Api(self, name, log_level)
        self.procs.append(api)
        return api

    def worker(self, name: str, *flags: str) -> WorkerProc:
        worker = WorkerProc(self, name, *flags)
        self.procs.append(worker)
        return worker

    @property
    def store(self) -> PostgresJobStore:
        if self._store is None:  # the schema is the first member's to create
            self._store = PostgresJobStore(self.database, migrate=False)
        return self._store

    def rows(self) -> list[dict]:
        with self.store.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.select(jobs).order_by(jobs.c.seq))]

    def counts(self) -> Counter:
        return Counter(row["status"] for row in self.rows())

    def result_files(self) -> list[Path]:
        return sorted(p for p in (self.data_dir / "blobs" / "results").rglob("*") if p.is_file())

    def close(self) -> None:
        for proc in self.procs:
            proc.kill_group()
        if self._store is not None:
            self._store.close()


@pytest.fixture
def cluster(tmp_path, pg_url, tiny_model_dir):
    made: list[Cluster] = []

    def make(lease: float) -> Cluster:
        made.append(Cluster(tmp_path, pg_url, tiny_model_dir, lease))
        return made[-1]

    try:
        yield make
    finally:
        for each in made:
            each.close()


def test_worker_killed_mid_job_is_rerun_by_another_worker(cluster):
    c = cluster(lease=3)
    api = c.api("api")
    workers = [c.worker("worker-a"), c.worker("worker-b")]
    api.wait_ready()
    first_children = {w.pid: w.wait_child() for w in workers}

    job_id = api.submit(seed=7, **LONG)
    running = wait_for(
        lambda: (job := c.store.get(job_id)) and job.status is JobStatus.RUNNING
        and job.progress > 0 and job,
        60,
        "the job to be running",
    )  # fmt: skip
    assert running.attempt == 1
    victim_id = running.worker_id
    victim_pid = pid_of(victim_id)
    owner = next(w for w in workers if w.pid == parent_pid(victim_pid))
    other = next(w for w in workers if w is not owner)
    assert first_children[owner.pid] == victim_id

    os.kill(victim_pid, signal.SIGKILL)  # as the OOM killer would, mid-generation
    assert c.store.get(job_id).status is JobStatus.RUNNING  # killed while running it

    # The job runs again (attempt 2) on the other worker, and ends Ready with one image.
    body = wait_for(lambda: (b := api.result(job_id))["status"] != "Pending" and b, 90, "the job")
    assert body["status"] == "Ready", body
    assert api.http.get(body["result"]["sample"]).status_code == 200
    done = c.store.get(job_id)
    assert done.status is JobStatus.SUCCEEDED
    assert done.attempt == 2
    assert done.worker_id == first_children[other.pid]
    assert done.result_keys == [f"results/{job_id}/2-0.jpeg"]
    assert [p.name for p in c.result_files()] == ["2-0.jpeg"]  # attempt 1 stored nothing
    assert job_done_lines(other.log()) == [job_id]
    assert job_done_lines(owner.log()) == []

    # The dead worker's late writes carry the stale fencing token: all rejected.
    assert not c.store.complete(job_id, 1, [f"results/{job_id}/1-0.jpeg"])
    assert not c.store.heartbeat(job_id, 1, 30)
    assert not c.store.set_progress(job_id, 1, 0.5)
    assert not c.store.fail(job_id, 1, "generation_failed", "late")
    assert not c.store.release(job_id, 1)
    after = c.store.get(job_id)
    assert (after.status, after.attempt, after.result_keys, after.error_code) == (
        JobStatus.SUCCEEDED, 2, [f"results/{job_id}/2-0.jpeg"], None,
    )  # fmt: skip
    assert api.result(job_id)["status"] == "Ready"

    # The parent noticed, and started a new child that serves.
    replacement = owner.wait_child(count=2)
    assert b"stopped unexpectedly (exit code -9)" in owner.log()
    assert replacement != victim_id
    assert not is_alive(victim_pid)
    assert parent_pid(pid_of(replacement)) == owner.pid
    assert is_alive(pid_of(replacement))
    assert owner.proc.poll() is None
    other_child = pid_of(first_children[other.pid])
    os.kill(other_child, signal.SIGSTOP)  # only the replacement can take the next job
    try:
        next_id = api.submit(seed=8, **SMALL)
        body = wait_for(lambda: (b := api.result(next_id))["status"] != "Pending" and b, 60, "job")
    finally:
        os.kill(other_child, signal.SIGCONT)
    assert body["status"] == "Ready", body
    assert c.store.get(next_id).worker_id == replacement


def test_restarting_every_api_replica_loses_and_repeats_no_job(cluster):
    c = cluster(lease=3)
    apis = [c.api("api-a", "info"), c.api("api-b")]
    workers = [c.worker("worker-a"), c.worker("worker-b")]
    for api in apis:
        api.wait_ready()
    for worker in workers:
        worker.wait_child()

    ids = [apis[i % 2].submit(seed=i, **MEDIUM) for i in range(20)]
    assert len(set(ids)) == 20
    # Mid-way: some jobs done, some running, some still queued.
    wait_for(lambda: c.counts()["succeeded"] >= 2, 120, "two jobs done")
    apis[0].signal(signal.SIGTERM)  # a rolling restart...
    apis[1].kill_group()  # ...and a crash
    # uvicorn shuts down gracefully, then re-raises the SIGTERM: the exit status says so.
    assert apis[0].wait(30) in (0, -signal.SIGTERM)
    assert b"Application shutdown complete" in apis[0].log()
    apis[0].kill_group()
    down = c.counts()
    assert down["queued"] >= 1, down

    # With no API up, the workers go on with the queue.
    wait_for(lambda: c.counts()["succeeded"] > down["succeeded"], 60, "progress without APIs")
    apis = [c.api("api-a2"), c.api("api-b2")]
    for api in apis:
        api.wait_ready()
    for i, job_id in enumerate(ids):
        api = apis[i % 2]
        body = wait_for(lambda a=api, j=job_id: (b := a.result(j))["status"] != "Pending" and b,
                        120, f"job {job_id}")  # fmt: skip
        assert body["status"] == "Ready", json.dumps(body)
        assert apis[(i + 1) % 2].result(job_id)["status"] == "Ready"  # either replica says so

    rows = {row["id"]: row for row in c.rows()}
    assert sorted(rows) == sorted(ids)
    for job_id, row in rows.items():
        assert (row["status"], row["attempt"]) == ("succeeded", 1), row
        assert row["result_keys"] == f'["results/{job_id}/1-0.jpeg"]', row
    completed = Counter(job_done_lines(workers[0].log()) + job_done_lines(workers[1].log()))
    assert completed == Counter(ids)  # each job completed once, by one worker
    assert len(c.result_files()) == 20

    # An idle worker stops promptly and cleanly on SIGTERM, its child with it.
    children = [pid_of(w.child_ids()[-1]) for w in workers]
    for worker in workers:
        worker.signal(signal.SIGTERM)
    for worker in workers:
        assert worker.wait(60) == 0, worker.log().decode()[-3000:]
    assert not any(is_alive(pid) for pid in children)


def test_a_worker_stopped_mid_job_hands_it_back_within_its_grace(cluster):
    """SIGTERM on a busy `fluxserve worker`: past the grace's abort point the job stops at
    its next step and goes back to the queue, its attempt given back; another worker runs
    it; the stopped one has exited, its child with it, within the grace."""
    c = cluster(lease=3)
    api = c.api("api")
    first = c.worker("worker-a", "--shutdown-grace", "8")
    api.wait_ready()
    child = pid_of(first.wait_child())
    job_id = api.submit(seed=9, width=1440, height=1440, steps=50)  # ~20 s here
    wait_for(lambda: (j := c.store.get(job_id)).status is JobStatus.RUNNING and j.progress > 0,
             60, "the job running")  # fmt: skip

    first.signal(signal.SIGTERM)
    assert first.wait(8 + 6) == 0, first.log().decode()[-3000:]
    assert not is_alive(child)
    job = c.store.get(job_id)
    assert (job.status, job.attempt) == (JobStatus.QUEUED, 0)

    c.worker("worker-b").wait_child()
    body = wait_for(lambda: (b := api.result(job_id))["status"] != "Pending" and b, 120, "job")
    assert body["status"] == "Ready", body
    assert c.store.get(job_id).attempt == 1  # the stopped run was not counted


SOAK_JOBS = 500
SOAK_CLIENTS = 10
SOAK_DEADLINE = 280.0  # seconds a soak client has for all its jobs (the test joins at 300)


def _soak_job_end(http: httpx.Client, kind: str, job_id: str) -> tuple[str, str | None] | None:
    """A soak job's end, ``(status, image URL)``, or None while it runs."""
    if kind == "bfl":
        body = http.get("/v1/get_result", params={"id": job_id}).json()
        if body["status"] == "Pending":
            return None
        return body["status"], body.get("result", {}).get("sample")
    root = f"/queue/fal-ai/flux/requests/{job_id}"
    body = http.get(f"{root}/status").json()
    if body["status"] != "COMPLETED":
        return None
    assert body.get("error") is None, body
    result = http.get(root).json()
    if not result.get("images"):
        return str(result), None
    return "Ready", result["images"][0]["url"]


def _soak_client(api: Api, index: int, count: int, out: list, errors: list) -> None:
    """Submit ``count`` jobs (BFL and fal alternately), then poll each to its end; a job
    still running at the client's deadline is reported as an error."""
    deadline = time.monotonic() + SOAK_DEADLINE
    try:
        http = httpx.Client(base_url=api.base, timeout=60)
        pending = []
        for k in range(count):
            steps = 1 + k % 2
            submitted = time.monotonic()
            if (index + k) % 2 == 0:
                response = http.post(
                    "/v1/flux-dev", json={"prompt": f"fox {index}-{k}", "width": 256,
                                          "height": 256, "steps": steps, "seed": k},
                )  # fmt: skip
                assert response.status_code == 200, response.text
                pending.append(("bfl", response.json()["id"], submitted))
            else:
                response = http.post(
                    "/queue/fal-ai/flux/dev",
                    json={"prompt": f"fox {index}-{k}", "num_inference_steps": steps, "seed": k,
                          "image_size": {"width": 256, "height": 256}},
                )  # fmt: skip
                assert response.status_code == 200, response.text
                body = response.json()
                pending.append(("fal", body["request_id"], submitted))
        for kind, job_id, submitted in pending:
            status, image_url = wait_for(
                functools.partial(_soak_job_end, http, kind, job_id),
                deadline - time.monotonic(),
                f"{kind} job {job_id} to end",
                0.2,
            )
            finished = time.monotonic()
            fetched = http.get(image_url).status_code if image_url else None
            out.append((kind, job_id, status, finished - submitted, fetched))
        http.close()
    except Exception as exc:  # reported by the test, with the others
        errors.append(f"client {index}: {type(exc).__name__}: {exc}")


def test_soak_two_workers_two_replicas(cluster):
    c = cluster(lease=10)
    apis = [c.api("api-a"), c.api("api-b")]
    workers = [c.worker("worker-a"), c.worker("worker-b")]
    for api in apis:
        api.wait_ready()
    children = [w.wait_child() for w in workers]

    results: list = []
    errors: list = []
    per_client = -(-SOAK_JOBS // SOAK_CLIENTS)
    clients = [
        threading.Thread(target=_soak_client, args=(apis[i % 2], i, per_client, results, errors))
        for i in range(SOAK_CLIENTS)
    ]
    started = time.monotonic()
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(300)
    wall = time.monotonic() - started
    assert not any(thread.is_alive() for thread in clients), "clients still polling after 300 s"
    assert errors == []

    total = per_client * SOAK_CLIENTS
    ids = [job_id for _, job_id, *_ in results]
    assert len(ids) == total >= SOAK_JOBS
    assert len(set(ids)) == total  # no id handed out twice
    assert Counter(status for _, _, status, *_ in results) == {"Ready": total}
    assert Counter(fetched for *_, fetched in results) == {200: total}
    assert Counter(kind for kind, *_ in results) == {"bfl": total // 2, "fal": total // 2}

    rows = c.rows()
    assert sorted(row["id"] for row in rows) == sorted(ids)  # none lost, none extra
    assert Counter(row["status"] for row in rows) == {"succeeded": total}
    assert Counter(row["attempt"] for row in rows) == {1: total}  # none run twice
    for row in rows:
        assert row["result_keys"] == f'["results/{row["id"]}/1-0.jpeg"]', row
    files = c.result_files()
    assert len(files) == total
    assert {p.parent.name for p in files} == set(ids)
    completed = Counter(job_done_lines(workers[0].log()) + job_done_lines(workers[1].log()))
    assert completed == Counter(ids)
    per_worker = Counter(row["worker_id"] for row in rows)
    assert set(per_worker) == set(children)  # both workers took jobs, and no one else

    server = sorted(row["finished_at"] - row["created_at"] for row in rows)
    client = sorted(seconds for _, _, _, seconds, _ in results)
    span = max(row["finished_at"] for row in rows) - min(row["created_at"] for row in rows)
    p95 = int(0.95 * (total - 1))
    print(  # noqa: T201 (the figures the soak is for; shown with -s)
        f"\nsoak: {total} jobs ({total // 2} BFL, {total // 2} fal) from {SOAK_CLIENTS} clients "
        f"over 2 API replicas, 2 workers; wall {wall:.1f} s, {total / wall:.1f} jobs/s "
        f"(first submit to last finish {span:.1f} s, {total / span:.1f} jobs/s); "
        f"submit->finish p50 {statistics.median(server):.2f} s, p95 {server[p95]:.2f} s, "
        f"max {server[-1]:.2f} s (server clock); client-observed p50 "
        f"{statistics.median(client):.2f} s, p95 {client[p95]:.2f} s; "
        f"jobs per worker {sorted(per_worker.values())}"
    )


def _drop_connections(database_url: str, refuse: bool | None = None) -> None:
    """Terminate every connection to the test database; optionally refuse new ones."""
    import psycopg

    from tests.conftest import POSTGRES_ADMIN_URL

    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        if refuse is not None:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(not refuse).lower()}')
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )


def test_database_outage_under_load_everyone_reconnects(cluster):
    """Connections dropped twice, then the database refusing connections for a while,
    all while jobs run: requests during the outage get 503 + Retry-After (no hang), and
    the API and the worker carry on afterwards; every accepted job ends Ready."""
    c = cluster(lease=10)
    api = c.api("api")
    worker = c.worker("worker")
    api.wait_ready()
    worker.wait_child()
    ids = [api.submit(seed=i, **SMALL) for i in range(15)]
    wait_for(lambda: c.counts()["succeeded"] >= 1, 60, "a first job done")
    c.store.close()  # the test's own connections go too; it reconnects on use
    _drop_connections(c.database)
    ids += [api.submit(seed=100 + i, **SMALL) for i in range(5)]  # the API reconnected
    _drop_connections(c.database)
    try:
        _drop_connections(c.database, refuse=True)
        started = time.monotonic()
        response = api.http.post("/v1/flux-dev", json={"prompt": "x", **SMALL})
        assert time.monotonic() - started < 25  # an answer, not a hang
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "5"
        assert "database" in response.json()["detail"]
        time.sleep(1.0)  # the worker meets the outage too
    finally:
        _drop_connections(c.database, refuse=False)
    ids += [api.submit(seed=200 + i, **SMALL) for i in range(5)]
    for job_id in ids:
        body = wait_for(lambda j=job_id: (b := api.result(j))["status"] != "Pending" and b,
                        120, f"job {job_id}")  # fmt: skip
        assert body["status"] == "Ready", json.dumps(body)
    rows = {row["id"]: row for row in c.rows()}
    assert sorted(rows) == sorted(ids)  # the refused submit left no job behind
    assert all(row["status"] == "succeeded" for row in rows.values())
    assert Counter(job_done_lines(worker.log())) == Counter(ids)  # each completed once
