"""BROKER_LEASE_SECRET signs lease tokens (several values for rotation) and keys idempotent task ids."""

import base64
import hashlib
import hmac
import uuid


def test_a_token_signed_with_the_storage_key_is_refused(broker, model):
    """The old scheme derived the signing secret from the storage connection string, public for Azurite."""
    task_id = broker.submit(model)
    [task] = broker.claim(model)
    body = task["lease"].split(".")[0]
    connection = broker.host.connection_string
    old_secret = hashlib.sha256(b"broker lease token\0" + connection.encode()).digest()
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    forged = body + "." + base64.urlsafe_b64encode(hmac.new(old_secret, raw, hashlib.sha256).digest()[:16]).decode().rstrip("=")
    response = broker.post(f"/puttaskresult?task_id={task_id}&lease={forged}", data=b"forged", headers=broker.worker)
    assert response.status_code == 400
    assert broker.status(task_id)["status"] == "running"


def test_rotation_accepts_every_listed_secret_and_signs_with_the_first(start_broker, lease_secret, model):
    old = start_broker({"BROKER_LEASE_SECRET": lease_secret})
    rotated = start_broker({"BROKER_LEASE_SECRET": "a-new-secret-of-at-least-32-characters," + lease_secret})
    retired = start_broker({"BROKER_LEASE_SECRET": "a-new-secret-of-at-least-32-characters"})
    old.submit(model)
    old.submit(model)
    [one, two] = old.claim(model, max_tasks=2)
    renewed = rotated.post(f"/extendlease?task_id={one['task_id']}&lease={one['lease']}&seconds=30",
                           headers=rotated.worker)
    assert renewed.status_code == 200  # an old token still holds during the rotation
    assert old.post(f"/extendlease?task_id={one['task_id']}&lease={renewed.json()['lease']}&seconds=30",
                    headers=old.worker).status_code == 400  # the new token is signed with the new secret
    assert retired.put({**one, "lease": renewed.json()["lease"]}).status_code == 200
    assert retired.put(two).status_code == 400  # once the old secret is gone, so are its tokens


def test_without_a_lease_secret_worker_routes_are_503(start_broker, model):
    unset = start_broker({"BROKER_LEASE_SECRET": ""})
    response = unset.get(f"/getnexttask?model={model}&wait=0", headers=unset.worker)
    assert response.status_code == 503 and "BROKER_LEASE_SECRET" in response.json()["error"]
    weak = start_broker({"BROKER_LEASE_SECRET": "short"})
    response = weak.get(f"/getnexttask?model={model}&wait=0", headers=weak.worker)
    assert response.status_code == 503 and "at least 32 characters" in response.json()["error"]
    assert unset.post(f"/predict?model={model}", data=b"x").status_code == 202  # a plain submit needs none


def test_an_idempotent_task_id_cannot_be_computed_from_the_key(start_broker, lease_secret, model):
    one = start_broker({"BROKER_LEASE_SECRET": lease_secret})
    other = start_broker({"BROKER_LEASE_SECRET": "another-secret-of-at-least-32-characters"})
    key = f"order-{model}"
    first = one.post(f"/predict?model={model}", data=b"x", headers={"Idempotency-Key": key}).json()["task_id"]
    second = other.post(f"/predict?model={model}", data=b"x", headers={"Idempotency-Key": key}).json()["task_id"]
    assert first != second  # the id depends on the broker's secret, not on the key alone
    digest = hashlib.sha256(f"\n{key}".encode()).digest()
    assert first != uuid.UUID(bytes=digest[:16], version=4).hex  # the old, computable scheme
    again = one.post(f"/predict?model={model}", data=b"x", headers={"Idempotency-Key": key})
    assert again.json()["task_id"] == first


def test_the_dev_tooling_generates_a_secret_per_run(azurite, tmp_path):
    from devstack.services import DevHost

    hosts = [DevHost(azurite.connection_string, {"BROKER_WORKER_KEYS": "k"}, log_dir=tmp_path / str(i)) for i in range(2)]
    secrets = [host.environment()["BROKER_LEASE_SECRET"] for host in hosts]
    assert len(set(secrets)) == 2 and all(len(s) >= 32 for s in secrets)
    given = DevHost(azurite.connection_string, {"BROKER_LEASE_SECRET": "x" * 40}, log_dir=tmp_path / "g")
    assert given.environment()["BROKER_LEASE_SECRET"] == "x" * 40
