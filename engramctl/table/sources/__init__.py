"""Where a table's rows come from: chunk files (memory-mapped, numba gather) or a linked
checkpoint's safetensors shards, and :class:`Table`, which reads them.
"""
