"""S3-compatible object storage (cluster mode): S3Storage against a real S3-protocol server.

moto's S3 server runs on loopback, in front of it a small check of presigned GETs: moto
serves any presigned URL, whatever its signature or expiry, while AWS S3 (and R2, MinIO)
refuse a bad signature or an expired URL with 403 and new AWS buckets and R2 take SigV4
only. The check does what they do, so a URL that works here works there.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import io
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qsl, quote, urlsplit

import boto3
import httpx
import pytest
from fastapi.testclient import TestClient
from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from PIL import Image
from werkzeug.serving import make_server

from fluxserve.api.app import create_app
from fluxserve.config import Settings
from fluxserve.errors import ConfigurationError, StorageError
from fluxserve.storage.opening import open_storage
from fluxserve.storage.s3 import S3Storage
from fluxserve.store.sqlite import SqliteJobStore
from tests.helpers import SMALL, b64, free_port, image_bytes, poll_result, wait_ready

ACCESS_KEY = "AKIAFLUXSERVETEST"
SECRET_KEY = "fluxserve-test-secret"
REGION = "us-east-1"


# -- the server ------------------------------------------------------------------------------


def _forbidden(start_response, code: str, message: str) -> list[bytes]:
    start_response("403 Forbidden", [("Content-Type", "application/xml")])
    return [f"<Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()]


def _presign_problem(environ: dict, query: list[tuple[str, str]]) -> tuple[str, str] | None:
    """Why S3 would refuse this presigned GET (SigV4 query auth), or None."""
    params = dict(query)
    if params.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256":
        return "AccessDenied", "only SigV4 presigned URLs are accepted"
    access_key, *scope = params["X-Amz-Credential"].split("/")
    amz_date = params["X-Amz-Date"]
    signed_at = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    if time.time() > signed_at.timestamp() + int(params["X-Amz-Expires"]):
        return "AccessDenied", "Request has expired"
    if access_key != ACCESS_KEY or params["X-Amz-SignedHeaders"] != "host":
        return "InvalidAccessKeyId", "unknown key or unexpected signed headers"
    canonical_query = "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
        for k, v in sorted(query)
        if k != "X-Amz-Signature"
    )
    canonical = "\n".join(
        ["GET", quote(environ["PATH_INFO"], safe="/~"), canonical_query,
         f"host:{environ['HTTP_HOST']}\n", "host", "UNSIGNED-PAYLOAD"]
    )  # fmt: skip
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, "/".join(scope),
         hashlib.sha256(canonical.encode()).hexdigest()]
    )  # fmt: skip
    key = f"AWS4{SECRET_KEY}".encode()
    for part in scope:
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, params["X-Amz-Signature"]):
        return "SignatureDoesNotMatch", "the signature does not match"
    return None


class S3Server:
    """moto's S3 on 127.0.0.1, presigned GETs checked as S3 checks them.

    ``stop`` closes the listening socket too (moto's ThreadedMotoServer leaves it open, so
    clients would hang instead of being refused). moto keeps its buckets in the process:
    a server started later, on any port, serves the same buckets.
    """

    def __init__(self, port: int = 0) -> None:
        self.moto = DomainDispatcherApplication(create_backend_app)
        self.server = make_server(
            "127.0.0.1", port, self.app, threaded=True, request_handler=MotoRequestHandler
        )
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def app(self, environ, start_response):
        query = parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        presigned = any(k in ("X-Amz-Signature", "Signature") for k, _ in query)
        if environ["REQUEST_METHOD"] == "GET" and presigned:
            problem = _presign_problem(environ, query)
            if problem is not None:
                return _forbidden(start_response, *problem)
        return self.moto(environ, start_response)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture(scope="module")
def aws_env() -> Iterator[None]:
    """Dummy credentials, and nothing of the machine's own AWS setup."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        patch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        patch.setenv("AWS_DEFAULT_REGION", REGION)
        patch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
                     "AWS_ENDPOINT_URL_S3", "AWS_REGION"):  # fmt: skip
            patch.delenv(name, raising=False)
        yield


@pytest.fixture(scope="module")
def s3_server(aws_env: None) -> Iterator[S3Server]:
    server = S3Server()
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server: S3Server):
    """A plain boto3 client, to look into the bucket behind S3Storage's back."""
    return boto3.client("s3", endpoint_url=s3_server.url, region_name=REGION)


@pytest.fixture
def bucket(s3) -> str:
    name = f"fluxserve-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def bucket_keys(s3, bucket: str, prefix: str = "") -> set[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


def open_s3(server: S3Server, url: str) -> S3Storage:
    return S3Storage(url, endpoint_url=server.url, region=REGION)


# -- the BlobStorage contract ----------------------------------------------------------------


def test_put_get_under_prefix(s3_server, s3, bucket):
    storage = open_s3(s3_server, f"s3://{bucket}/team/images/")
    storage.put("results/job-1/1-0.png", b"png bytes", "image/png")
    assert storage.get("results/job-1/1-0.png") == b"png bytes"
    assert bucket_keys(s3, bucket) == {"team/images/results/job-1/1-0.png"}
    head = s3.head_object(Bucket=bucket, Key="team/images/results/job-1/1-0.png")
    assert head["ContentType"] == "image/png"
    with pytest.raises(StorageError, match="results/job-1/1-1.png"):
        storage.get("results/job-1/1-1.png")


@pytest.mark.parametrize("url", ["s3://{}", "s3://{}/"])
def test_bucket_without_prefix(s3_server, s3, bucket, url):
    storage = open_s3(s3_server, url.format(bucket))
    storage.put("inputs/job-2/0.png", b"input", "image/png")
    assert bucket_keys(s3, bucket) == {"inputs/job-2/0.png"}
    assert storage.get("inputs/job-2/0.png") == b"input"


def test_delete_is_idempotent(s3_server, s3, bucket):
    storage = open_s3(s3_server, f"s3://{bucket}/p")
    storage.put("results/job-3/1-0.jpeg", b"a", "image/jpeg")
    storage.put("results/job-3/1-1.jpeg", b"b", "image/jpeg")
    storage.delete("results/job-3/1-0.jpeg")
    assert bucket_keys(s3, bucket) == {"p/results/job-3/1-1.jpeg"}
    with pytest.raises(StorageError):
        storage.get("results/job-3/1-0.jpeg")
    storage.delete("results/job-3/1-0.jpeg")  # already gone: no error
    storage.delete("results/never-there/1-0.jpeg")
    assert bucket_keys(s3, bucket) == {"p/results/job-3/1-1.jpeg"}


def test_delete_prefix_removes_that_folder_only(s3_server, s3, bucket):
    storage = open_s3(s3_server, f"s3://{bucket}/p")
    doomed = {f"results/job-a/1-{n}.png" for n in range(1005)} | {"results/job-a/2-0.png"}
    kept = {
        "results/job-ab/1-0.png",  # same leading characters, another job
        "results/job-b/1-0.png",
        "inputs/job-a/0.png",  # another folder of the same job
        "results/job-a.png",
    }
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: storage.put(key, b"x", "image/png"), doomed | kept))
    assert len(bucket_keys(s3, bucket, "p/results/job-a/")) == 1006  # more than one page
    storage.delete_prefix("results/job-a")
    assert bucket_keys(s3, bucket) == {f"p/{key}" for key in kept}
    storage.delete_prefix("results/job-a")  # nothing left there: no error
    storage.delete_prefix("results/nobody")
    assert bucket_keys(s3, bucket) == {f"p/{key}" for key in kept}


@pytest.mark.parametrize(
    "key", ["../x.png", "/etc/passwd", "results/../../x.png", "a b.png", "results/j/", ""]
)
def test_invalid_keys_refused(s3_server, s3, bucket, key):
    storage = open_s3(s3_server, f"s3://{bucket}/p")
    calls = {
        "put": lambda: storage.put(key, b"x", "image/png"),
        "get": lambda: storage.get(key),
        "delete": lambda: storage.delete(key),
        "url": lambda: storage.url(key, "http://testserver", 60),
    }
    for name, call in calls.items():
        with pytest.raises(StorageError, match="invalid blob key"):
            call()
        assert bucket_keys(s3, bucket) == set(), name


@pytest.mark.parametrize("prefix", ["../results", "/results/j", "results/j/", "a b"])
def test_invalid_prefix_refused(s3_server, s3, bucket, prefix):
    storage = open_s3(s3_server, f"s3://{bucket}")
    storage.put("results/j/1-0.png", b"x", "image/png")
    with pytest.raises(StorageError, match="invalid blob prefix"):
        storage.delete_prefix(prefix)
    assert bucket_keys(s3, bucket) == {"results/j/1-0.png"}


@pytest.mark.parametrize(
    "url", ["bucket/prefix", "s3://", "s3:///prefix", "http://bucket/prefix", "S3:/bucket"]
)
def test_bad_url_is_a_configuration_error(aws_env, url):
    with pytest.raises(ConfigurationError, match="s3://bucket"):
        S3Storage(url)


def test_open_storage_picks_s3(s3_server, tmp_path):
    settings = Settings(
        data_dir=tmp_path, storage="s3://some-bucket/a/b", s3_endpoint_url=s3_server.url
    )
    storage = open_storage(settings)
    assert isinstance(storage, S3Storage)
    assert (storage.bucket, storage.prefix) == ("some-bucket", "a/b")
    with pytest.raises(ConfigurationError):
        open_storage(Settings(data_dir=tmp_path, storage="s3:///no-bucket"))


# -- presigned URLs --------------------------------------------------------------------------


def test_presigned_url_without_credentials_and_its_expiry(s3_server, bucket):
    storage = open_s3(s3_server, f"s3://{bucket}/pre")
    data = image_bytes(fmt="JPEG")
    storage.put("results/job-4/1-0.jpeg", data, "image/jpeg")
    storage.put("results/job-4/1-1.jpeg", b"other", "image/jpeg")
    url = storage.url("results/job-4/1-0.jpeg", "http://testserver", 60)
    short = storage.url("results/job-4/1-0.jpeg", "http://testserver", 1)
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == s3_server.url  # the store's, not the API's
    assert parts.path == f"/{bucket}/pre/results/job-4/1-0.jpeg"
    assert dict(parse_qsl(parts.query))["X-Amz-Expires"] == "60"

    with httpx.Client() as plain:  # no AWS credentials: the URL alone grants access
        response = plain.get(url)
        assert response.status_code == 200, response.text
        assert response.content == data
        assert response.headers["content-type"] == "image/jpeg"
        # The signature covers the key: the same query string opens no other object.
        other = plain.get(url.replace("/1-0.jpeg?", "/1-1.jpeg?"))
        assert other.status_code == 403, other.text

        time.sleep(2.1)
        expired = plain.get(short)
        assert expired.status_code == 403
        assert "Request has expired" in expired.text
        assert plain.get(url).status_code == 200  # the 60 s URL still works


# -- through the app -------------------------------------------------------------------------


def s3_settings(tmp_path, model_dir, bucket: str, endpoint: str, **extra) -> Settings:
    return Settings(
        model=[str(model_dir)],
        data_dir=tmp_path / "data",
        worker_mode="thread",
        storage=f"s3://{bucket}/pre",
        s3_endpoint_url=endpoint,
        s3_region=REGION,
        **extra,
    )


@pytest.fixture
def releases(monkeypatch) -> list[int]:
    """The attempts the worker put back in the queue (store.release), in order."""
    calls: list[int] = []
    original = SqliteJobStore.release

    def release(self, job_id: str, attempt: int) -> bool:
        calls.append(attempt)
        return original(self, job_id, attempt)

    monkeypatch.setattr(SqliteJobStore, "release", release)
    return calls


def fetched_image(url: str) -> Image.Image:
    response = httpx.get(url)
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(response.content))


def test_app_on_s3(tmp_path, tiny_model_dir, s3_server, s3, bucket):
    settings = s3_settings(tmp_path, tiny_model_dir, bucket, s3_server.url)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        # A BFL job: its result is an object of the bucket, linked by a presigned URL.
        job_id = client.post("/v1/flux-schnell", json={"prompt": "s3", "seed": 1, **SMALL})
        job_id = job_id.json()["id"]
        body = poll_result(client, job_id)
        assert body["status"] == "Ready", body
        sample = body["result"]["sample"]
        assert sample.startswith(f"{s3_server.url}/{bucket}/pre/results/{job_id}/1-0.jpeg?")
        image = fetched_image(sample)
        assert (image.format, image.size) == ("JPEG", (256, 256))
        assert bucket_keys(s3, bucket) == {f"pre/results/{job_id}/1-0.jpeg"}

        # fal's sync_mode: the images come inline and nothing is left in the bucket.
        response = client.post(
            "/fal-ai/flux/dev",
            json={"prompt": "inline", "sync_mode": True, "num_inference_steps": 1,
                  "image_size": {"width": 256, "height": 256}},
        )  # fmt: skip
        assert response.status_code == 200, response.text
        uri = response.json()["images"][0]["url"]
        assert uri.startswith("data:image/jpeg;base64,"), uri[:60]
        inline = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
        assert (inline.format, inline.size) == ("JPEG", (256, 256))
        assert bucket_keys(s3, bucket) == {f"pre/results/{job_id}/1-0.jpeg"}

        # image_prompt: the input image is stored in the bucket with the job.
        body = {"prompt": "dusk", "image_prompt": b64(image_bytes()), "strength": 0.5,
                "steps": 2, "output_format": "png", "seed": 2, **SMALL}  # fmt: skip
        response = client.post("/v1/flux-dev", json=body)
        assert response.status_code == 200, response.text
        i2i_id = response.json()["id"]
        result = poll_result(client, i2i_id)
        assert result["status"] == "Ready", result
        assert fetched_image(result["result"]["sample"]).format == "PNG"
        stored = s3.get_object(Bucket=bucket, Key=f"pre/inputs/{i2i_id}/0.png")["Body"].read()
        assert Image.open(io.BytesIO(stored)).size == (256, 256)
        assert bucket_keys(s3, bucket) == {
            f"pre/results/{job_id}/1-0.jpeg",
            f"pre/results/{i2i_id}/1-0.png",
            f"pre/inputs/{i2i_id}/0.png",
        }

        # Purging ended jobs deletes their objects, and only theirs.
        s3.put_object(Bucket=bucket, Key="pre/keep/this.png", Body=b"not a job's")
        s3.put_object(Bucket=bucket, Key=f"other/results/{job_id}/1-0.jpeg", Body=b"x")
        assert client.app.state.services.jobs.purge_ended(0) == 3
        assert bucket_keys(s3, bucket) == {
            "pre/keep/this.png",
            f"other/results/{job_id}/1-0.jpeg",
        }


def test_store_unreachable_fails_the_job_after_its_attempts(
    tmp_path, tiny_model_dir, aws_env, releases
):
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens: refused at once
    settings = s3_settings(tmp_path, tiny_model_dir, "fluxserve-gone", closed, max_attempts=2)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        job_id = client.post("/v1/flux-schnell", json={"prompt": "x", **SMALL}).json()["id"]
        body = poll_result(client, job_id)
        assert body["status"] == "Error", body
        assert body["result"] is None
        assert body["details"]["code"] == "storage_unavailable", body
        assert job_id in body["details"]["message"]
        assert releases == [1]  # the first attempt was put back, the second one failed
        job = client.app.state.services.jobs.get(job_id)
        assert job.attempt == 2
        assert job.result_keys == []


def test_store_back_before_the_next_attempt(
    tmp_path, tiny_model_dir, s3_server, s3, bucket, monkeypatch
):
    port = free_port()
    revived: list[S3Server] = []
    original = SqliteJobStore.release

    def release(self, job_id: str, attempt: int) -> bool:
        """The worker puts the job back; the store comes back before it claims it again."""
        released = original(self, job_id, attempt)
        revived.append(S3Server(port))
        return released

    monkeypatch.setattr(SqliteJobStore, "release", release)
    settings = s3_settings(tmp_path, tiny_model_dir, bucket, f"http://127.0.0.1:{port}")
    try:
        with TestClient(create_app(settings)) as client:
            wait_ready(client)
            job_id = client.post("/v1/flux-schnell", json={"prompt": "y", **SMALL}).json()["id"]
            body = poll_result(client, job_id)
            assert body["status"] == "Ready", body
            assert len(revived) == 1
            job = client.app.state.services.jobs.get(job_id)
            assert job.attempt == 2
            # One image, the second attempt's (the first one's put never got through).
            assert job.result_keys == [f"results/{job_id}/2-0.jpeg"]
            assert bucket_keys(s3, bucket) == {f"pre/results/{job_id}/2-0.jpeg"}
            assert fetched_image(body["result"]["sample"]).size == (256, 256)
    finally:
        for server in revived:
            server.stop()


def test_without_s3_region_urls_are_presigned_for_the_buckets_own_region(s3_server, s3):
    name = f"fluxserve-eu-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    storage = S3Storage(f"s3://{name}", endpoint_url=s3_server.url)  # no --s3-region
    assert storage.client.meta.region_name == "eu-west-1"
    storage.put("results/job-9/1-0.png", b"png", "image/png")
    url = storage.url("results/job-9/1-0.png", "http://testserver", 60)
    assert "/eu-west-1/s3/aws4_request" in dict(parse_qsl(urlsplit(url).query))["X-Amz-Credential"]
    # A bucket in us-east-1 (no location constraint) keeps the default.
    home = f"fluxserve-us-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=home)
    assert S3Storage(f"s3://{home}", endpoint_url=s3_server.url).client.meta.region_name == (
        "us-east-1"
    )
