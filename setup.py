"""vmstate_gdb: open, inspect, edit and re-save QEMU/KVM snapshots from gdb."""

from setuptools import find_packages, setup

setup(
    name="vmstate_gdb",
    version="0.1.0",
    description="Debug and edit frozen QEMU/KVM virtual machines (migration streams, savevm snapshots)"
    " with gdb",
    packages=find_packages(include=["vmstate_gdb", "vmstate_gdb.*"]),
    # the device layouts for streams without VMDESCRIPTION (tools/harvest_descriptions.py)
    package_data={"vmstate_gdb.devices": ["descriptions/*.json.gz"]},
    python_requires=">=3.11",
    install_requires=[
        "pyelftools>=0.29,<0.34",
        "xmltodict>=0.13,<2",
        "capstone>=5.0,<6",
        "qemu.qmp>=0.0.3,<0.1",
        # the Linux OS layer's engine (vmstate linux, vmstate drgn, app-core); 0.3.0 is the first
        # with Program.set_linux_kernel_custom
        "drgn>=0.3.0,<0.4",
    ],
    extras_require={
        "test": ["pytest>=7.2,<9", "hypothesis>=6.70,<7", "ruff>=0.4"],
        # elsewhere than Debian (bootstrap.sh links python3-libvirt into the venv instead)
        "libvirt": ["libvirt-python>=9.0"],
    },
    entry_points={
        "console_scripts": ["vmstate = vmstate_gdb.cli:main"],
        # drgn -c CORE on a core of a Linux guest, with no vmlinux: kallsyms, BTF and ORC from memory
        "drgn.plugins": ["vmstate_gdb = vmstate_gdb.os.linux.plugin"],
    },
)
