"""Blobs in an S3-compatible object store (AWS S3, MinIO, R2...), linked by presigned URLs.

Keys are the same as on local disk, under an optional prefix. Credentials come from the
usual places boto3 reads (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, a profile, an
instance role); ``--s3-endpoint-url`` points it at a non-AWS store.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from fluxserve.errors import ConfigurationError, StorageError
from fluxserve.storage.base import is_valid_key

logger = logging.getLogger(__name__)

# Fail fast when the store is unreachable: the worker puts the job back and retries.
# SigV4 throughout: without it botocore presigns with SigV2 (in us-east-1, or with no
# region), which new AWS buckets and R2 refuse.
CLIENT_CONFIG = Config(
    connect_timeout=5,
    read_timeout=30,
    retries={"max_attempts": 2, "mode": "standard"},
    signature_version="s3v4",
)


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, prefix without slashes)."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ConfigurationError(
            f"--storage {url} must look like s3://bucket or s3://bucket/prefix"
        )
    return parts.netloc, parts.path.strip("/")


class S3Storage:
    def __init__(
        self, url: str, endpoint_url: str | None = None, region: str | None = None
    ) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        self.client = boto3.client(
            "s3", endpoint_url=endpoint_url, region_name=region, config=CLIENT_CONFIG
        )
        if region is None:
            # A SigV4 presigned URL names the bucket's region; signed for another one, S3
            # refuses it. Without --s3-region, ask the bucket where it lives.
            found = self._bucket_region()
            if found and found != self.client.meta.region_name:
                logger.info("bucket %s is in %s: presigning for it", self.bucket, found)
                self.client = boto3.client(
                    "s3", endpoint_url=endpoint_url, region_name=found, config=CLIENT_CONFIG
                )

    def _bucket_region(self) -> str | None:
        try:
            answer = self.client.get_bucket_location(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:  # no permission, or not there yet
            logger.warning("could not ask bucket %s for its region (%s); give --s3-region "
                           "if its presigned URLs are refused", self.bucket, exc)  # fmt: skip
            return None
        # S3 answers no constraint for us-east-1, and "EU" for the oldest eu-west-1 buckets.
        constraint = answer.get("LocationConstraint")
        return {None: "us-east-1", "": "us-east-1", "EU": "eu-west-1"}.get(constraint, constraint)

    def _key(self, key: str) -> str:
        if not is_valid_key(key):
            raise StorageError(f"invalid blob key {key!r}")
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes, content_type: str) -> None:
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self._key(key), Body=data, ContentType=content_type
            )
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"could not store {key}: {exc}") from exc

    def get(self, key: str) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return response["Body"].read()
        except ClientError as exc:
            raise StorageError(f"blob {key!r} could not be read: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"blob {key!r} could not be read: {exc}") from exc

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"could not delete {key}: {exc}") from exc

    def delete_prefix(self, prefix: str) -> None:
        if not is_valid_key(prefix + ".x"):
            raise StorageError(f"invalid blob prefix {prefix!r}")
        folder = self._key(prefix + ".x")[: -len(".x")] + "/"
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=folder
            )
            for page in pages:
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if keys:
                    response = self.client.delete_objects(
                        Bucket=self.bucket, Delete={"Objects": keys}
                    )
                    if response.get("Errors"):  # per-object failures come back, not raised
                        first = response["Errors"][0]
                        raise StorageError(
                            f"could not delete {first.get('Key')}: {first.get('Message')}"
                        )
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"could not delete {prefix}/: {exc}") from exc

    def url(self, key: str, base_url: str, ttl_seconds: int) -> str:
        """A presigned GET URL of the object store, valid for ``ttl_seconds``."""
        return self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._key(key)},
            ExpiresIn=ttl_seconds,
        )
