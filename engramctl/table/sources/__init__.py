"""Where a table's rows come from: one :class:`~engramctl.table.sources.base.RowSource` protocol,
implemented by chunk files (memory-mapped or fetched, numba gather) and by a linked checkpoint's
safetensors shards, and :class:`Table`, which picks one at open and delegates to it.
"""
