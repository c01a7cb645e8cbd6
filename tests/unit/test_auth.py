"""Bearer tokens in a header or (for Reflow, which cannot set headers) the query string."""

from __future__ import annotations

import pytest

from reflow_microsandbox.transports.auth import TokenAuth, bearer_token, query_param


def test_no_tokens_configured_lets_everyone_in() -> None:
    auth = TokenAuth([])
    assert not auth.enabled
    assert auth.allows(None)
    assert auth.allows_request({}, "/")


@pytest.mark.parametrize("presented", ["alpha", "beta"])
def test_any_configured_token_is_accepted(presented: str) -> None:
    assert TokenAuth(["alpha", "beta"]).allows(presented)


@pytest.mark.parametrize("presented", [None, "", "alph", "alphaa", "ALPHA", "beta "])
def test_missing_or_wrong_tokens_are_refused(presented: str | None) -> None:
    assert not TokenAuth(["alpha", "beta"]).allows(presented)


def test_header_token_is_read_from_bearer_authorization() -> None:
    auth = TokenAuth(["s3cret"])
    assert auth.allows_request({"Authorization": "Bearer s3cret"})
    assert auth.allows_request({"Authorization": "bearer s3cret"})
    assert not auth.allows_request({"Authorization": "Basic s3cret"})
    assert not auth.allows_request({"Authorization": "Bearer wrong"})
    assert not auth.allows_request({})


def test_query_string_token_counts_only_where_a_path_is_given() -> None:
    auth = TokenAuth(["s3cret"])
    assert auth.allows_request({}, "/?token=s3cret")
    assert auth.allows_request({}, "/ws?compression=zstd&token=s3cret")
    assert not auth.allows_request({}, "/?token=nope")
    assert not auth.allows_request({}, "/?tok=s3cret")
    # HTTP passes no path: a token in the URL is not accepted there.
    assert not auth.allows_request({})


def test_token_with_url_escapes_is_decoded() -> None:
    assert TokenAuth(["a+b/c="]).allows_request({}, "/?token=a%2Bb%2Fc%3D")


def test_helpers_parse_headers_and_queries() -> None:
    assert bearer_token("Bearer  abc ") == "abc"
    assert bearer_token("Bearer") is None
    assert bearer_token(None) is None
    assert query_param("/x?a=1&a=2&b=", "a") == "1"
    assert query_param("/x?b=", "b") == ""
    assert query_param("/x", "a") is None
