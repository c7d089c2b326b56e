from django.db import models


class VmState(models.TextChoices):
    STARTING = "STARTING", "Starting"
    RUNNING = "RUNNING", "Running"
    STOPPED = "STOPPED", "Stopped"
    ERROR = "ERROR", "Error"
    DESTROYED = "DESTROYED", "Destroyed (recoverable)"
    EXPUNGED = "EXPUNGED", "Expunged"


class HostState(models.TextChoices):
    UP = "UP", "Up"
    DOWN = "DOWN", "Down"
    DISCONNECTED = "DISCONNECTED", "Disconnected"
    MAINTENANCE = "MAINTENANCE", "Maintenance"


class PoolCopyState(models.TextChoices):
    NOT_DOWNLOADED = "NOT_DOWNLOADED", "Not downloaded"
    DOWNLOAD_IN_PROGRESS = "DOWNLOAD_IN_PROGRESS", "Download in progress"
    DOWNLOADED = "DOWNLOADED", "Downloaded"
    DOWNLOAD_ERROR = "DOWNLOAD_ERROR", "Download error"
    EVICTING = "EVICTING", "Evicting"


# The built-in channel 'latest' (versions_app.models.LATEST): spelled here because the host side,
# which loads these models, never imports versions_app.
LATEST_CHANNEL = "latest"
