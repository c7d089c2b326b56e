"""API keys and async jobs of the CloudStack facade (app label templates_app)."""

import uuid as uuid_lib

from django.conf import settings
from django.contrib.contenttypes.fields import GenericForeignKey
from django.contrib.contenttypes.models import ContentType
from django.db import models


class ApiKey(models.Model):
    """A user's CloudStack key pair. The secret is kept encrypted (`keys.py`, with
    STENCIL_API_KEY_ENCRYPTION_KEY) because the server needs it back to check signatures."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="cloudstack_api_key"
    )
    api_key = models.CharField(max_length=128, unique=True)
    secret_encrypted = models.TextField(help_text="The secret key, Fernet-encrypted.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "CloudStack API key"

    def __str__(self) -> str:
        return f"API key of {self.user}"


class AsyncJobStatus(models.IntegerChoices):
    PENDING = 0, "Pending"
    SUCCEEDED = 1, "Succeeded"
    FAILED = 2, "Failed"


class AsyncJob(models.Model):
    """One async CloudStack command (deleteTemplate, deployVirtualMachine, ...). Its status is
    computed from its target's state by the resolver its command registered, and stored once
    final (`jobs.py`)."""

    uuid = models.UUIDField("ID", default=uuid_lib.uuid4, unique=True, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    command = models.CharField(max_length=64)
    content_type = models.ForeignKey(ContentType, on_delete=models.CASCADE)
    object_id = models.PositiveBigIntegerField()
    target = GenericForeignKey("content_type", "object_id")
    instance_uuid = models.UUIDField()
    instance_type = models.CharField(max_length=32)
    context = models.JSONField(
        default=dict, blank=True, help_text="What the resolver needs besides the target."
    )
    status = models.PositiveSmallIntegerField(
        choices=AsyncJobStatus.choices, default=AsyncJobStatus.PENDING
    )
    result_code = models.PositiveIntegerField(default=0)
    result = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "CloudStack async job"

    def __str__(self) -> str:
        return f"{self.command} {self.uuid}"
