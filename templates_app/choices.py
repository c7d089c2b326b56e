"""Enumerations of the catalogue, kept apart so that models, services and API share them."""

from django.db import models


class TemplateKind(models.TextChoices):
    TEMPLATE = "TEMPLATE", "Template"
    ISO = "ISO", "ISO"


class TemplateFormat(models.TextChoices):
    QCOW2 = "QCOW2", "QCOW2"
    RAW = "RAW", "RAW"
    VHD = "VHD", "VHD"
    VMDK = "VMDK", "VMDK"
    ISO = "ISO", "ISO"


class Hypervisor(models.TextChoices):
    KVM = "KVM", "KVM"


class PrimaryPolicy(models.TextChoices):
    CACHE = "CACHE", "Cache one copy per pool"
    DIRECT = "DIRECT", "Copy directly for each VM"


class TemplateState(models.TextChoices):
    ACTIVE = "ACTIVE", "Active"
    INACTIVE = "INACTIVE", "Inactive"
    REMOVED = "REMOVED", "Removed"


class ImageStoreState(models.TextChoices):
    UP = "UP", "Up"
    READ_ONLY = "READ_ONLY", "Read-only"
    DISABLED = "DISABLED", "Disabled"


class DownloadState(models.TextChoices):
    NOT_DOWNLOADED = "NOT_DOWNLOADED", "Not downloaded"
    DOWNLOAD_IN_PROGRESS = "DOWNLOAD_IN_PROGRESS", "Download in progress"
    DOWNLOADED = "DOWNLOADED", "Downloaded"
    DOWNLOAD_ERROR = "DOWNLOAD_ERROR", "Download error"
    ABANDONED = "ABANDONED", "Abandoned"
    NOT_UPLOADED = "NOT_UPLOADED", "Not uploaded"
    UPLOAD_IN_PROGRESS = "UPLOAD_IN_PROGRESS", "Upload in progress"
    UPLOADED = "UPLOADED", "Uploaded"
    UPLOAD_ERROR = "UPLOAD_ERROR", "Upload error"
    UPLOAD_ABANDONED = "UPLOAD_ABANDONED", "Upload abandoned"
    BYPASSED = "BYPASSED", "Bypassed (direct download)"


class StoreRefState(models.TextChoices):
    ALLOCATED = "ALLOCATED", "Allocated"
    CREATING = "CREATING", "Creating"
    READY = "READY", "Ready"
    QUARANTINED = "QUARANTINED", "Quarantined (failed a re-inspection; bytes kept, not used)"
    DESTROYING = "DESTROYING", "Destroying"
    DESTROYED = "DESTROYED", "Destroyed"


class TemplateFilter(models.TextChoices):
    """CloudStack's listTemplates templatefilter values (see docs/api.md)."""

    FEATURED = "featured", "Featured: public templates marked featured by an administrator"
    SELF = "self", "Self: templates owned by the caller's account, in any usable state"
    SELFEXECUTABLE = "selfexecutable", "Self executable: the caller's own templates ready to deploy"
    SHAREDEXECUTABLE = (
        "sharedexecutable",
        "Shared executable: other accounts' private templates shared with the caller",
    )
    EXECUTABLE = "executable", "Executable: everything the caller may deploy (own, shared, public)"
    COMMUNITY = "community", "Community: public templates that are not featured"
    ALL = "all", "All: every template (administrators; others get executable)"


class GcSweepRunState(models.TextChoices):
    QUEUED = "QUEUED", "Queued"
    RUNNING = "RUNNING", "Running"
    DONE = "DONE", "Done"
    FAILED = "FAILED", "Failed"
