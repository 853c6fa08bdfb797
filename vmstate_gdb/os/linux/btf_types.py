"""drgn types and objects from the kernel's own BTF: the piece drgn 0.3.0 lacks.

drgn reads DWARF and, since upstream PR #625 (open as of drgn 0.3.0), not yet BTF. This module
gives a :class:`drgn.Program` a type finder over :class:`~.btf.Btf` and an object finder for
functions (BTF ``FUNC`` + kallsyms address), per-CPU variables (BTF ``VAR``), enumerators, and the
global variables BTF does not describe (:mod:`.declarations`). Everything is converted lazily,
member by member, so a lookup of ``struct task_struct`` does not convert the kernel's type graph.
When drgn ships its own BTF loader, :func:`install` is the one call to replace.
"""

from __future__ import annotations

from collections.abc import Callable

import drgn
from drgn import (
    FindObjectFlags,
    Object,
    Program,
    Qualifiers,
    TypeEnumerator,
    TypeKind,
    TypeMember,
    TypeParameter,
)

from . import btf as B
from .declarations import GLOBALS, LENGTH_FROM_CONTENTS

_LOOKUP_KINDS: dict[TypeKind, tuple[int, ...]] = {
    TypeKind.STRUCT: (B.BTF_KIND_STRUCT,),
    TypeKind.UNION: (B.BTF_KIND_UNION,),
    TypeKind.ENUM: (B.BTF_KIND_ENUM, B.BTF_KIND_ENUM64),
    TypeKind.TYPEDEF: (B.BTF_KIND_TYPEDEF,),
    TypeKind.INT: (B.BTF_KIND_INT,),
    TypeKind.BOOL: (B.BTF_KIND_INT,),
    TypeKind.FLOAT: (B.BTF_KIND_FLOAT,),
}
_QUALIFIERS = {
    B.BTF_KIND_CONST: Qualifiers.CONST,
    B.BTF_KIND_VOLATILE: Qualifiers.VOLATILE,
    B.BTF_KIND_RESTRICT: Qualifiers.RESTRICT,
}

SymbolAddress = Callable[[str], int | None]


class BtfTypes:
    """Converts BTF type ids to drgn types (memoized) and answers drgn's type and object lookups."""

    def __init__(self, prog: Program, btf: B.Btf, symbol_address: SymbolAddress):
        self.prog = prog
        self.btf = btf
        self.symbol_address = symbol_address
        self._types: dict[int, drgn.Type] = {}
        self._enumerators: dict[str, tuple[int, int]] | None = None
        self._functions: dict[str, int] | None = None
        self._variables: dict[str, int] | None = None

    # -- conversion -----------------------------------------------------------------------------

    def type(self, type_id: int) -> drgn.Type:
        t = self._types.get(type_id)
        if t is None:
            t = self._types[type_id] = self._convert(type_id)
        return t

    def _lazy(self, type_id: int, bit_size: int = 0):
        if bit_size:
            return lambda: Object(self.prog, self.type(type_id), bit_field_size=bit_size)
        return lambda: self.type(type_id)

    def _convert(self, type_id: int) -> drgn.Type:
        prog = self.prog
        if type_id == 0:
            return prog.void_type()
        t = self.btf.type(self.btf.resolve_fwd(type_id))
        kind = t.kind
        name = t.name or None
        if kind == B.BTF_KIND_INT:
            if t.encoding & B.BTF_INT_BOOL:
                return prog.bool_type(t.name or "_Bool", t.size)
            return prog.int_type(t.name or f"int{8 * t.size}", t.size, bool(t.encoding & B.BTF_INT_SIGNED))
        if kind == B.BTF_KIND_FLOAT:
            return prog.float_type(t.name, t.size)
        if kind == B.BTF_KIND_PTR:
            return prog.pointer_type(self.type(t.type), 8)
        if kind == B.BTF_KIND_ARRAY:
            return prog.array_type(self.type(t.type), t.nelems if t.nelems else None)
        if kind in (B.BTF_KIND_STRUCT, B.BTF_KIND_UNION):
            members = [self._member(t, m) for m in t.members]
            make = prog.struct_type if kind == B.BTF_KIND_STRUCT else prog.union_type
            return make(name, t.size, members)
        if kind == B.BTF_KIND_FWD:  # no definition anywhere: an incomplete type
            return (prog.union_type if t.kind_flag else prog.struct_type)(name)
        if kind in (B.BTF_KIND_ENUM, B.BTF_KIND_ENUM64):
            compatible = prog.int_type(_int_name(t.size, t.kind_flag), t.size or 4, t.kind_flag)
            return prog.enum_type(name, compatible, [TypeEnumerator(n, v) for n, v in t.enumerators])
        if kind == B.BTF_KIND_TYPEDEF:
            return prog.typedef_type(t.name, self.type(t.type))
        if kind in _QUALIFIERS:
            target = self.type(t.type)
            return target.qualified(target.qualifiers | _QUALIFIERS[kind])
        if kind == B.BTF_KIND_TYPE_TAG:
            return self.type(t.type)
        if kind == B.BTF_KIND_FUNC_PROTO:
            variadic = bool(t.params) and t.params[-1][1] == 0
            params = t.params[:-1] if variadic else t.params
            return prog.function_type(
                self.type(t.type), [TypeParameter(self._lazy(p), n or None) for n, p in params], variadic
            )
        if kind in (B.BTF_KIND_FUNC, B.BTF_KIND_VAR):
            return self.type(t.type)
        raise LookupError(f"BTF type {type_id} ({t.kind_name}) is not a C type")

    def _member(self, parent: B.BtfType, m: B.Member) -> TypeMember:
        bit_size, bit_offset = m.bit_size, m.bit_offset
        if not parent.kind_flag and self.btf.kind(m.type) == B.BTF_KIND_INT:
            # before kind_flag, a bit field was an INT narrower than its storage
            it = self.btf.type(m.type)
            if it.int_bits != 8 * it.size:
                bit_size, bit_offset = it.int_bits, bit_offset + it.int_offset
        return TypeMember(self._lazy(m.type, bit_size), m.name or None, bit_offset)

    # -- drgn finders ---------------------------------------------------------------------------

    def find_type(self, prog: Program, kinds, name: str, filename: str | None) -> drgn.Type | None:
        for kind in kinds:
            for btf_kind in _LOOKUP_KINDS.get(kind, ()):
                ids = self.btf.names().get((btf_kind, name))
                if not ids:
                    continue
                if btf_kind == B.BTF_KIND_INT:
                    is_bool = bool(self.btf.type(ids[0]).encoding & B.BTF_INT_BOOL)
                    if is_bool != (kind == TypeKind.BOOL):
                        continue
                return self.type(ids[0])
        return None

    def find_object(self, prog: Program, name: str, flags: FindObjectFlags, filename: str | None):
        if flags & FindObjectFlags.VARIABLE:
            var = self.variables().get(name)
            declared = GLOBALS.get(name)
            if var is not None or declared is not None:
                address = self.symbol_address(name)
                if address is not None:
                    if var is not None:
                        return Object(prog, self.type(var), address=address)
                    typ = prog.type(declared)
                    counter = LENGTH_FROM_CONTENTS.get(name)
                    if counter is not None:
                        length = counter(
                            prog.read_word, lambda a: prog.read_c_string(a, max_size=64), address
                        )
                        typ = prog.array_type(typ.type, length)
                    return Object(prog, typ, address=address)
        if flags & FindObjectFlags.FUNCTION:
            func = self.functions().get(name)
            if func is not None:
                address = self.symbol_address(name)
                if address is not None:
                    return Object(prog, self.type(func), address=address)
        if flags & FindObjectFlags.CONSTANT:
            hit = self.enumerators().get(name)
            if hit is not None:
                return Object(prog, self.type(hit[0]), hit[1])
        return None

    # -- name indexes ---------------------------------------------------------------------------

    def enumerators(self) -> dict[str, tuple[int, int]]:
        """Every enumerator, anonymous enums' included (most of the kernel's named constants)."""
        if self._enumerators is None:
            found: dict[str, tuple[int, int]] = {}
            for type_id in self.btf.ids_of_kind(B.BTF_KIND_ENUM, B.BTF_KIND_ENUM64):
                for n, v in self.btf.type(type_id).enumerators:
                    found.setdefault(n, (type_id, v))
            self._enumerators = found
        return self._enumerators

    def functions(self) -> dict[str, int]:
        if self._functions is None:
            self._functions = {n: ids[0] for (k, n), ids in self.btf.names().items() if k == B.BTF_KIND_FUNC}
        return self._functions

    def variables(self) -> dict[str, int]:
        if self._variables is None:
            self._variables = {n: ids[0] for (k, n), ids in self.btf.names().items() if k == B.BTF_KIND_VAR}
        return self._variables


def _int_name(size: int, signed: bool) -> str:
    base = {1: "char", 2: "short", 4: "int", 8: "long"}.get(size, "int")
    return base if signed else f"unsigned {base}"


def install(prog: Program, btf: B.Btf, symbol_address: SymbolAddress, enable_index: int = 0) -> BtfTypes:
    """Register the BTF type and object finders (first in line by default; -1 puts them after
    DWARF's, for a Program that may also have a vmlinux); returns the converter."""
    types = BtfTypes(prog, btf, symbol_address)
    prog.register_type_finder("vmstate-btf", types.find_type, enable_index=enable_index)
    prog.register_object_finder("vmstate-btf", types.find_object, enable_index=enable_index)
    return types
