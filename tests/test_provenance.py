"""Signed C2PA manifests on outputs (--c2pa-cert / --c2pa-key), read back with c2pa-python."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from fastapi.testclient import TestClient
from pydantic import ValidationError

from fluxserve.api.app import create_app
from fluxserve.bootstrap import build_services
from fluxserve.config import Settings
from fluxserve.errors import ConfigurationError
from fluxserve.runtime.provenance import TRAINED_ALGORITHMIC_MEDIA, read_manifest
from tests.helpers import SMALL, poll_result, wait_ready


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fluxserve tests"),
        ]
    )


def _usage(signing: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=signing, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=not signing,
        crl_sign=not signing, encipher_only=False, decipher_only=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def credentials(tmp_path_factory):
    """A test CA and a signing certificate it issued (C2PA refuses self-signed signers)."""
    directory = tmp_path_factory.mktemp("c2pa")
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def certificate(subject, issuer, public_key, signing_key, signing: bool):
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=not signing, path_length=None), critical=True)
            .add_extension(_usage(signing), critical=True)
        )
        if signing:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False
            ).add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        return builder.sign(signing_key, hashes.SHA256())

    ca = certificate(_name("test CA"), _name("test CA"), ca_key.public_key(), ca_key, False)
    leaf = certificate(_name("fluxserve"), ca.subject, key.public_key(), ca_key, True)
    cert_path, key_path = directory / "chain.pem", directory / "key.pem"
    pem = serialization.Encoding.PEM
    cert_path.write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    key_path.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.mark.parametrize(
    ("output_format", "content_type"), [("png", "image/png"), ("jpeg", "image/jpeg")]
)
def test_outputs_carry_a_signed_c2pa_manifest(
    tmp_path, tiny_model_dir, credentials, output_format, content_type
):
    cert, key = credentials
    settings = Settings(
        model=[str(tiny_model_dir)], data_dir=tmp_path / "data", worker_mode="thread",
        c2pa_cert=cert, c2pa_key=key,
    )  # fmt: skip
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        body = {"prompt": "a lighthouse", **SMALL, "steps": 2, "output_format": output_format}
        task = client.post("/v1/flux-dev", json=body).json()
        result = poll_result(client, task["id"])
        assert result["status"] == "Ready", result
        data = client.get(result["result"]["sample"]).content
    manifest = read_manifest(data, content_type)
    assert manifest["claim_generator_info"][0]["name"] == "fluxserve"
    (actions,) = [a for a in manifest["assertions"] if a["label"].startswith("c2pa.actions")]
    (created,) = actions["data"]["actions"]
    assert created["action"] == "c2pa.created"
    assert created["digitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA
    assert created["softwareAgent"]["model"] == "tiny"
    # Only the trust question remains: the test CA is nobody's trust anchor. Any hash or
    # signature failure would add a validation code here.
    codes = {status["code"] for status in manifest["validation_status"]}
    assert codes <= {"signingCredential.untrusted"}, codes


def test_an_image_without_a_manifest_has_none(tmp_path, client):
    body = {"prompt": "plain", **SMALL, "steps": 2, "output_format": "png"}
    result = poll_result(client, client.post("/v1/flux-dev", json=body).json()["id"])
    data = client.get(result["result"]["sample"]).content
    with pytest.raises(Exception, match="(?i)manifest|jumbf|not found"):
        read_manifest(data, "image/png")


def test_c2pa_flags_go_together_and_must_exist(tmp_path, credentials):
    cert, key = credentials
    with pytest.raises(ValidationError, match="go together"):
        Settings(c2pa_cert=cert)
    with pytest.raises(ValidationError, match="does not exist"):
        Settings(c2pa_cert=cert, c2pa_key=tmp_path / "missing.pem")


def test_a_key_that_cannot_sign_is_refused_at_start(tmp_path, tiny_model_dir, credentials):
    cert, _ = credentials
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    settings = Settings(
        model=[str(tiny_model_dir)], data_dir=tmp_path / "data", c2pa_cert=cert, c2pa_key=bogus
    )
    with pytest.raises(ConfigurationError, match="cannot sign C2PA manifests"):
        build_services(settings)
