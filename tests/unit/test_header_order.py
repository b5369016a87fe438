"""broker/header_order.py: the service's order of x-ms-* headers in a Shared Key signature, which is
not plain string order, checked against the SDK's own implementation while the SDK still has it."""

from __future__ import annotations

import random

import pytest

from broker.header_order import storage_header_order


def names(pairs):
    return [name for name, _ in pairs]


def test_underscores_and_hyphens_sort_as_the_service_collates_them_not_as_strings():
    headers = [("x-ms-meta-0a", "1"), ("x-ms-meta-_", "2"), ("x-ms-meta-0a_-", "3")]
    assert names(storage_header_order(headers)) == ["x-ms-meta-_", "x-ms-meta-0a", "x-ms-meta-0a_-"]
    assert names(sorted(headers)) != names(storage_header_order(headers))  # why it is not `sorted`
    assert storage_header_order(headers)[0] == ("x-ms-meta-_", "2")  # values travel with their names


def test_the_order_is_the_sdks_for_any_header_names():
    authentication = pytest.importorskip("azure.storage.blob._shared.authentication")
    sdk = getattr(authentication, "_storage_header_sort", None)
    if sdk is None:
        pytest.skip("this azure-storage-blob no longer has _storage_header_sort")
    rng = random.Random(5)
    alphabet = "abz09-_'"
    differs = 0
    for _ in range(3000):
        headers = list({"x-ms-" + "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))): str(n)
                        for n in range(rng.randint(2, 6))}.items())
        assert storage_header_order(headers) == sdk(headers), headers
        differs += names(sorted(headers)) != names(sdk(headers))
    assert differs > 100  # the sample holds plenty of names that plain order gets wrong


def test_a_name_outside_ascii_is_refused():
    with pytest.raises(ValueError):
        storage_header_order([("x-ms-meta-é", "1"), ("x-ms-meta-a", "2")])
