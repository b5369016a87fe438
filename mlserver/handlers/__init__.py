"""Handlers: the built-in models by name, or a user's own class by `module:Class`."""

from __future__ import annotations

import importlib

from .base import Handler

BUILT_IN = {  # relative to this package: it imports as mlserver.handlers here, mlbroker_worker.handlers installed
    "echo": f"{__name__}.echo:Echo",
    "resnet50": f"{__name__}.resnet50:ResNet50",
    "deeplabv3plus": f"{__name__}.deeplabv3plus:DeepLabV3Plus",
    "saved": f"{__name__}.saved:SavedModel",
}


class HandlerNotFound(LookupError):
    pass


def handler_class(spec: str) -> type[Handler]:
    """The class named by a built-in name or `module:Class` (the module is imported, not run)."""
    path = BUILT_IN.get(spec, spec)
    module_name, _, class_name = path.partition(":")
    if not module_name or not class_name:
        raise HandlerNotFound(f"handler {spec!r} is neither a built-in ({', '.join(BUILT_IN)}) nor module:Class")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise HandlerNotFound(f"cannot import {module_name!r} for handler {spec!r} ({exc})") from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Handler)):
        raise HandlerNotFound(f"{module_name} has no Handler subclass named {class_name!r}")
    return cls
