"""Versions live on Template (templates_app.models): `base`, `version_number`, `version_name`.

A version is a Template of its own whose `base` is the lineage's base template (version 1);
numbers are assigned by `versions_app.services.template_version_create` under the base's row
lock. This app holds the services and selectors of versions, and no table of its own.
"""
