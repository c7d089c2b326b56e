"""CloudStack's OS types. Stencil keeps a template's OS as text (`Template.os_type`); the facade
names each text by a stable id (UUID 5 of the text), so `ostypeid` round-trips, and lists a
small table of common ones."""

import uuid as uuid_lib

OS_TYPE_NAMESPACE = uuid_lib.UUID("6f0c8b4e-2d7a-4c55-9a61-5f3b8e1d2c40")

# (description, category)
OS_TYPES = (
    ("Debian GNU/Linux 12 (64-bit)", "Debian"),
    ("Debian GNU/Linux 11 (64-bit)", "Debian"),
    ("Ubuntu 24.04 LTS", "Ubuntu"),
    ("Ubuntu 22.04 LTS", "Ubuntu"),
    ("Rocky Linux 9", "RedHat"),
    ("AlmaLinux 9", "RedHat"),
    ("CentOS Stream 9", "CentOS"),
    ("Fedora Linux (64-bit)", "Fedora"),
    ("FreeBSD 14 (64-bit)", "FreeBSD"),
    ("Windows Server 2022 (64-bit)", "Windows"),
    ("Other Linux (64-bit)", "Other"),
    ("Other (64-bit)", "Other"),
)


def os_type_id(description: str) -> str | None:
    return str(uuid_lib.uuid5(OS_TYPE_NAMESPACE, description)) if description else None


def category_id(category: str) -> str:
    return str(uuid_lib.uuid5(OS_TYPE_NAMESPACE, f"category:{category}"))


def os_type_rows() -> list[dict]:
    return [
        {
            "id": os_type_id(description),
            "description": description,
            "name": description,
            "oscategoryid": category_id(category),
            "oscategoryname": category,
            "isuserdefined": False,
        }
        for description, category in OS_TYPES
    ]


def os_type_named(os_type_uuid: uuid_lib.UUID) -> str | None:
    """The description of a listed OS type id, or None."""
    wanted = str(os_type_uuid)
    return next((d for d, _ in OS_TYPES if os_type_id(d) == wanted), None)
