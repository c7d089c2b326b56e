"""CloudStack's service offerings: a small fixed table of sizes (vCPUs, memory). A VM keeps
its vcpus and memory_mib; its offering is the row that matches them."""

import uuid as uuid_lib
from dataclasses import dataclass

OFFERING_NAMESPACE = uuid_lib.UUID("0b7f3d52-8a5e-4c1b-9f0e-6a2d4c8e1b37")


@dataclass(frozen=True)
class Offering:
    name: str
    vcpus: int
    memory_mib: int

    @property
    def id(self) -> str:
        return str(uuid_lib.uuid5(OFFERING_NAMESPACE, self.name))

    @property
    def display_text(self) -> str:
        return f"{self.vcpus} vCPU, {self.memory_mib} MiB RAM"


OFFERINGS = (
    Offering("Tiny Instance", 1, 256),
    Offering("Small Instance", 1, 512),
    Offering("Medium Instance", 2, 2048),
    Offering("Large Instance", 4, 8192),
)


def offering_by_id(offering_id) -> Offering | None:
    return next((o for o in OFFERINGS if o.id == str(offering_id)), None)


def offering_of(vcpus: int, memory_mib: int) -> Offering | None:
    return next((o for o in OFFERINGS if (o.vcpus, o.memory_mib) == (vcpus, memory_mib)), None)
