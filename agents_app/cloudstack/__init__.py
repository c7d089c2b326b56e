"""The CloudStack facade's compute commands (VMs, service offerings, direct-download
certificates, prepareTemplate, the empty network listings libcloud asks for), registered into
the transport's registry (templates_app.cloudstack) from AgentsAppConfig.ready()."""
