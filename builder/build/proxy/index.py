"""Which package index a build installs from, and its credentials.

Order: an explicit ``--index-url``, then ``PIP_INDEX_URL``, then CodeArtifact
when ``ENABLE_CODEARTIFACT=true`` (formed exactly as the runtime forms it),
then the public index. Asking for CodeArtifact and failing to get a token is
an error, never a silent fallback to the public index.
"""

from __future__ import annotations

import os
from typing import Mapping
from urllib.parse import quote, urlsplit

from builder.build.proxy.upstream import PUBLIC_INDEX, Upstream
from builder.core.errors import CodeArtifactError, PackageValidationError
from builder.core.redact import register_secret

TOKEN_SECONDS = 12 * 3600


def codeartifact_url(env: Mapping[str, str], client=None) -> str:
    """The runtime's CodeArtifact index URL: https://aws:TOKEN@HOST/pypi/REPO/simple/."""
    missing = [k for k in ("AWS_REGION", "CODEARTIFACT_DOMAIN", "CODEARTIFACT_REPOSITORY", "AWS_ACCOUNT_ID")
               if not env.get(k)]
    if missing:
        raise CodeArtifactError(f"ENABLE_CODEARTIFACT=true but {', '.join(missing)} is not set",
                                hint="Set the missing variables or unset ENABLE_CODEARTIFACT.")
    domain, repo = env["CODEARTIFACT_DOMAIN"], env["CODEARTIFACT_REPOSITORY"]
    if client is None:
        try:
            import boto3
        except ImportError:
            raise CodeArtifactError("ENABLE_CODEARTIFACT=true needs boto3",
                                    hint="pip install 'agent-image[codeartifact]'.") from None
        client = boto3.client("codeartifact", region_name=env["AWS_REGION"])
    try:
        token = client.get_authorization_token(domain=domain, domainOwner=env["AWS_ACCOUNT_ID"],
                                               durationSeconds=TOKEN_SECONDS)["authorizationToken"]
        register_secret(token)
        register_secret(quote(token, safe=""))
        endpoint = client.get_repository_endpoint(domain=domain, domainOwner=env["AWS_ACCOUNT_ID"],
                                                  repository=repo, format="pypi")["repositoryEndpoint"]
    except Exception as exc:  # botocore ClientError, NoCredentialsError, EndpointConnectionError...
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
        raise CodeArtifactError(
            f"could not get a CodeArtifact token for domain {domain!r} (owner {env['AWS_ACCOUNT_ID']}): {code}",
            hint="Check the AWS credentials and that they allow codeartifact:GetAuthorizationToken "
                 "and sts:GetServiceBearerToken.") from None
    host = urlsplit(endpoint).hostname
    return f"https://aws:{quote(token, safe='')}@{host}/pypi/{repo}/simple/"


def resolve_index(index_url: str | None = None, env: Mapping[str, str] | None = None, client=None) -> Upstream:
    env = os.environ if env is None else env
    raw = index_url or env.get("PIP_INDEX_URL")
    if not raw and str(env.get("ENABLE_CODEARTIFACT", "")).lower() in ("1", "true", "yes"):
        raw = codeartifact_url(env, client)
    raw = raw or PUBLIC_INDEX
    register_secret(urlsplit(raw).password)
    try:
        return Upstream.parse(raw)
    except ValueError as exc:
        raise PackageValidationError(str(exc), field="--index-url",
                                     hint="Pass an http(s) URL such as https://pypi.org/simple/.") from None
