"""The OpenAPI description matches the app: the same routes, the same methods, every answer documented."""

import importlib
from pathlib import Path

import yaml

from tests.support.routes import METHODS as ROUTES

SPEC = yaml.safe_load((Path(__file__).resolve().parents[2] / "openapi.yaml").read_text())


def test_spec_lists_exactly_the_app_routes_and_methods():
    app = importlib.reload(importlib.import_module("function_app")).app
    http_routes = {f.get_trigger().route for f in app.get_functions() if f.get_trigger().get_binding_name() == "httpTrigger"}
    assert {p.lstrip("/") for p in SPEC["paths"]} == http_routes
    for path, methods in ROUTES.items():
        assert {m.upper() for m in SPEC["paths"][path]} == methods, path


def test_every_operation_documents_405_and_its_errors():
    for path, operations in SPEC["paths"].items():
        for method, operation in operations.items():
            codes = set(operation["responses"])
            assert "405" in codes, (path, method)
            if path != "/demo":
                assert "503" in codes, (path, method)
            if operation.get("parameters"):
                assert "400" in codes or path == "/demo", (path, method)
