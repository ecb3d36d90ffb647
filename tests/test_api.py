"""Each package's public API: every exported name resolves, and none is shadowed by a submodule."""

import importlib
import pkgutil

import pytest

PACKAGES = ("training", "interp", "probes", "analyses")


@pytest.mark.parametrize("name", PACKAGES)
def test_every_export_resolves(name):
    package = importlib.import_module(name)
    assert package.__all__ == sorted(package.__all__) and len(package.__all__) > 5
    for export in package.__all__:
        value = getattr(package, export)
        assert value is not None and getattr(value, "__name__", export) == export
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        package.nonsense  # noqa: B018


@pytest.mark.parametrize("name", PACKAGES)
def test_no_export_is_a_submodule_name(name):
    package = importlib.import_module(name)
    submodules = {info.name for info in pkgutil.iter_modules(package.__path__)}
    assert not set(package.__all__) & submodules
