"""A local stand-in for Azure's managed identity, so that the broker's identity-based storage
connection runs for real against Azurite (which accepts bearer tokens with `--oauth basic`, over
HTTPS only):

- `self_signed(directory)`: a certificate and key for 127.0.0.1, for Azurite's HTTPS; clients
  trust it through SSL_CERT_FILE (the broker's aiohttp) and REQUESTS_CA_BUNDLE (requests).
- `TokenEndpoint`: the App Service / Functions managed identity protocol (what azure-identity's
  ManagedIdentityCredential speaks when IDENTITY_ENDPOINT and IDENTITY_HEADER are set): it answers
  a token for the asked resource. Azurite checks a token's issuer, audience and lifetime, not its
  signature, so the token is an unsigned JWT with those claims.

Development and test tooling only; nothing here is deployed.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import secrets
import time
import uuid
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from .localserver import HTTPServer

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"


def self_signed(directory: Path) -> tuple[Path, Path]:
    """(certificate, key) files for 127.0.0.1 and localhost, valid a day."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                               x509.DNSName("localhost")]), critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "azurite.crt", directory / "azurite.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def token_for(resource: str, lifetime: int = 3600, object_id: str | None = None) -> tuple[str, int]:
    """An unsigned JWT for `resource` (the audience), as Azure AD would issue it; and when it expires."""
    now = int(time.time())
    claims = {"aud": resource.rstrip("/"), "iss": f"https://sts.windows.net/{TENANT}/", "iat": now, "nbf": now - 60,
              "exp": now + lifetime, "oid": object_id or str(uuid.uuid4()), "tid": TENANT, "sub": "broker-identity"}
    header = {"alg": "none", "typ": "JWT"}
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}.", now + lifetime


class TokenEndpoint:
    """An HTTP server on 127.0.0.1 speaking the App Service managed identity protocol. `environment()`
    is what to set for a process to use it; `requests` counts the tokens asked for."""

    def __init__(self) -> None:
        self.secret = secrets.token_urlsafe(16)
        self.object_id = str(uuid.uuid4())
        self.requests: list[dict] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
                endpoint.requests.append(query)
                if self.headers.get("X-IDENTITY-HEADER") != endpoint.secret or "resource" not in query:
                    self._answer(400, {"error": "invalid_request"})
                    return
                token, expires = token_for(query["resource"], object_id=endpoint.object_id)
                self._answer(200, {"access_token": token, "expires_on": str(expires), "resource": query["resource"],
                                   "token_type": "Bearer", "client_id": query.get("client_id", "")})

            def _answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = HTTPServer(Handler)
        self.url = f"http://127.0.0.1:{self.server.port}/msi/token"

    def environment(self) -> dict:
        return {"IDENTITY_ENDPOINT": self.url, "IDENTITY_HEADER": self.secret}

    def close(self) -> None:
        self.server.close()
