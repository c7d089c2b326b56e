"""Catalogue models. State fields are protected FSM fields: only services move them."""

import uuid as uuid_lib
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.contenttypes.fields import GenericForeignKey
from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.utils import timezone
from django_fsm import ConcurrentTransitionMixin, FSMField, FSMModelMixin, transition

from . import leases
from .choices import (
    DownloadState,
    GcSweepRunState,
    Hypervisor,
    ImageStoreState,
    PrimaryPolicy,
    StoreRefState,
    TemplateFormat,
    TemplateKind,
    TemplateState,
)
from .fields import RedactedCharField, RedactedTextField


class Account(models.Model):
    """A tenant. Members are Django users; limits of None mean unlimited."""

    uuid = models.UUIDField("ID", default=uuid_lib.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=128, unique=True)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, related_name="accounts", blank=True)
    max_templates = models.PositiveIntegerField(null=True, blank=True)
    max_secondary_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    # VMs that are not expunged count: a destroyed VM can still be recovered.
    max_vms = models.PositiveIntegerField(null=True, blank=True)
    used_templates = models.PositiveIntegerField(default=0)
    used_secondary_bytes = models.PositiveBigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Zone(models.Model):
    """An availability zone: hosts, pools and image stores live in exactly one."""

    uuid = models.UUIDField("ID", default=uuid_lib.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=128, unique=True)
    description = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ImageStore(models.Model):
    """Secondary storage of a zone: a directory (local path or a mount of NFS/other)."""

    uuid = models.UUIDField("ID", default=uuid_lib.uuid4, unique=True, editable=False)
    zone = models.ForeignKey(Zone, on_delete=models.PROTECT, related_name="image_stores")
    name = models.CharField(max_length=128)
    path = models.CharField(max_length=1024, help_text="Local path or mount point of the store.")
    state = models.CharField(
        max_length=16, choices=ImageStoreState.choices, default=ImageStoreState.UP
    )
    capacity_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    used_bytes = models.PositiveBigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["zone__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["zone", "name"], name="image_store_unique_name_in_zone")
        ]

    def __str__(self) -> str:
        return f"{self.zone.name}/{self.name}"


def removal_not_before(
    state: str, deactivated_at: datetime | None, updated_at: datetime | None
) -> datetime | None:
    """Template.removal_not_before of a template's fields (the listing has rows, not models)."""
    if state != TemplateState.INACTIVE:
        return None
    since = deactivated_at or updated_at
    if since is None:
        return None
    return since + timedelta(seconds=settings.STENCIL_GC_GRACE_SECONDS)


class Template(ConcurrentTransitionMixin, models.Model):
    """A VM template or an ISO. `state` is what users may do; `removed_at`: the bytes are gone.

    A version is a Template of its own (own bytes, own life cycle) whose `base` is the base
    template of its lineage; there is no version of a version.
    """

    uuid = models.UUIDField("ID", default=uuid_lib.uuid4, unique=True, editable=False)
    unique_name = models.CharField(max_length=64, unique=True, editable=False)
    name = models.CharField(max_length=128)
    display_text = models.CharField(max_length=4096, blank=True)
    kind = models.CharField(
        max_length=16, choices=TemplateKind.choices, default=TemplateKind.TEMPLATE
    )
    format = models.CharField(max_length=8, choices=TemplateFormat.choices)
    url = models.URLField("URL", max_length=2048, blank=True)
    checksum = models.CharField(max_length=160, blank=True)
    os_type = models.CharField("OS type", max_length=128, blank=True)
    hypervisor = models.CharField(max_length=16, choices=Hypervisor.choices, default=Hypervisor.KVM)
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="templates")
    zones = models.ManyToManyField(Zone, related_name="templates", blank=True)
    shared_with = models.ManyToManyField(
        Account, related_name="shared_templates", blank=True, help_text="Launch permissions."
    )
    is_public = models.BooleanField("public", default=False)
    is_featured = models.BooleanField("featured", default=False)
    cross_zones = models.BooleanField("cross-zone", default=False)
    direct_download = models.BooleanField(default=False)
    primary_policy = models.CharField(
        max_length=8, choices=PrimaryPolicy.choices, default=PrimaryPolicy.CACHE
    )
    # Versions (seed 002): a version is a Template whose `base` is the lineage's base template.
    # The base is version 1; versions get max+1 from versions_app.services, never from a client.
    base = models.ForeignKey(
        "self",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="versions",
        editable=False,
        help_text="The base template this is a version of; empty for a base template.",
    )
    version_number = models.PositiveIntegerField(default=1, editable=False)
    version_name = models.CharField(max_length=128, blank=True)
    state = FSMField(
        max_length=16, choices=TemplateState.choices, default=TemplateState.ACTIVE, protected=True
    )
    deactivated_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When it was deleted (INACTIVE); the sweep removes it only after the grace.",
    )
    removed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(
                fields=["state", "is_public", "is_featured"], name="template_visibility_idx"
            ),
            models.Index(fields=["account", "state"], name="template_account_state_idx"),
            models.Index(fields=["state", "-created_at", "-id"], name="template_state_created_idx"),
            # The GC sweep walks the INACTIVE ids in order; a third of a catalogue at most.
            models.Index(
                fields=["id"],
                name="template_inactive_idx",
                condition=models.Q(state="INACTIVE"),
            ),
            # The listing's capped count walks ACTIVE ids with every column its visibility and
            # newest-version rules read: an index-only scan, no heap page per counted row.
            # Key columns after id, not INCLUDE: SQLite (make run) has no INCLUDE.
            models.Index(
                fields=["id", "is_public", "is_featured", "account", "base", "version_number"],
                name="template_active_listing_idx",
                condition=models.Q(state="ACTIVE"),
            ),
        ]
        constraints = [
            # Also the index behind "is there a newer version in this lineage" (listings).
            models.UniqueConstraint(
                fields=["base", "version_number"],
                name="template_version_number_unique",
                condition=models.Q(base__isnull=False),
            ),
            models.CheckConstraint(
                condition=models.Q(base__isnull=True, version_number=1)
                | models.Q(base__isnull=False, version_number__gte=2),
                name="template_base_is_version_one",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def version_label(self) -> str:
        """'ubuntu v3 — jammy refresh': tells the versions of a lineage apart wherever one is
        chosen or listed (their names are often the same)."""
        label = f"{self.name} v{self.version_number}"
        return f"{label} — {self.version_name}" if self.version_name else label

    @property
    def removal_not_before(self) -> datetime | None:
        """An INACTIVE template is kept at least until then (STENCIL_GC_GRACE_SECONDS after its
        delete), so a mistaken delete can be undone; None in any other state."""
        return removal_not_before(self.state, self.deactivated_at, self.updated_at)

    @property
    def lineage_id(self) -> int:
        """The id of the lineage's base template (its own id for a base)."""
        return self.base_id or self.pk

    @transition(
        field=state,
        source=TemplateState.ACTIVE,
        target=TemplateState.INACTIVE,
        custom={"label": "Deactivate (delete)"},
    )
    def deactivate(self) -> None:
        """Hide from listings and new deployments; bytes and record stay for existing VMs."""

    @transition(
        field=state,
        source=TemplateState.INACTIVE,
        target=TemplateState.ACTIVE,
        custom={"label": "Reactivate"},
    )
    def reactivate(self) -> None:
        """Undo a delete before the sweep removed the bytes."""

    @transition(field=state, source=TemplateState.INACTIVE, target=TemplateState.REMOVED)
    def remove(self) -> None:
        """Bytes are going from every store; only the GC sweep calls this."""


class TemplateDetail(models.Model):
    """A key/value detail of a template. Keys may repeat (several HTTP_HEADER rows)."""

    template = models.ForeignKey(Template, on_delete=models.CASCADE, related_name="details")
    key = models.CharField(max_length=255)
    value = models.CharField(max_length=4096, blank=True)

    class Meta:
        verbose_name = "detail"
        ordering = ["id"]

    def __str__(self) -> str:
        # Shown wherever a detail is named (admin rows, messages): an HTTP header's value is a
        # secret, so it never goes through str().
        if self.key.startswith("HTTP_HEADER"):
            name = self.key.partition(":")[2] or self.value.partition(":")[0].strip()
            return f"HTTP header {name}"
        return f"{self.key}={self.value}"


class TemplateStoreRef(FSMModelMixin, models.Model):
    """A template's copy on an image store, or the BYPASSED row of a direct-download template."""

    template = models.ForeignKey(Template, on_delete=models.CASCADE, related_name="store_refs")
    store = models.ForeignKey(
        ImageStore, on_delete=models.PROTECT, related_name="template_refs", null=True, blank=True
    )
    download_state = FSMField(
        max_length=24,
        choices=DownloadState.choices,
        default=DownloadState.NOT_DOWNLOADED,
        protected=True,
    )
    state = FSMField(
        max_length=16,
        choices=StoreRefState.choices,
        default=StoreRefState.ALLOCATED,
        protected=True,
    )
    download_percent = models.PositiveSmallIntegerField(default=0)
    downloaded_bytes = models.PositiveBigIntegerField(default=0)
    size = models.PositiveBigIntegerField(null=True, blank=True, help_text="Virtual size in bytes.")
    physical_size = models.PositiveBigIntegerField(null=True, blank=True)
    install_path = models.CharField(max_length=1024, blank=True)
    sha256 = models.CharField(max_length=64, blank=True, help_text="Computed while downloading.")
    error_text = RedactedTextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    lease_owner = models.CharField(max_length=64, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    upload_expires_at = models.DateTimeField(null=True, blank=True)
    charged_bytes = models.PositiveBigIntegerField(
        default=0, help_text="Secondary bytes charged to the account for this copy."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "store copy"
        verbose_name_plural = "store copies"
        ordering = ["id"]
        indexes = [
            # The sweep's second half reads the copies left DESTROYING, a handful at a time.
            models.Index(
                fields=["id"],
                name="storeref_destroying_idx",
                condition=models.Q(state="DESTROYING"),
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["template", "store"],
                name="template_store_ref_unique",
                condition=models.Q(store__isnull=False),
            ),
            models.UniqueConstraint(
                fields=["template"],
                name="template_bypassed_ref_unique",
                condition=models.Q(store__isnull=True),
            ),
        ]

    def __str__(self) -> str:
        where = self.store or "direct download"
        return f"{self.template} on {where}"

    # Each step of a copy moves its two state fields together: (download_state transition,
    # state transition). "release" only applies to a copy that was CREATING.
    PAIRED_STEPS = {
        "start_download": ("start_download", "start_creating"),
        "finish_download": ("finish_download", "mark_ready"),
        "fail_download": ("fail_download", "release"),
        "start_upload": ("start_upload", "start_creating"),
        "finish_upload": ("finish_upload", "mark_ready"),
        "fail_upload": ("fail_upload", "release"),
        "lose_bytes": ("lose_bytes", "unready"),
    }

    def step(self, name: str) -> None:
        """Move both state fields through the step `name` (a key of PAIRED_STEPS)."""
        download_transition, state_transition = self.PAIRED_STEPS[name]
        getattr(self, download_transition)()
        if state_transition == "release" and self.state != StoreRefState.CREATING:
            return
        getattr(self, state_transition)()

    def lease_is_free(self) -> bool:
        """Nobody works on it, or its worker's lease ran out (the worker died)."""
        in_progress = (DownloadState.DOWNLOAD_IN_PROGRESS, DownloadState.UPLOAD_IN_PROGRESS)
        if self.download_state not in in_progress:
            return True
        return leases.lease_is_free(self)

    @transition(
        field=download_state,
        source=[
            DownloadState.NOT_DOWNLOADED,
            DownloadState.DOWNLOAD_ERROR,
            DownloadState.ABANDONED,
            DownloadState.DOWNLOAD_IN_PROGRESS,
        ],
        target=DownloadState.DOWNLOAD_IN_PROGRESS,
        conditions=[lease_is_free],
    )
    def start_download(self) -> None:
        """A storage worker takes the copy (or takes over one whose worker died)."""

    @transition(
        field=download_state,
        source=DownloadState.DOWNLOAD_IN_PROGRESS,
        target=DownloadState.DOWNLOADED,
    )
    def finish_download(self) -> None:
        """Bytes written, verified and inspected."""

    @transition(
        field=download_state,
        source=DownloadState.DOWNLOAD_IN_PROGRESS,
        target=DownloadState.DOWNLOAD_ERROR,
    )
    def fail_download(self) -> None:
        """The download or the inspection failed; error_text says why."""

    @transition(
        field=download_state,
        source=[DownloadState.DOWNLOAD_ERROR, DownloadState.ABANDONED],
        target=DownloadState.NOT_DOWNLOADED,
        custom={"label": "Retry download"},
    )
    def retry_download(self) -> None:
        """An operator asked for a failed download again; a storage worker takes it next."""

    @transition(
        field=download_state,
        source=[
            DownloadState.NOT_UPLOADED,
            DownloadState.UPLOAD_ERROR,
            DownloadState.UPLOAD_IN_PROGRESS,
        ],
        target=DownloadState.UPLOAD_IN_PROGRESS,
        conditions=[lease_is_free],
    )
    def start_upload(self) -> None:
        """A signed upload started streaming into the store (or takes over one whose web
        worker died: its lease ran out)."""

    @transition(
        field=download_state,
        source=DownloadState.UPLOAD_IN_PROGRESS,
        target=DownloadState.UPLOADED,
    )
    def finish_upload(self) -> None:
        """Uploaded bytes verified and inspected."""

    @transition(
        field=download_state,
        source=DownloadState.UPLOAD_IN_PROGRESS,
        target=DownloadState.UPLOAD_ERROR,
    )
    def fail_upload(self) -> None:
        """The upload broke or failed verification; it may be sent again before expiry."""

    @transition(
        field=download_state,
        source=[
            DownloadState.NOT_UPLOADED,
            DownloadState.UPLOAD_IN_PROGRESS,
            DownloadState.UPLOAD_ERROR,
        ],
        target=DownloadState.UPLOAD_ABANDONED,
    )
    def abandon_upload(self) -> None:
        """The upload URL expired before a good upload arrived."""

    @transition(
        field=download_state,
        source=[DownloadState.DOWNLOADED, DownloadState.UPLOADED],
        target=DownloadState.DOWNLOAD_ERROR,
    )
    def lose_bytes(self) -> None:
        """Template sync found the file gone from the store."""

    @transition(field=state, source=StoreRefState.READY, target=StoreRefState.ALLOCATED)
    def unready(self) -> None:
        """The copy's bytes are gone; it waits for a new download."""

    @transition(
        field=state,
        source=[StoreRefState.ALLOCATED, StoreRefState.CREATING],
        target=StoreRefState.CREATING,
    )
    def start_creating(self) -> None:
        """Bytes are being written."""

    @transition(field=state, source=StoreRefState.CREATING, target=StoreRefState.READY)
    def mark_ready(self) -> None:
        """The copy can be used."""

    @transition(field=state, source=StoreRefState.CREATING, target=StoreRefState.ALLOCATED)
    def release(self) -> None:
        """Creation failed; the row waits for a retry."""

    @transition(field=state, source=StoreRefState.READY, target=StoreRefState.QUARANTINED)
    def quarantine(self) -> None:
        """A re-inspection (rescan_images) refused the stored bytes: they stay on the store for
        an operator to look at, and nothing deploys from them."""

    @transition(
        field=state,
        source=[
            StoreRefState.ALLOCATED,
            StoreRefState.CREATING,
            StoreRefState.READY,
            StoreRefState.QUARANTINED,
        ],
        target=StoreRefState.DESTROYING,
    )
    def start_destroying(self) -> None:
        """The template is removed; its bytes are being deleted from the store."""

    @transition(field=state, source=StoreRefState.DESTROYING, target=StoreRefState.DESTROYED)
    def finish_destroying(self) -> None:
        """The bytes are gone."""


class Event(models.Model):
    """One state change of one object: what, from, to, who or what did it, why, when."""

    content_type = models.ForeignKey(ContentType, on_delete=models.CASCADE)
    object_id = models.PositiveBigIntegerField()
    target = GenericForeignKey("content_type", "object_id")
    object_uuid = models.UUIDField(null=True, blank=True, db_index=True)
    object_repr = models.CharField(max_length=255)
    account = models.ForeignKey(
        Account, on_delete=models.SET_NULL, null=True, blank=True, related_name="events"
    )
    field = models.CharField(max_length=32, default="state")
    from_state = models.CharField(max_length=32, blank=True)
    to_state = models.CharField(max_length=32)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True
    )
    actor_label = models.CharField(max_length=128, help_text="User name or system component.")
    reason = RedactedCharField(max_length=1024, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["content_type", "object_id"], name="event_object_idx")]

    def __str__(self) -> str:
        return f"{self.object_repr}: {self.from_state} -> {self.to_state}"


class GcSweepRun(ConcurrentTransitionMixin, models.Model):
    """One queued GC sweep asked for from the API or the admin, and what it did.

    `template_ids` limits the sweep to those templates (None: every INACTIVE one); `result` is
    the sweep's SweepResult.as_dict() once DONE, `error_text` why it FAILED.
    """

    uuid = models.UUIDField("ID", default=uuid_lib.uuid4, unique=True, editable=False)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    template_ids = models.JSONField(
        null=True, blank=True, help_text="Ids of the templates to sweep; empty: all of them."
    )
    state = FSMField(
        max_length=16,
        choices=GcSweepRunState.choices,
        default=GcSweepRunState.QUEUED,
        protected=True,
    )
    result = models.JSONField(null=True, blank=True)
    error_text = RedactedTextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "GC sweep run"
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"GC sweep {self.uuid}"

    @transition(field=state, source=GcSweepRunState.QUEUED, target=GcSweepRunState.RUNNING)
    def start(self) -> None:
        """A worker took the run."""
        self.started_at = timezone.now()

    @transition(field=state, source=GcSweepRunState.RUNNING, target=GcSweepRunState.DONE)
    def finish(self, result: dict) -> None:
        """The sweep returned (also when it was skipped because another sweep held the lock)."""
        self.result = result
        self.finished_at = timezone.now()

    @transition(field=state, source=GcSweepRunState.RUNNING, target=GcSweepRunState.FAILED)
    def fail(self, error_text: str) -> None:
        """The sweep raised; `error_text` says what."""
        self.error_text = error_text
        self.finished_at = timezone.now()


# The CloudStack facade's API keys and async jobs live in their own module.
from .cloudstack.models import ApiKey, AsyncJob  # noqa: E402, F401
