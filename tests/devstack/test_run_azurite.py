"""`scripts/run`'s Azurite: on its usual ports, on free ones when those are taken, and a failure of
any other kind said as it is (it would only repeat on other ports)."""

from __future__ import annotations

import contextlib
import socket

import pytest

from devstack import __main__ as run
from devstack.services import ServiceError


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.setattr(run, "DATA", tmp_path)
    monkeypatch.setattr(run, "STATE", tmp_path / ".devstack")
    return tmp_path


def test_taken_ports_move_azurite_to_free_ones(data, capsys):
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past a closed one's TIME_WAIT (scripts/run's test)
        with contextlib.suppress(OSError):  # somebody listens there already: taken either way
            taken.bind(("127.0.0.1", 10000))
            taken.listen()
        azurite = run.start_azurite()
        try:
            assert azurite.alive() and ":10000/" not in azurite.connection_string
        finally:
            azurite.stop()
    assert "ports 10000/10001 are taken" in capsys.readouterr().out


def test_any_other_failure_is_said_as_it_is(data, capsys):
    (data / ".azurite").write_text("a file where Azurite wants its folder")
    with pytest.raises(ServiceError):
        run.start_azurite()
    assert "are taken" not in capsys.readouterr().out
