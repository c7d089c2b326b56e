"""Where a template's bytes live on an image store, and its `template.properties` beside them.

Layout (CloudStack's): `<store>/template/tmpl/<account id>/<template id>/<unique_name>.<ext>`.
File names come from the template's unique name, never from the URL.
"""

from pathlib import Path

from .models import ImageStore, Template

PROPERTIES_NAME = "template.properties"
EXTENSIONS = {"QCOW2": "qcow2", "RAW": "raw", "VHD": "vhd", "VMDK": "vmdk", "ISO": "iso"}


def relative_folder(template: Template) -> Path:
    return Path("template", "tmpl", str(template.account_id), str(template.pk))


def relative_install_path(template: Template) -> str:
    name = f"{template.unique_name}.{EXTENSIONS[template.format]}"
    return str(relative_folder(template) / name)


def absolute(store: ImageStore, relative: str | Path) -> Path:
    """Resolve a path inside a store, refusing anything that escapes it."""
    root = Path(store.path).resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root) or path == root:
        raise ValueError(f"{relative} is outside store {root}")
    return path


def write_properties(folder: Path, values: dict[str, object]) -> Path:
    """Write template.properties atomically (temp file + rename)."""
    target = folder / PROPERTIES_NAME
    temp = folder / f".{PROPERTIES_NAME}.tmp"
    temp.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
    temp.replace(target)
    return target


def read_properties(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            values[key.strip()] = value.strip()
    return values
