"""The broker's pure parts as plain unit tests: lease tokens, stored records, strict JSON, the key
comparison. No storage, no HTTP: these run in well under a second."""

from __future__ import annotations

import json
import secrets

import pytest

from broker import auth, strictjson
from broker.lease import BadToken, Lease, receipt_hash
from broker.records import MAX_ERROR_BYTES, LeaseState, Submission, clip_error, stored_size

SECRET = secrets.token_bytes(32)
OLD = secrets.token_bytes(32)
TASK = "a" * 32


def lease(**changes) -> Lease:
    fields = dict(task_id=TASK, model="m", msg="msg-1", receipt="r-1", claim=1, attempt=1, created=1.5e9,
                  started=1.5e9 + 1, digest=None)
    return Lease(**{**fields, **changes})


# ---- lease tokens ------------------------------------------------------------------------------

def test_a_token_round_trips_and_verifies_under_any_listed_secret():
    token = lease().encode((OLD,))
    assert Lease.decode(token, TASK, (SECRET, OLD)) == lease()  # rotation: the old secret still verifies
    with pytest.raises(BadToken):
        Lease.decode(token, TASK, (SECRET,))  # once the old secret is dropped, it does not


@pytest.mark.parametrize("mangle", [
    lambda t: t[:-2] + ("A" if t[-2] != "A" else "B") + t[-1],  # another MAC
    lambda t: "x" + t,  # another body
    lambda t: t.replace(".", ""),
    lambda t: "",
    lambda t: "é.é",
])
def test_a_tampered_token_is_malformed(mangle):
    with pytest.raises(BadToken, match="malformed"):
        Lease.decode(mangle(lease().encode((SECRET,))), TASK, (SECRET,))


def test_a_token_for_another_task_is_refused():
    with pytest.raises(BadToken, match="another task"):
        Lease.decode(lease().encode((SECRET,)), "b" * 32, (SECRET,))


def test_a_signed_token_with_wrong_field_types_is_malformed():
    for bad in (lease(claim=0), lease(attempt=True), lease(created=float("nan")), lease(msg=5)):
        with pytest.raises(BadToken):
            Lease.decode(bad.encode((SECRET,)), TASK, (SECRET,))


def test_commit_ids_tell_puts_of_other_content_or_claims_apart():
    one = lease().commit_id("succeeded", "text/plain", b"x")
    assert one == lease().commit_id("succeeded", "text/plain", b"x")  # the same put repeated
    others = {lease().commit_id("succeeded", "text/plain", b"y"), lease().commit_id("failed", "text/plain", b"x"),
              lease().commit_id("succeeded", "image/png", b"x"), lease(claim=2).commit_id("succeeded", "text/plain", b"x")}
    assert one not in others and len(others) == 4


def test_a_renewed_token_keeps_everything_but_the_receipt():
    renewed = lease().renewed("r-2")
    assert renewed.receipt == "r-2" and renewed.claim == 1 and receipt_hash("r-2") != receipt_hash("r-1")


# ---- stored records ----------------------------------------------------------------------------

@pytest.mark.parametrize("message", ["plain", "é" * 5000, "😀" * 700, "a" * 5000, "\n\t x \r\n y", "", "\ud800" * 50])
def test_errors_are_one_line_and_bounded_in_stored_bytes(message):
    clipped = clip_error(message)
    assert stored_size(clipped) <= MAX_ERROR_BYTES + 2  # the record's quotes
    assert "\n" not in clipped and clipped
    if stored_size(message) <= MAX_ERROR_BYTES and message.strip():
        assert clipped == " ".join(message.split())
    elif message.strip():
        assert clipped.endswith("…")


def test_attempts_only_go_up_and_a_give_back_keeps_the_number():
    state = LeaseState("m", None, 0.0, 3, givebacks=1, error="boom", claim=4, receipt="h", freed="back")
    assert state.next_attempt() == (3, 1, "boom")
    for freed in ("retry", None):  # a retryable failure, or a lease that ran out
        attempt, _, _ = LeaseState("m", None, 0.0, 3, claim=4, freed=freed).next_attempt()
        assert attempt == 4


def test_a_submission_round_trips_through_blob_metadata():
    sub = Submission(TASK, "m", "image/png", {"top_k": 3, "note": "ü"}, 1.5e9, "d" * 32, 10)
    again = Submission.from_metadata(TASK, sub.metadata())
    assert again == sub and again.expires(60) == 1.5e9 + 60
    assert all(value.isascii() for value in sub.metadata().values())  # metadata headers are ASCII


# ---- strict JSON -------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["NaN", "[Infinity]", '{"a": -Infinity}', "1e999", "[" * 100_000 + "]" * 100_000,
                                  "1" * 5000])
def test_strict_json_refuses_what_other_parsers_cannot_read(text):
    with pytest.raises(ValueError):
        strictjson.loads(text)


def test_strict_json_reads_ordinary_json_as_json_does():
    text = '{"a": [1, 2.5, -3e2, true, null, "\\u00e9"], "b": {"c": 12345678901234567890}}'
    assert strictjson.loads(text) == json.loads(text)


# ---- keys --------------------------------------------------------------------------------------

def test_a_key_is_compared_with_every_configured_key_in_constant_time(monkeypatch):
    """How the check is built is what the suite can hold it to; what it costs is bench.constant_time's."""
    compared = []
    real = auth.hmac.compare_digest

    def counting(a, b):
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    keys = ("first-key", "x" * 10_000, "third")
    assert auth.matches("first-key", keys)  # found first, and still compared with all
    assert compared == [(32, 32)] * 3  # fixed-length digests, whatever the keys' lengths
    compared.clear()
    assert not auth.matches("#irst-key", keys) and len(compared) == 3
    assert not auth.matches("", ("",))  # no key is never a key


def test_the_blob_transfer_module_is_the_same_in_both_distributions():
    """clients/blobs.py and mlserver/blobs.py ship byte for byte the same (each package installs alone)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    assert (root / "clients" / "blobs.py").read_bytes() == (root / "mlserver" / "blobs.py").read_bytes()
