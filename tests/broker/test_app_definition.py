"""Pins what Azure would index: the exact functions, their triggers, routes, methods and auth."""

import importlib

import azure.functions as func

EVERY_METHOD = {"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"}
HTTP_ROUTES = {"predict", "getresult", "status", "cancel", "getnexttask", "extendlease", "puttaskresult",
               "health", "stats", "demo", "upload", "commit", "watch", "token", "revoke", "progress"}


def test_function_app_defines_exactly_the_broker_functions():
    app = importlib.reload(importlib.import_module("function_app")).app  # fresh app: get_functions runs once per app
    functions = {f.get_function_name(): f for f in app.get_functions()}
    assert set(functions) == HTTP_ROUTES | {"cleanup", "webhooks"}
    for name in HTTP_ROUTES:
        trigger = functions[name].get_trigger()
        assert trigger.get_binding_name() == "httpTrigger"
        assert trigger.route == name
        # Every method reaches the function, which answers 405 itself for the ones it does not take.
        assert {str(getattr(m, "value", m)) for m in trigger.methods} == EVERY_METHOD
        assert trigger.auth_level == func.AuthLevel.ANONYMOUS
        user_function = functions[name].get_user_function()
        assert list(user_function.__code__.co_varnames[:user_function.__code__.co_argcount]) == ["req"]
    timer = functions["cleanup"].get_trigger()
    assert timer.get_binding_name() == "timerTrigger"
    assert timer.schedule == "0 */5 * * * *"
    deliveries = functions["webhooks"].get_trigger()  # the Functions host and the dev host run it alike
    assert deliveries.get_binding_name() == "queueTrigger"
    assert (deliveries.queue_name, deliveries.connection) == ("webhooks", "AzureWebJobsStorage")


def test_host_json_loads_the_extensions_the_queue_trigger_needs():
    """Azure loads no trigger but HTTP and timers without the extension bundle: the webhooks queue
    trigger (and host.json's messageEncoding, identity-based connections) need Storage extension 5.x,
    which bundle 4 carries."""
    import json
    from pathlib import Path

    host = json.loads((Path(__file__).resolve().parents[2] / "host.json").read_text())
    assert host["extensionBundle"] == {"id": "Microsoft.Azure.Functions.ExtensionBundle", "version": "[4.*, 5.0.0)"}
    assert host["extensions"]["queues"]["messageEncoding"] == "none"


def test_http_functions_are_coroutines():
    import inspect

    app = importlib.reload(importlib.import_module("function_app")).app
    for function in app.get_functions():
        assert inspect.iscoroutinefunction(function.get_user_function()), function.get_function_name()


def test_worker_and_operations_routes_can_sit_behind_the_platforms_function_keys(monkeypatch):
    """BROKER_WORKER_AUTH_LEVEL=function: Azure checks x-functions-key on those routes before the app runs
    (unpaid traffic refused unbilled); client routes, /health and /demo stay anonymous."""
    monkeypatch.setenv("BROKER_WORKER_AUTH_LEVEL", "function")
    import broker.http

    importlib.reload(broker.http)
    try:
        app = importlib.reload(importlib.import_module("function_app")).app
        levels = {f.get_function_name(): f.get_trigger().auth_level for f in app.get_functions()
                  if f.get_trigger().get_binding_name() == "httpTrigger"}
        gated = {"getnexttask", "extendlease", "puttaskresult", "watch", "stats", "progress"}
        assert {name for name, level in levels.items() if level == func.AuthLevel.FUNCTION} == gated
    finally:
        monkeypatch.delenv("BROKER_WORKER_AUTH_LEVEL")
        importlib.reload(broker.http)
        importlib.reload(importlib.import_module("function_app"))


def test_the_dev_host_says_it_does_not_enforce_function_keys(start_broker, model):
    """As `func start`: the front end's check is Azure's; locally the routes answer without the key."""
    gated = start_broker({"BROKER_WORKER_AUTH_LEVEL": "function"})
    assert "function keys are not enforced locally (as with func start)" in gated.host.log_text()
    assert gated.get(f"/getnexttask?model={model}&wait=0", headers=gated.worker).status_code == 204


def test_the_worker_sends_the_function_key_when_given_one():
    from mlserver.broker_api import BrokerClient

    client = BrokerClient("http://127.0.0.1:9/api", "worker-key", function_key="function-key")
    assert client.session.headers["x-functions-key"] == "function-key"
    assert "x-functions-key" not in BrokerClient("http://127.0.0.1:9/api", "worker-key").session.headers
