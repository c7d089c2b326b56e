"""Versions live on Template (`base`, `version_number`) once the versions issue lands."""
