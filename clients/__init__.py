"""Python client for the broker: `BrokerClient(url, key).predict("cat.jpg", "resnet50").json()`.

Talks to the broker over HTTP only (see docs/API.md); the one dependency is `requests`.
"""

from .client import DEFAULT_URL, BrokerClient
from .errors import BrokerError, BrokerHTTPError, BrokerUnavailable, TaskCancelled, TaskExpired, TaskFailed, TaskTimeout
from .result import Result

__all__ = ["BrokerClient", "Result", "BrokerError", "BrokerHTTPError", "BrokerUnavailable", "TaskFailed",
           "TaskCancelled", "TaskExpired", "TaskTimeout", "DEFAULT_URL"]
