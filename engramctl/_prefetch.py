"""A software prefetch for numba kernels that probe big tables at random.

Hash-table probes and per-row counters miss the cache on almost every access; issuing the load of
the slot needed ``AHEAD`` iterations later (LLVM's ``llvm.prefetch``) keeps several misses in flight
and makes those loops 2-3x faster. :func:`prefetch` is a hint only: it never faults and changes no
result.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from . import _numba  # noqa: F401  (configures numba's cache directory first)

AHEAD = 16  # iterations between a prefetch and the use of its slot


def _intrinsic_name() -> str:
    """``llvm.prefetch`` mangled for the pointer type: ``p0`` from LLVM 17 (opaque pointers,
    llvmlite >= 0.45), ``p0i8`` before (llvmlite 0.44, LLVM 15, typed pointers)."""
    from llvmlite import binding

    return "llvm.prefetch.p0" if binding.llvm_version_info >= (17,) else "llvm.prefetch.p0i8"


PREFETCH_INTRINSIC = _intrinsic_name()


@intrinsic
def prefetch(typingctx, array, index):
    """Prefetch ``array[index]`` (a 1-D element or the start of a 2-D row) for writing."""
    if not isinstance(array, types.Array) or array.ndim not in (1, 2):
        return None
    signature = types.void(array, index)

    def codegen(context, builder, sig, args):
        array_type, index_type = sig.args
        ary = context.make_array(array_type)(context, builder, args[0])
        at = context.cast(builder, args[1], index_type, types.intp)
        indices = [at] + [context.get_constant(types.intp, 0)] * (array_type.ndim - 1)
        pointer = cgutils.get_item_pointer(
            context, builder, array_type, ary, indices, wraparound=False
        )
        byte_pointer = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        function = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32]),
            PREFETCH_INTRINSIC,
        )
        # (address, write=1, locality=3: keep in all cache levels, data cache=1)
        builder.call(
            function,
            [builder.bitcast(pointer, byte_pointer), i32(1), i32(3), i32(1)],
        )
        return context.get_dummy_value()

    return signature, codegen
