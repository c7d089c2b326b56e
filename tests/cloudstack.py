"""Helpers of the CloudStack facade's tests: key pairs, the real `cs` client against a live
server, and raw calls signed by `cs`'s own signer (not the server's) for the error cases."""

from datetime import UTC, datetime, timedelta

from cs import CloudStack
from django.test import Client

from templates_app.cloudstack.keys import KeyPair, api_keys_create

ENDPOINT = "/client/api"


def keys_for(user) -> KeyPair:
    return api_keys_create(user=user, regenerate=True)


def cs_client(base_url: str, pair: KeyPair, *, method: str = "get", version: int = 3):
    """The `cs` package as operators run it: signature version 3 (with `expires`) by default,
    version 2 when asked (cs sends no expiry then)."""
    expiration = 600 if version == 3 else -1
    return CloudStack(
        endpoint=base_url + ENDPOINT,
        key=pair.api_key,
        secret=pair.secret_key,
        method=method,
        expiration=expiration,
        timeout=30,
        poll_interval=0.2,
        job_timeout=120,
    )


def signed(pair: KeyPair, command: str, *, secret: str | None = None, **params) -> dict:
    """Parameters of one call, signed by cs's signer (with another `secret` to forge one)."""
    data = {"command": command, "response": "json", "apiKey": pair.api_key, **params}
    data = {key: str(value) for key, value in data.items()}
    CloudStack(endpoint="http://unused", key=pair.api_key, secret=secret or pair.secret_key)._sign(
        data
    )
    return data


def expires_in(seconds: int) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S%z")


def call(pair: KeyPair, command: str, *, method: str = "get", **params):
    """A signed call through Django's test client; (status, body inside the envelope)."""
    data = signed(pair, command, **params)
    client = Client()
    response = client.get(ENDPOINT, data) if method == "get" else client.post(ENDPOINT, data)
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert list(body) == [f"{command.lower()}response"], body
    return response.status_code, body[f"{command.lower()}response"]
