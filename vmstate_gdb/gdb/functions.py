"""Convenience functions: device fields as gdb values, for expressions and batch scripts."""

from __future__ import annotations

import gdb  # type: ignore[import-not-found]

from .session import SESSION


def _path(arg: gdb.Value) -> str:
    try:
        return arg.string()
    except gdb.error:
        raise gdb.GdbError('give the field path as a string: $vmstate_dev("e1000/mac_reg[0][0]")') from None


class VmstateDev(gdb.Function):
    """$vmstate_dev("PATH"): a device field's value. Integers are 64-bit integers; buffers are
    arrays of unsigned char (a MAC prints as 6 bytes with p/x)."""

    def __init__(self):
        super().__init__("vmstate_dev")

    def invoke(self, *args):
        if len(args) != 1:
            raise gdb.GdbError('usage: $vmstate_dev("PATH")')
        field = SESSION.request("field", path=_path(args[0]))
        if "int" in field:
            type_name = "long long" if field.get("signed") else "unsigned long long"
            return gdb.Value(field["int"]).cast(gdb.lookup_type(type_name))
        data = bytes.fromhex(field["bytes"])
        if not data:
            return gdb.Value(0)
        array = gdb.lookup_type("unsigned char").array(len(data) - 1)
        return gdb.Value(data, array)


class VmstateDevStr(gdb.Function):
    """$vmstate_dev_str("PATH"): a device field as readable text (MACs as aa:bb:cc:dd:ee:ff)."""

    def __init__(self):
        super().__init__("vmstate_dev_str")

    def invoke(self, *args):
        if len(args) != 1:
            raise gdb.GdbError('usage: $vmstate_dev_str("PATH")')
        return SESSION.request("field", path=_path(args[0]))["text"]


FUNCTIONS = (VmstateDev, VmstateDevStr)
