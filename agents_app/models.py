"""KVM hosts, primary pools, template copies on pools, and virtual machines.

A VM that is not EXPUNGED, and a pinned pool copy, are live references to their template.
"""

import uuid as uuid_lib

from django.conf import settings
from django.db import models
from django_fsm import ConcurrentTransitionMixin, FSMField, FSMModelMixin, transition

from templates_app import leases
from templates_app.models import Account, Template, Zone

from .choices import LATEST_CHANNEL, HostState, PoolCopyState, VmState


class Host(ConcurrentTransitionMixin, models.Model):
    """A KVM host running an agent: a Celery worker on its own queue `host.<name>`."""

    uuid = models.UUIDField("ID", default=uuid_lib.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=128, unique=True)
    zone = models.ForeignKey(Zone, on_delete=models.PROTECT, related_name="hosts")
    address = models.CharField(max_length=255, blank=True)
    libvirt_uri = models.CharField(max_length=1024)
    state = FSMField(
        max_length=16, choices=HostState.choices, default=HostState.DISCONNECTED, protected=True
    )
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    capabilities = models.JSONField(default=dict, blank=True)
    unknown_domains = models.JSONField(
        default=list,
        blank=True,
        help_text="Running libvirt domains on this host that no VM here knows, as its agent's "
        "last heartbeat saw them (names). Reported only: Stencil never touches them.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["zone__name", "name"]

    def __str__(self) -> str:
        return self.name

    @property
    def queue(self) -> str:
        return f"host.{self.name}"

    @transition(
        field=state,
        source=[HostState.DISCONNECTED, HostState.DOWN, HostState.UP],
        target=HostState.UP,
    )
    def connect(self) -> None:
        """The agent announced itself or sent a heartbeat."""

    @transition(field=state, source=HostState.UP, target=HostState.DOWN)
    def miss_heartbeats(self) -> None:
        """No heartbeat for too long."""

    @transition(
        field=state,
        source=[HostState.UP, HostState.DOWN, HostState.DISCONNECTED],
        target=HostState.MAINTENANCE,
    )
    def enter_maintenance(self) -> None:
        """Operator takes the host out of service."""

    @transition(field=state, source=HostState.MAINTENANCE, target=HostState.DISCONNECTED)
    def leave_maintenance(self) -> None:
        """Back in service once the agent reports."""


class PrimaryPool(models.Model):
    """A libvirt storage pool on hosts of a zone (a dir pool now), where VM disks live."""

    uuid = models.UUIDField("ID", default=uuid_lib.uuid4, unique=True, editable=False)
    zone = models.ForeignKey(Zone, on_delete=models.PROTECT, related_name="primary_pools")
    name = models.CharField(max_length=128, unique=True)
    libvirt_pool_name = models.CharField(max_length=128)
    pool_type = models.CharField(max_length=16, default="dir")
    path = models.CharField(max_length=1024, help_text="Target directory as hosts see it.")
    hosts = models.ManyToManyField(Host, related_name="pools", blank=True)
    capacity_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    used_bytes = models.PositiveBigIntegerField(default=0)
    cache_threshold_percent = models.PositiveSmallIntegerField(
        default=80, help_text="Above this usage the sweep evicts unpinned cached copies."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["zone__name", "name"]

    def __str__(self) -> str:
        return self.name


class TemplatePoolRef(FSMModelMixin, models.Model):
    """A template's copy on a primary pool. One per (template, pool): deploys share it."""

    template = models.ForeignKey(Template, on_delete=models.PROTECT, related_name="pool_refs")
    pool = models.ForeignKey(PrimaryPool, on_delete=models.PROTECT, related_name="template_refs")
    state = FSMField(
        max_length=24,
        choices=PoolCopyState.choices,
        default=PoolCopyState.NOT_DOWNLOADED,
        protected=True,
    )
    volume_name = models.CharField(max_length=255, blank=True)
    install_path = models.CharField(max_length=1024, blank=True)
    size = models.PositiveBigIntegerField(null=True, blank=True, help_text="Virtual size.")
    physical_size = models.PositiveBigIntegerField(null=True, blank=True)
    download_percent = models.PositiveSmallIntegerField(default=0)
    error_text = models.TextField(blank=True)
    pinned = models.BooleanField(default=False, help_text="Pre-populated: a live reference.")
    attempts = models.PositiveIntegerField(default=0)
    lease_owner = models.CharField(max_length=64, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    marked_for_eviction_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "pool copy"
        verbose_name_plural = "pool copies"
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["template", "pool"], name="template_pool_ref_unique")
        ]

    def __str__(self) -> str:
        return f"{self.template} on {self.pool}"

    def lease_is_free(self) -> bool:
        """Nobody copies it, or the copying worker's lease ran out (it died)."""
        if self.state != PoolCopyState.DOWNLOAD_IN_PROGRESS:
            return True
        return leases.lease_is_free(self)

    @transition(
        field=state,
        source=[
            PoolCopyState.NOT_DOWNLOADED,
            PoolCopyState.DOWNLOAD_ERROR,
            PoolCopyState.DOWNLOAD_IN_PROGRESS,
        ],
        target=PoolCopyState.DOWNLOAD_IN_PROGRESS,
        conditions=[lease_is_free],
    )
    def start_copy(self) -> None:
        """One worker takes the copy; the other deploys wait for it."""

    @transition(
        field=state, source=PoolCopyState.DOWNLOAD_IN_PROGRESS, target=PoolCopyState.DOWNLOADED
    )
    def finish_copy(self) -> None:
        """The copy is on the pool and usable as a backing file."""

    @transition(
        field=state, source=PoolCopyState.DOWNLOAD_IN_PROGRESS, target=PoolCopyState.DOWNLOAD_ERROR
    )
    def fail_copy(self) -> None:
        """The copy failed; the next deploy retries it."""

    @transition(
        field=state,
        source=PoolCopyState.DOWNLOAD_ERROR,
        target=PoolCopyState.NOT_DOWNLOADED,
        custom={"label": "Retry download"},
    )
    def retry_copy(self) -> None:
        """An operator asked for a failed copy again; an Up host of the pool makes it next."""

    @transition(field=state, source=PoolCopyState.DOWNLOADED, target=PoolCopyState.DOWNLOAD_ERROR)
    def lose_file(self) -> None:
        """The reconciler found the copy's file gone; the next deploy copies it again."""

    @transition(
        field=state,
        source=[PoolCopyState.DOWNLOADED, PoolCopyState.DOWNLOAD_ERROR],
        target=PoolCopyState.EVICTING,
    )
    def start_eviction(self) -> None:
        """The sweep deletes an unused, unpinned copy."""


LIVE_STATES = [VmState.STARTING, VmState.RUNNING, VmState.STOPPED, VmState.ERROR]
# States a host task works from: each can fail into ERROR (`VirtualMachine.mark_error`).
WORKING_STATES = LIVE_STATES


class VmPool(models.Model):
    """A pool of stateless VMs of one template lineage (seed 002): a concrete version, or the
    lineage's newest ACTIVE version ('latest'). Users take a VM and return it; a free VM is kept
    down, so a new version reaches it at once (and a returned one as it stops)."""

    uuid = models.UUIDField("ID", default=uuid_lib.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=128, unique=True)
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="vm_pools")
    zone = models.ForeignKey(Zone, on_delete=models.PROTECT, related_name="vm_pools")
    template = models.ForeignKey(
        Template,
        on_delete=models.PROTECT,
        related_name="vm_pools",
        help_text="The version its VMs are made from; with 'latest', any member of the lineage.",
    )
    follow_channel = models.CharField(
        max_length=32,
        blank=True,
        help_text="The channel of its lineage its VMs follow ('latest', 'stable', 'canary', "
        "...); empty: the version it names.",
    )
    size = models.PositiveSmallIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "VM pool"
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def use_latest_template_version(self) -> bool:
        """oVirt's flag (seed 002): following 'latest' is following the built-in channel."""
        return self.follow_channel == LATEST_CHANNEL


class VirtualMachine(ConcurrentTransitionMixin, models.Model):
    """A VM. With a host it is a libvirt domain named `vm-<uuid>`; without one, a record only."""

    uuid = models.UUIDField("ID", default=uuid_lib.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=128)
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="vms")
    template = models.ForeignKey(Template, on_delete=models.PROTECT, related_name="vms")
    zone = models.ForeignKey(Zone, on_delete=models.PROTECT, related_name="vms")
    host = models.ForeignKey(
        Host, on_delete=models.PROTECT, related_name="vms", null=True, blank=True
    )
    pool = models.ForeignKey(
        PrimaryPool, on_delete=models.PROTECT, related_name="vms", null=True, blank=True
    )
    pool_copy = models.ForeignKey(
        TemplatePoolRef,
        on_delete=models.PROTECT,
        related_name="vms",
        null=True,
        blank=True,
        help_text="The cached copy the root disk is an overlay on (CACHE policy).",
    )
    awaited_copy = models.ForeignKey(
        TemplatePoolRef,
        on_delete=models.SET_NULL,
        related_name="waiting_vms",
        null=True,
        blank=True,
        help_text="The pool copy another worker is making, that this VM's deploy (or rebuild) "
        "waits for: finishing or failing that copy re-queues the VM's task. Cleared by whoever "
        "re-queues it.",
    )
    root_volume = models.CharField(max_length=255, blank=True)
    root_disk_path = models.CharField(max_length=1024, blank=True)
    memory_mib = models.PositiveIntegerField(default=256)
    vcpus = models.PositiveSmallIntegerField(default=1)
    stateless = models.BooleanField(
        default=False,
        help_text="Disk changes are discarded when it stops: its root disk is made again from "
        "its template.",
    )
    follow_channel = models.CharField(
        max_length=32,
        blank=True,
        help_text="The channel of its template's lineage it follows (stateless only): 'latest' "
        "(the newest ACTIVE version), 'stable', 'canary' or the owner's own; when the channel "
        "moves it is rebuilt onto its version if stopped, or when it next stops. Empty: it "
        "keeps its version.",
    )
    vm_pool = models.ForeignKey(
        VmPool, on_delete=models.PROTECT, related_name="vms", null=True, blank=True
    )
    taken_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        related_name="pool_vms_taken",
        null=True,
        blank=True,
        help_text="The user who took this pool VM (free when empty).",
    )
    deploy_hosts_tried = models.JSONField(
        default=list,
        blank=True,
        help_text="Hosts that tried this deploy (a direct download "
        "that fails for network reasons moves to another Up host of the pool, up to 3).",
    )
    error_text = models.TextField(blank=True)
    state = FSMField(
        max_length=16, choices=VmState.choices, default=VmState.STOPPED, protected=True
    )
    # The host task claim (agents_app.agent.claims): a host task takes it in a short transaction
    # before it touches libvirt and gives it back once its result is recorded, so a duplicate
    # delivery of the task sees it and leaves. A claim that is not renewed runs out: its holder
    # died, and the next delivery takes it over.
    host_task_token = models.CharField(
        max_length=64, blank=True, help_text="The host task attempt working on this VM now."
    )
    host_task_name = models.CharField(
        max_length=160, blank=True, help_text="Which host task holds the claim."
    )
    host_task_expires_at = models.DateTimeField(null=True, blank=True)
    transition_deadline = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When the host should have recorded the result of the deploy or rebuild in "
        "progress (transition_action); the reaper ends it in ERROR after that. Empty when "
        "nothing is in progress.",
    )
    transition_action = models.CharField(
        max_length=16, blank=True, help_text="What the deadline is for: deploy or rebuild."
    )
    destroyed_at = models.DateTimeField(null=True, blank=True)
    expunged_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "VM"
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["template", "state"], name="vm_template_state_idx")]

    def __str__(self) -> str:
        return self.name

    @property
    def use_latest_template_version(self) -> bool:
        """oVirt's flag (seed 002): following 'latest' is following the built-in channel."""
        return self.follow_channel == LATEST_CHANNEL

    @transition(field=state, source=VmState.STARTING, target=VmState.RUNNING)
    def mark_running(self) -> None:
        """The agent made the disk, defined the domain and started it."""

    @transition(field=state, source=VmState.STARTING, target=VmState.ERROR)
    def fail_deploy(self) -> None:
        """The agent could not deploy it; error_text says why."""

    @transition(field=state, source=WORKING_STATES, target=VmState.ERROR)
    def mark_error(self) -> None:
        """A host task failed in a way that leaves the domain's state unknown (or gone);
        error_text says why."""

    @transition(
        field=state,
        source=VmState.ERROR,
        target=VmState.STOPPED,
        custom={"label": "Reset to stopped"},
    )
    def reset(self) -> None:
        """An operator takes a VM out of ERROR: it is recorded stopped and its host powers the
        domain off; starting it again goes through the normal start."""

    @transition(field=state, source=[VmState.STARTING, VmState.STOPPED], target=VmState.ERROR)
    def miss_deadline(self) -> None:
        """The reaper: its host recorded no result of the deploy or rebuild before the deadline."""

    @transition(field=state, source=[VmState.STOPPED], target=VmState.RUNNING)
    def start(self) -> None:
        """Power on (record only until agents run it)."""

    @transition(field=state, source=[VmState.RUNNING, VmState.STARTING], target=VmState.STOPPED)
    def stop(self) -> None:
        """Power off."""

    @transition(field=state, source=LIVE_STATES, target=VmState.DESTROYED)
    def destroy(self) -> None:
        """Destroyed but recoverable: still holds its template."""

    @transition(field=state, source=VmState.DESTROYED, target=VmState.STOPPED)
    def recover(self) -> None:
        """Bring a destroyed VM back, stopped."""

    @transition(field=state, source=VmState.DESTROYED, target=VmState.EXPUNGED)
    def expunge(self) -> None:
        """Gone for good: no longer a reference."""


class VmSnapshot(models.Model):
    """A libvirt snapshot of a VM, as recorded here. Its metadata lives in libvirt; its data
    lives in the VM's disk (internal qcow2 snapshot)."""

    uuid = models.UUIDField("ID", default=uuid_lib.uuid4, unique=True, editable=False)
    vm = models.ForeignKey(VirtualMachine, on_delete=models.CASCADE, related_name="snapshots")
    name = models.CharField(max_length=128)
    description = models.CharField(max_length=1024, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "VM snapshot"
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["vm", "name"], name="vm_snapshot_unique_name")
        ]

    def __str__(self) -> str:
        return f"{self.vm.name}@{self.name}"


# Direct-download certificates ----------------------------------------------------------------


class HostCertificateState(models.TextChoices):
    PENDING = "PENDING", "Pending"
    INSTALLED = "INSTALLED", "Installed"
    FAILED = "FAILED", "Failed"
    REMOVING = "REMOVING", "Removing"
    REMOVED = "REMOVED", "Removed"


class DirectDownloadCertificate(models.Model):
    """A CA (or server) certificate that hosts of a zone trust for HTTPS direct downloads.

    Only the certificate is kept, never key material. Revoking keeps the row (with revoked_at)
    and frees its alias for a new certificate.
    """

    uuid = models.UUIDField("ID", default=uuid_lib.uuid4, unique=True, editable=False)
    alias = models.CharField(max_length=64)
    zone = models.ForeignKey(
        Zone, on_delete=models.PROTECT, related_name="direct_download_certificates"
    )
    pem = models.TextField(help_text="The certificate alone, PEM, as re-encoded after parsing.")
    subject = models.CharField(max_length=1024)
    issuer = models.CharField(max_length=1024)
    serial = models.CharField(max_length=64, help_text="Serial number, hexadecimal.")
    not_before = models.DateTimeField()
    not_after = models.DateTimeField()
    fingerprint_sha256 = models.CharField(max_length=64)
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "direct-download certificate"
        ordering = ["zone__name", "alias", "-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["zone", "alias"],
                condition=models.Q(revoked_at__isnull=True),
                name="dd_certificate_alias_unique_in_zone",
            )
        ]

    def __str__(self) -> str:
        return self.alias

    @property
    def file_name(self) -> str:
        """Its file in a host's trust directory (the alias rules keep it a plain name)."""
        return f"{self.alias}.pem"


class HostCertificate(FSMModelMixin, models.Model):
    """A certificate in one host's trust directory, as that host's agent reported it."""

    certificate = models.ForeignKey(
        DirectDownloadCertificate, on_delete=models.CASCADE, related_name="host_certificates"
    )
    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="certificates")
    state = FSMField(
        max_length=16,
        choices=HostCertificateState.choices,
        default=HostCertificateState.PENDING,
        protected=True,
    )
    error_text = models.TextField(blank=True)
    requeued_for = models.CharField(
        max_length=16,
        blank=True,
        help_text="The state (PENDING or REMOVING) in which the reaper already re-queued the "
        "host's task once; past the deadline again it is FAILED.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["host__name"]
        constraints = [
            models.UniqueConstraint(fields=["certificate", "host"], name="host_certificate_unique")
        ]

    def __str__(self) -> str:
        return f"{self.certificate} on {self.host}"

    # Installing is allowed from every state: the service installs only a certificate that is
    # not revoked and belongs to the host's zone (a host that left the zone and came back gets
    # it again), and re-checks that under the row's lock.
    @transition(field=state, source="*", target=HostCertificateState.INSTALLED)
    def mark_installed(self) -> None:
        """The agent wrote the file into its trust directory."""

    @transition(field=state, source="*", target=HostCertificateState.FAILED)
    def mark_failed(self) -> None:
        """The agent could not install it; error_text says why, the next sync retries."""

    @transition(
        field=state,
        source=[
            HostCertificateState.PENDING,
            HostCertificateState.FAILED,
            HostCertificateState.INSTALLED,
            HostCertificateState.REMOVING,
        ],
        target=HostCertificateState.REMOVING,
    )
    def start_removal(self) -> None:
        """Revoked (or the host left the zone): the host must delete the file."""

    @transition(
        field=state, source=HostCertificateState.REMOVING, target=HostCertificateState.REMOVED
    )
    def mark_removed(self) -> None:
        """The file is gone from the host's trust directory."""
