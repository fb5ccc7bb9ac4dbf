"""A C2PA manifest on every output: signed "created by a trained algorithm" provenance.

Uses the c2pa-python library (``pip install 'fluxserve[c2pa]'``) with the operator's
certificate chain and private key (``--c2pa-cert``, ``--c2pa-key``). The manifest records
the action ``c2pa.created`` with IPTC's digital source type ``trainedAlgorithmicMedia``
and fluxserve (with the model) as the software agent. Readers that do not know the signing
certificate report it as untrusted, as with any self-managed certificate.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

from fluxserve import __version__
from fluxserve.domain import GenerationRequest, OutputFormat
from fluxserve.errors import ConfigurationError

TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
KEY_ALGORITHMS = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}

Sign = Callable[[bytes, GenerationRequest], bytes]


def _algorithm(key_pem: bytes) -> str:
    """The C2PA signing algorithm for a PEM private key (EC P-256/384/521, Ed25519, RSA)."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(key_pem, password=None)
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in KEY_ALGORITHMS:
        return KEY_ALGORITHMS[key.curve.name]
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    if isinstance(key, rsa.RSAPrivateKey):
        return "ps256"
    raise ValueError("the key is not EC P-256/384/521, Ed25519 or RSA")


def manifest(request: GenerationRequest) -> dict:
    agent = {"name": "fluxserve", "version": __version__, "model": request.model}
    return {
        "claim_generator_info": [{"name": "fluxserve", "version": __version__}],
        "title": f"{request.model} image",
        "assertions": [
            {
                "label": "c2pa.actions",
                "data": {
                    "actions": [
                        {
                            "action": "c2pa.created",
                            "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
                            "softwareAgent": agent,
                        }
                    ]
                },
            }
        ],
    }


def c2pa_signer(cert: Path, key: Path) -> Sign:
    """A function that returns an encoded image with a signed C2PA manifest embedded."""
    try:
        import c2pa
    except ImportError:
        raise ConfigurationError(
            "--c2pa-cert needs the c2pa-python package: pip install 'fluxserve[c2pa]'"
        ) from None
    try:
        key_pem, chain_pem = key.read_bytes(), cert.read_bytes()
        info = c2pa.C2paSignerInfo(
            alg=_algorithm(key_pem).encode(), sign_cert=chain_pem, private_key=key_pem,
            ta_url=None,
        )  # fmt: skip
        signer = c2pa.Signer.from_info(info)
    except (OSError, ValueError, c2pa.C2paError) as exc:
        raise ConfigurationError(
            f"--c2pa-cert {cert} and --c2pa-key {key} cannot sign C2PA manifests ({exc})"
        ) from None

    def sign(data: bytes, request: GenerationRequest) -> bytes:
        content_type = OutputFormat(request.output_format).content_type
        signed = io.BytesIO()
        with c2pa.Builder(json.dumps(manifest(request))) as builder:
            builder.sign(signer, content_type, io.BytesIO(data), signed)
        return signed.getvalue()

    return sign


def read_manifest(data: bytes, content_type: str) -> dict:
    """The active C2PA manifest of an image, with the reader's validation status."""
    import c2pa

    with c2pa.Reader(content_type, io.BytesIO(data)) as reader:
        store = json.loads(reader.json())
    active = store["manifests"][store["active_manifest"]]
    return {**active, "validation_status": store.get("validation_status", [])}
