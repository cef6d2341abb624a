"""The two shapes a chat request takes on the wire: OpenAI's and Azure OpenAI's.

Both send the same JSON body and get the same chat completion back (parsed once, in
`ultra.collect.client`); they differ in the URL, the auth header and whether the body names the
model (Azure's deployment in the URL names it).
"""

from __future__ import annotations

from urllib.parse import quote

from ultra.providers import Route


def auth_header(shape: str, secret: str) -> tuple[str, str]:
    return ("authorization", f"Bearer {secret}") if shape == "openai" else ("api-key", secret)


def openai_route(base_url: str, api_model: str | None, *, key_env: str | None = None,
                 key_literal: str | None = None) -> Route:
    return Route(url=f"{base_url.rstrip('/')}/chat/completions", shape="openai",
                 api_model=api_model, key_env=key_env, key_literal=key_literal)


def azure_route(endpoint: str, deployment: str, api_version: str, *, key_env: str | None = None,
                key_literal: str | None = None) -> Route:
    # A deployment name is one path segment, escaped: `../x?` must not reach another URL.
    return Route(url=f"{endpoint.rstrip('/')}/openai/deployments/{quote(deployment, safe='')}"
                     f"/chat/completions?api-version={quote(api_version, safe='')}",
                 shape="azure", api_model=None, key_env=key_env, key_literal=key_literal)


__all__ = ["auth_header", "azure_route", "openai_route"]
