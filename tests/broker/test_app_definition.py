"""Pins what Azure would index: the exact functions, their triggers, routes, methods and auth."""

import importlib

import azure.functions as func

EVERY_METHOD = {"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"}
HTTP_ROUTES = {"predict", "getresult", "status", "cancel", "getnexttask", "extendlease", "puttaskresult",
               "health", "stats", "demo", "upload", "commit", "watch"}


def test_function_app_defines_exactly_the_broker_functions():
    app = importlib.reload(importlib.import_module("function_app")).app  # fresh app: get_functions runs once per app
    functions = {f.get_function_name(): f for f in app.get_functions()}
    assert set(functions) == HTTP_ROUTES | {"cleanup"}
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


def test_http_functions_are_coroutines():
    import inspect

    app = importlib.reload(importlib.import_module("function_app")).app
    for function in app.get_functions():
        assert inspect.iscoroutinefunction(function.get_user_function()), function.get_function_name()
