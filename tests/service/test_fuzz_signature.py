"""Property-based tests over webhook signature headers and trigger bodies (issue 16: "fuzz tests that keep
it fixed"). The property: a header or body a stranger sends gives a :class:`SignatureError` / a 4xx,
never another exception, never a 500. Seeded (``derandomize``) with a fixed number of examples."""

from __future__ import annotations

import json
import time

import h11
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kern_finetune.service import SIGNATURE_HEADER, SignatureError, serve_in_thread, sign, verify_signature

SECRET = "fuzz-secret-0123456789abcdef"
BODY = b'{"project_id": "p1"}'
NOW = 1_700_000_000

FAST = settings(derandomize=True, max_examples=200, deadline=None)
HTTP = settings(derandomize=True, max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

_key = st.sampled_from(["t", "v1", "v0", "T", " t", "v1 ", ""]) | st.text(max_size=4)
_value = (
    st.integers(min_value=-10, max_value=10**14).map(str)
    | st.just(str(NOW))
    | st.text(alphabet="0123456789abcdef", min_size=0, max_size=70)
    | st.text(max_size=20)
    | st.text(alphabet="\u00b2\u0661\u00e9\uff10\u2070 \t=,", max_size=6)
)
_part = st.tuples(_key, st.sampled_from(["=", "", "=="]), _value).map("".join)
HEADERS = st.lists(_part, max_size=5).map(",".join) | st.text(max_size=80)


@FAST
@given(header=HEADERS)
def test_verify_signature_raises_only_signature_error(header: str) -> None:
    try:
        verify_signature(SECRET, BODY, header, now=NOW)
    except SignatureError:
        return
    # accepted: only possible for a header carrying the real digest
    assert sign(SECRET, BODY, NOW).split(",")[1] in header


@FAST
@given(t=st.integers(min_value=0, max_value=10**12 - 1), body=st.binary(max_size=200))
def test_a_signature_is_bound_to_its_timestamp(t: int, body: bytes) -> None:
    digest = sign(SECRET, body, t).split(",")[1]
    assert verify_signature(SECRET, body, f"t={t},{digest}", now=t) == t
    with pytest.raises(SignatureError):
        verify_signature(SECRET, body, f"t={t + 1},{digest}", now=t + 1)


@pytest.fixture(scope="module")
def service_url(tmp_path_factory: pytest.TempPathFactory):
    with serve_in_thread(tmp_path_factory.mktemp("fuzz-service"), SECRET, lambda ctx: {}) as svc:
        yield svc.url


# header bytes that HTTP/1.1 can carry in a field value (no CR, LF, NUL): latin-1 and UTF-8 alike
_header_bytes = st.binary(max_size=60).filter(lambda b: not set(b) & {0, 10, 13}) | HEADERS.map(
    lambda h: h.encode("utf-8")).filter(lambda b: not set(b) & {0, 10, 13})


def _parser_refuses(value: bytes) -> bool:
    """True when h11, uvicorn's HTTP parser here, refuses a request with this signature header value (a
    vertical tab or form feed in it, say). uvicorn then answers 400 and closes the connection at once, with
    the request body still unread; the kernel turns that close into a reset, which can reach the client
    before it has read the 400 (seen once in CI on a loaded machine: ``ConnectionResetError`` while reading)."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\n" + SIGNATURE_HEADER.encode() + b": " + value
                      + b"\r\nContent-Length: 0\r\n\r\n")
    try:
        conn.next_event()
    except h11.RemoteProtocolError:
        return True
    return False


def test_parser_refusal_is_told_apart() -> None:
    assert _parser_refuses(b"t=1,\x0bv1=ab") and not _parser_refuses(b"t=1,v1=ab") and not _parser_refuses(b"\xff\x01")


@HTTP
@given(value=_header_bytes)
def test_service_answers_any_signature_header_with_401(service_url: str, value: bytes) -> None:
    try:
        r = requests.post(f"{service_url}/v1/jobs", data=BODY, headers={SIGNATURE_HEADER: value}, timeout=30)
    except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError):
        # only a request the HTTP parser refused may lose its 400 to a reset; the app itself always answers
        assert _parser_refuses(value), value
        return
    assert r.status_code in (400, 401), (value, r.status_code, r.text)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_trigger = st.fixed_dictionaries(
    {"project_id": st.sampled_from(["p1", "", "../x", "p" * 200]) | st.text(max_size=10)},
    optional={"options": _json | st.dictionaries(st.sampled_from(["task", "epochs", "threshold", "loss", "seed",
                                                                  "text_attributes", "cache_dir"]), _json),
              "force": _json, "min_new_labels": _json, "extra": _json},
)
BODIES = _trigger.map(lambda d: json.dumps(d).encode()) | _json.map(lambda d: json.dumps(d).encode()) | st.binary(
    max_size=300) | st.sampled_from([b"[" * 30_000, b'{"a":' * 5000, b"\xff\xfe", b'"\\ud800"'])


@HTTP
@given(body=BODIES)
def test_service_answers_any_signed_body_with_a_4xx_or_a_job(service_url: str, body: bytes) -> None:
    r = requests.post(f"{service_url}/v1/jobs", data=body,
                      headers={SIGNATURE_HEADER: sign(SECRET, body, int(time.time()))}, timeout=30)
    assert r.status_code in (200, 202, 400, 413, 422), (body[:200], r.status_code, r.text)
