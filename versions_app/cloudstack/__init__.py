"""The CloudStack facade's template and ISO commands (listTemplates uses the per-lineage
listing of this layer), registered into the transport's registry (templates_app.cloudstack)."""
