"""Every public name is documented, and every public function or class shows an example."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import optiquant

SKIP_EXAMPLE_BASES = (tuple, BaseException)


def public_modules() -> list[str]:
    names = ["optiquant"]
    for info in pkgutil.walk_packages(optiquant.__path__, prefix="optiquant."):
        if any(part.startswith("_") for part in info.name.split(".")) or info.name.endswith(
            "__main__"
        ):
            continue
        names.append(info.name)
    return names


def public_objects():
    seen = set()
    for module_name in public_modules():
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if id(obj) in seen or inspect.ismodule(obj):
                continue
            seen.add(id(obj))
            yield f"{module_name}.{name}", obj


def needs_example(obj: object) -> bool:
    if inspect.isclass(obj):
        if issubclass(obj, SKIP_EXAMPLE_BASES) or getattr(obj, "_is_protocol", False):
            return False
        return True
    return inspect.isfunction(obj)


def test_every_public_name_has_a_docstring() -> None:
    missing = [
        name
        for name, obj in public_objects()
        if (callable(obj) or inspect.isclass(obj)) and not (inspect.getdoc(obj) or "").strip()
    ]
    assert not missing, "undocumented public names:\n" + "\n".join(missing)


def test_every_public_function_and_class_has_an_example() -> None:
    missing = [
        name
        for name, obj in public_objects()
        if needs_example(obj) and ">>>" not in (inspect.getdoc(obj) or "")
    ]
    assert not missing, "public names without a runnable example:\n" + "\n".join(missing)
