"""Hosts: agents register, heartbeat, and go Down when they miss heartbeats."""

from datetime import timedelta

import pytest
from django.utils import timezone

from agents_app.agent import heartbeat
from agents_app.host_services import hosts_mark_down
from agents_app.models import Host
from templates_app.models import Event

pytestmark = pytest.mark.django_db


def test_register_marks_up_and_is_idempotent(zone):
    host = heartbeat.host_register(name="kvm-1", zone=zone, libvirt_uri="test:///default")
    again = heartbeat.host_register(name="kvm-1", zone=zone, libvirt_uri="qemu:///system")
    assert host.pk == again.pk
    assert (again.state, again.libvirt_uri, again.queue) == ("UP", "qemu:///system", "host.kvm-1")
    assert Event.objects.filter(object_uuid=host.uuid, to_state="UP").count() == 1


def test_missed_heartbeats_mark_down_and_a_heartbeat_brings_it_back(zone):
    heartbeat.host_register(name="kvm-1", zone=zone, libvirt_uri="test:///default")
    heartbeat.host_register(name="kvm-2", zone=zone, libvirt_uri="test:///default")
    Host.objects.filter(name="kvm-1").update(
        last_heartbeat_at=timezone.now() - timedelta(seconds=120)
    )

    assert hosts_mark_down(missed_after_seconds=90) == 1
    assert hosts_mark_down(missed_after_seconds=90) == 0

    assert dict(Host.objects.values_list("name", "state")) == {"kvm-1": "DOWN", "kvm-2": "UP"}
    heartbeat.host_heartbeat(name="kvm-1")
    assert Host.objects.get(name="kvm-1").state == "UP"
