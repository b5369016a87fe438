"""The deployment definitions, checked offline: infra/main.bicep parses, passes a static policy scan
(checkov) with every failed check explained, and sets exactly the app settings the broker reads; the
Kubernetes/KEDA example and the worker's Dockerfiles hold what the README says they do."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BICEP = ROOT / "infra" / "main.bicep"
CHECKOV = ROOT / ".venv-tools" / "bin" / "checkov"  # scripts/setup installs it apart (its pins would fight ours)

# Checks checkov fails on purpose, each with the reason (anything else failing fails this test).
EXPLAINED = {
    "CKV_AZURE_35": "storage network default-deny: workers and clients anywhere (a PC behind NAT, Colab) reach "
                    "Blob storage with SAS URLs; access is identity-only (shared keys off) and every URL is scoped "
                    "to one blob and short-lived",
    "CKV_AZURE_59": "storage public network access: as CKV_AZURE_35",
    "CKV_AZURE_206": "storage replication: LRS for a broker whose tasks live a day; choose ZRS/GRS in the sku",
    "CKV_AZURE_43": "storage naming rules: the name is computed (toLower, 'st' + 22 characters at most); checkov "
                    "cannot evaluate the expression",
    "CKV_AZURE_225": "zone-redundant plan: a choice per region (Flex Consumption offers it in some); it costs "
                     "always-ready instances",
    "CKV_AZURE_222": "function app public network access: clients, workers and the demo page call it from anywhere",
    "CKV_AZURE_17": "client certificates: callers present keys (Authorization: Bearer), which the broker checks itself",
    "CKV_AZURE_212": "minimum instances for failover: always-ready instances are billed while idle, the opposite of "
                     "this broker's design; a Flex app scales from zero on demand",
    "CKV_AZURE_213": "health check path: App Service's health check probes instances of a dedicated plan; a Flex "
                     "Consumption app has no fixed instances to evict, and GET /api/health is there for monitors",
}


# ---- the Bicep template ------------------------------------------------------------------------

def bicep_app_settings() -> set[str]:
    text = BICEP.read_text()
    block = text[text.index("appSettings: ["):]
    block = block[:block.index("]\n")]
    return set(re.findall(r"\{name: '([^']+)'", block))


def broker_reads() -> set[str]:
    """Every setting name the broker's own code reads (settings.py's table, the identity prefix, the
    telemetry switch)."""
    names: set[str] = set()
    for path in (ROOT / "broker").glob("*.py"):
        source = path.read_text()
        names |= set(re.findall(r"\"(BROKER_[A-Z_]+|APPLICATIONINSIGHTS_CONNECTION_STRING|AzureWebJobsStorage)\"", source))
        names |= {f"AzureWebJobsStorage__{m}" for m in re.findall(r"IDENTITY \+ \"(\w+)\"", source)}
    return names


# Read by the broker, and not set by the template on purpose: the alternatives to the
# identity-based connection it uses.
ALTERNATIVES = {"BROKER_STORAGE_CONNECTION", "AzureWebJobsStorage", "AzureWebJobsStorage__blobServiceUri",
                "AzureWebJobsStorage__queueServiceUri"}


def test_the_template_sets_every_setting_the_broker_reads_and_nothing_it_does_not():
    read, set_ = broker_reads(), bicep_app_settings()
    assert "BROKER_WORKER_KEYS" in read and "AzureWebJobsStorage__credential" in read  # the scan finds them
    assert read - ALTERNATIVES - set_ == set(), "read by the broker, not set by infra/main.bicep"
    assert set_ - read == set(), "set by infra/main.bicep, read by nothing"


def test_keys_come_from_secure_parameters_never_literals():
    text = BICEP.read_text()
    for setting, parameter in (("BROKER_WORKER_KEYS", "workerKeys"), ("BROKER_CLIENT_KEYS", "clientKeys"),
                               ("BROKER_LEASE_SECRET", "leaseSecret")):
        assert f"{{name: '{setting}', value: {parameter}}}" in text
        assert re.search(rf"@secure\(\)\n(@description\([^\n]*\)\n)?param {parameter} string", text), parameter
    assert "AccountKey" not in text and "listKeys" not in text  # no storage key, anywhere


def checkov_findings() -> tuple[list[dict], list[dict], int]:
    """(failed checks, passed checks, parsing errors) of checkov on infra/main.bicep."""
    if not CHECKOV.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"checkov is not installed at {CHECKOV} (scripts/setup installs it)", pytrace=False)
        pytest.skip(f"checkov is not installed at {CHECKOV} (scripts/setup installs it)")
    done = subprocess.run([str(CHECKOV), "-f", str(BICEP), "--framework", "bicep", "-o", "json", "--compact",
                           "--skip-download"], capture_output=True, text=True, timeout=300)
    assert done.stdout.strip(), done.stderr
    report = json.loads(done.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [check for r in reports for check in r.get("results", {}).get("failed_checks", [])]
    passed = [check for r in reports for check in r.get("results", {}).get("passed_checks", [])]
    return failed, passed, sum(r.get("summary", {}).get("parsing_errors", 0) for r in reports)


def test_the_template_parses_and_the_policy_scan_leaves_no_failed_check_unexplained():
    """checkov parses the Bicep (pycep) and runs its Azure policies; a template it cannot parse yields
    a parsing error, not a pass."""
    failed, passed, errors = checkov_findings()
    assert errors == 0 and len(passed) >= 20  # it parsed every resource and checked them
    unexplained = {check["check_id"]: check["check_name"] for check in failed if check["check_id"] not in EXPLAINED}
    assert unexplained == {}, "failed checkov checks with no reason in EXPLAINED"


# ---- workers on Kubernetes, and their images ---------------------------------------------------

def kubernetes_documents() -> dict[str, dict]:
    path = ROOT / "deploy" / "kubernetes" / "worker.yaml"
    return {doc["kind"]: doc for doc in yaml.safe_load_all(path.read_text()) if doc}


def test_the_keda_example_scales_the_worker_on_its_queue_waiting_tasks_only():
    docs = kubernetes_documents()
    scaled, deployment, auth = docs["ScaledObject"], docs["Deployment"], docs["TriggerAuthentication"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1" and auth["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "azure-queue"
    metadata = trigger["metadata"]
    assert all(isinstance(v, str) for v in metadata.values())  # the CRD takes a map of strings
    # The azure-queue scaler's metadata (KEDA's pkg/scalers/azure_queue_scaler.go): nothing it would not read.
    assert set(metadata) <= {"queueName", "queueLength", "activationQueueLength", "accountName", "connection",
                             "endpointSuffix", "queueLengthStrategy", "cloud"}
    assert metadata["queueLengthStrategy"] == "visibleonly"  # leased tasks are not waiting ones
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    model = container["args"][container["args"].index("--model") + 1]
    assert metadata["queueName"] == f"tasks-{model}"  # the broker's queue for that model (docs/API.md)
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    assert auth["spec"]["podIdentity"]["provider"] == "azure-workload"  # workload identity, no key
    env = {e["name"]: e for e in container["env"]}
    assert "secretKeyRef" in env["BROKER_WORKER_KEY"]["valueFrom"]  # the key from a secret, never inline
    assert scaled["spec"]["minReplicaCount"] == 0


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_the_worker_images_install_the_package_and_run_it_unprivileged(name):
    text = (ROOT / "mlserver" / name).read_text()
    assert re.search(r"^FROM python:3\.11", text, re.M)
    assert 'pip install' in text and '/tmp/mlserver[metrics]' in text
    assert re.search(r"^USER worker$", text, re.M)
    assert re.search(r'^ENTRYPOINT \["mlbroker-worker"\]$', text, re.M)
    assert re.search(r"^STOPSIGNAL SIGTERM$", text, re.M)
    if name.endswith(".cuda"):
        assert "tensorflow[and-cuda]" in text
