"""No storage keys: the broker connected the identity-based way (AzureWebJobsStorage__blobServiceUri,
__queueServiceUri, __credential=managedidentity, __clientId), as the Functions host documents it.

Real parts: Azurite over HTTPS accepting bearer tokens (`--oauth basic`), and a managed identity
endpoint speaking the App Service protocol that azure-identity's ManagedIdentityCredential uses in
Azure (devstack/identity.py; Azurite checks a token's issuer, audience and lifetime, not its
signature). The broker has no account key at all: every URL it hands out is a user delegation SAS.
"""

from __future__ import annotations

import os

import pytest
import requests

from clients import blobs
from devstack.identity import TokenEndpoint
from devstack.services import Azurite, DevHost
from tests.conftest import WORKER_KEY, Broker

CLIENT_ID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


@pytest.fixture(scope="module")
def secure_azurite(tmp_path_factory):
    service = Azurite(log_dir=tmp_path_factory.mktemp("azurite-oauth"), oauth=True).start()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def identity():
    endpoint = TokenEndpoint()
    yield endpoint
    endpoint.close()


def identity_settings(azurite, endpoint, lease_secret) -> dict:
    return {"AzureWebJobsStorage__blobServiceUri": azurite.blob_url,
            "AzureWebJobsStorage__queueServiceUri": azurite.queue_url,
            "AzureWebJobsStorage__credential": "managedidentity", "AzureWebJobsStorage__clientId": CLIENT_ID,
            "BROKER_WORKER_KEYS": WORKER_KEY, "BROKER_LEASE_SECRET": lease_secret,
            "SSL_CERT_FILE": str(azurite.certificate), **endpoint.environment()}


@pytest.fixture(scope="module")
def start_broker_on_identity(secure_azurite, identity, lease_secret, tmp_path_factory):
    """start(settings) -> a dev host connected the identity-based way, with those BROKER_* settings too."""
    hosts = []

    def start(settings: dict | None = None) -> Broker:
        host = DevHost(None, {**identity_settings(secure_azurite, identity, lease_secret), **(settings or {})},
                       log_dir=tmp_path_factory.mktemp("devhost-identity"), extra_args=["--no-timers"]).start()
        hosts.append(host)
        return Broker(host.url, host)

    yield start
    for host in hosts:
        host.stop()


@pytest.fixture(scope="module")
def keyless(start_broker_on_identity):
    return start_broker_on_identity()


@pytest.fixture
def storage(secure_azurite):
    session = requests.Session()
    session.trust_env = False  # the machine's REQUESTS_CA_BUNDLE would win over the verify below
    session.verify = str(secure_azurite.certificate)
    yield session
    session.close()


def test_the_broker_runs_on_a_managed_identity_with_no_key(keyless, identity, storage, model):
    assert keyless.get("/health").status_code == 200
    task_id = keyless.submit(model, b"inline payload", "text/plain")
    [task] = keyless.claim(model)
    assert task["task_id"] == task_id and task["payload"] == "aW5saW5lIHBheWxvYWQ="
    assert keyless.put(task, b"inline result").status_code == 200
    assert keyless.get(f"/getresult?task_id={task_id}").content == b"inline result"
    asked = [r for r in identity.requests if r.get("resource") == "https://storage.azure.com"]
    assert asked and all(r.get("client_id") == CLIENT_ID for r in asked)  # the user-assigned identity named


def test_urls_are_user_delegation_sas_and_storage_honours_them(start_broker_on_identity, storage, model):
    """Uploads, large inline payloads and the watch signal through delegation SAS, end to end.

    What Azurite cannot check: a delegation SAS for a snapshot (`sr=bs`, the payload_url of an uploaded
    payload, the result_url of an uploaded result). Azurite 3.x leaves the snapshot time out of the
    string it signs for a delegation SAS (IBlobSASSignatureValues.js), so it refuses what Azure accepts;
    those URLs are checked here for what they are (delegation-signed, snapshot-scoped, read-only), and
    the same URLs signed with an account key are exercised end to end in test_uploads.py."""
    keyless = start_broker_on_identity({"BROKER_INLINE_BYTES": "65536"})
    payload = os.urandom(3 * 1024 * 1024)
    grant = keyless.post(f"/upload?model={model}", json={"size": len(payload), "content_type": "image/png"}).json()
    assert "skoid=" in grant["upload_url"] and "sig=" in grant["upload_url"]  # signed with a delegation key
    blobs.upload(grant["upload_url"], payload, "image/png", session=storage, block_bytes=1024 * 1024)
    assert storage.get(grant["upload_url"], timeout=30).status_code == 403  # write-only, delegation or not
    assert keyless.post(f"/commit?task_id={grant['task_id']}").status_code == 202
    large = os.urandom(200_000)
    inline_id = keyless.submit(model, large, "application/octet-stream")
    uploaded, inline = keyless.claim(model, max_tasks=2)
    query = dict(part.split("=", 1) for part in uploaded["payload_url"].split("?", 1)[1].split("&"))
    assert query["sr"] == "bs" and query["sp"] == "r" and "skoid" in query and "snapshot" in query
    assert inline["task_id"] == inline_id and "skoid=" in inline["payload_url"]
    assert blobs.download(inline["payload_url"], inline["size"], session=storage) == large  # storage honours it
    blobs.upload(inline["result_upload_url"], large[::-1], "image/png", session=storage)
    put = keyless.post(f"/puttaskresult?task_id={inline_id}&lease={inline['lease']}&uploaded=1",
                       headers={**keyless.worker, "Content-Type": "image/png"})
    assert put.status_code == 200, put.text
    link = keyless.get(f"/getresult?task_id={inline_id}&format=json").json()
    assert "skoid=" in link["result_url"] and "sr=bs" in link["result_url"]
    watch = keyless.get(f"/watch?model={model}", headers=keyless.worker).json()
    assert "skoid=" in watch["signal_url"] and blobs.etag(watch["signal_url"], storage) is not None


def test_an_identity_that_gets_no_token_is_a_misconfiguration_not_a_crash(secure_azurite, identity, lease_secret,
                                                                            tmp_path, model):
    """The identity endpoint refuses (in Azure: no such identity assigned to the app): 503 saying what
    to check, never a 500 and never a traceback."""
    settings = {**identity_settings(secure_azurite, identity, lease_secret), "IDENTITY_HEADER": "not-the-secret"}
    host = DevHost(None, settings, log_dir=tmp_path, extra_args=["--no-timers"]).start()
    try:
        broker = Broker(host.url, host)
        for answer in (broker.get("/health"), broker.post(f"/predict?model={model}", data=b"x"),
                       broker.get(f"/getnexttask?model={model}&wait=0", headers=broker.worker)):
            assert answer.status_code == 503, answer.text
            assert "misconfigured" in answer.json()["error"]
        assert "Traceback" not in host.log_text()
    finally:
        host.stop()
