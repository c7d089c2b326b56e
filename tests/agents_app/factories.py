"""factory_boy factories of compute. Hosts, VMs and pool copies with a state that matters are
made through the services (heartbeat.host_register, vm_create, vm_deploy)."""

import factory

from agents_app.models import PrimaryPool, VmPool
from tests.templates_app.factories import AccountFactory, TemplateFactory, ZoneFactory


class PrimaryPoolFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = PrimaryPool

    zone = factory.SubFactory(ZoneFactory)
    name = factory.Sequence(lambda n: f"pool{n}")
    libvirt_pool_name = factory.LazyAttribute(lambda pool: pool.name)
    path = "/nonexistent"


class VmPoolFactory(factory.django.DjangoModelFactory):
    """A VM pool row with no VM in it (vm_pools.vm_pool_create deploys its VMs)."""

    class Meta:
        model = VmPool

    name = factory.Sequence(lambda n: f"vm-pool-{n}")
    account = factory.SubFactory(AccountFactory)
    zone = factory.SubFactory(ZoneFactory)
    template = factory.SubFactory(TemplateFactory)
    size = 1
