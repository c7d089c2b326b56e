from django.db import models


class VmState(models.TextChoices):
    STARTING = "STARTING", "Starting"
    RUNNING = "RUNNING", "Running"
    STOPPED = "STOPPED", "Stopped"
    DESTROYED = "DESTROYED", "Destroyed (recoverable)"
    EXPUNGED = "EXPUNGED", "Expunged"
