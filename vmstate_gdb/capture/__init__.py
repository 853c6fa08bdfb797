"""Capture: take migration-stream snapshots of running QEMU VMs, one or many at one instant.

Layers, each its own module, data flowing one way:

* :mod:`.monitor`  a connection to one VM's monitor: QMP over a unix or TCP socket (QEMU's own
  ``qemu.qmp``), or libvirt's QMP pass-through (:mod:`.libvirt`)
* :mod:`.facts`    what the VM says about itself (version, machine, name, command line) -> ``.meta.json``
* :mod:`.session`  stop all, migrate all in parallel, resume all; skew, sizes, failures
* :mod:`.triggers` wait for a guest panic or a serial line, then capture
* :mod:`.cli`      ``vmstate capture`` and ``vmstate watch``
"""

__all__ = ["Monitor", "QmpMonitor", "open_qmp", "CaptureReport", "VmResult", "capture_vms"]

_WHERE = {"Monitor": "monitor", "QmpMonitor": "monitor", "open_qmp": "monitor"}


def __getattr__(name: str):
    """Loaded on first use, so that `vmstate --help` does not pay for asyncio and QMP."""
    if name in __all__:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_WHERE.get(name, 'session')}"), name)
    raise AttributeError(name)
