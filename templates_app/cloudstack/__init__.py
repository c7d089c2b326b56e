"""The CloudStack-compatible API at /client/api (docs/cloudstack-api.md): its transport.

Owned here, in the lowest layer: the API keys, the signature check, the response envelope and
error shape, the command registry, and the async jobs with `queryAsyncJobResult`. Commands are
thin callers of the same services and selectors as the REST API; each layer registers its own
from its AppConfig.ready() (zones and OS types here, templates and ISOs from
`versions_app.cloudstack`, VMs, offerings and certificates from `agents_app.cloudstack`).
"""
