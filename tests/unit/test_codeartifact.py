"""Issue 3 (a private index), without one: which index a build uses, and CodeArtifact's token
and endpoint as the runtime forms them (botocore's Stubber answers, offline).

The builds that prove a token never reaches the image are in tests/integration/test_credentials.py.
"""

from __future__ import annotations

import boto3
import pytest
from botocore.stub import Stubber

from builder.build.proxy.index import resolve_index
from builder.core.errors import CodeArtifactError
from builder.core.redact import redact, redaction_scope

CA_ENV = {"ENABLE_CODEARTIFACT": "true", "AWS_REGION": "us-east-1", "CODEARTIFACT_DOMAIN": "pixell",
          "CODEARTIFACT_REPOSITORY": "agents", "AWS_ACCOUNT_ID": "123456789012"}


def ca_client():
    return boto3.client("codeartifact", region_name="us-east-1", aws_access_key_id="AKIATEST",
                        aws_secret_access_key="test-secret")


def test_codeartifact_url_is_formed_as_the_runtime_forms_it():
    client = ca_client()
    with redaction_scope(), Stubber(client) as stub:  # a build's scope, as build_image opens one
        stub.add_response("get_authorization_token", {"authorizationToken": "tok/en+with=chars-123456"},
                          {"domain": "pixell", "domainOwner": "123456789012", "durationSeconds": 43200})
        stub.add_response("get_repository_endpoint",
                          {"repositoryEndpoint": "https://pixell-123456789012.d.codeartifact.us-east-1.amazonaws.com/pypi/agents/"},
                          {"domain": "pixell", "domainOwner": "123456789012", "repository": "agents", "format": "pypi"})
        upstream = resolve_index(None, CA_ENV, client=client)
        stub.assert_no_pending_responses()
        assert "tok/en+with=chars-123456" not in redact("token is tok/en+with=chars-123456 here")
        assert "tok%2Fen%2Bwith%3Dchars-123456" not in redact("quoted: tok%2Fen%2Bwith%3Dchars-123456")
    assert upstream.url == "https://pixell-123456789012.d.codeartifact.us-east-1.amazonaws.com/pypi/agents/simple/"
    assert upstream.auth_header and upstream.auth_header.startswith("Basic ")


def test_codeartifact_access_denied_is_a_clear_error_not_a_fallback():
    client = ca_client()
    with Stubber(client) as stub:
        stub.add_client_error("get_authorization_token", service_error_code="AccessDeniedException",
                              service_message="not allowed", http_status_code=403)
        with pytest.raises(CodeArtifactError) as info:
            resolve_index(None, CA_ENV, client=client)
    assert "AccessDeniedException" in str(info.value) and "pixell" in str(info.value)
    assert info.value.exit_code == 32


def test_codeartifact_missing_settings():
    with pytest.raises(CodeArtifactError) as info:
        resolve_index(None, {"ENABLE_CODEARTIFACT": "true", "AWS_REGION": "us-east-1"})
    assert "CODEARTIFACT_DOMAIN" in str(info.value)


def test_explicit_index_wins_and_public_is_the_default():
    assert resolve_index("https://u:p4ssw0rd@example.test/simple", {}).url == "https://example.test/simple/"
    assert resolve_index(None, {}).url == "https://pypi.org/simple/"
    assert resolve_index(None, {"PIP_INDEX_URL": "http://127.0.0.1:1/simple/"}).url == "http://127.0.0.1:1/simple/"
