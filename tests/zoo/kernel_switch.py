"""Switch kernel-registry entries off for one test (zoo.kernels.registry.disabled, through monkeypatch)."""

from zoo.kernels import registry


def kernels_off(monkeypatch, *names: str) -> None:
    """Disable `names` ("op:name", an entry name, or a compiled module: "attention", "dropout",
    "elementwise") until the test ends."""
    monkeypatch.setattr(registry, "DISABLED", registry.DISABLED | set(names))
