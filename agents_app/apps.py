from django.apps import AppConfig


class AgentsAppConfig(AppConfig):
    """KVM agents, primary pools and virtual machines (the references that keep templates alive)."""

    name = "agents_app"
    verbose_name = "Agents and VMs"
