"""The table format itself: metadata and manifest, chunk codec, row dtypes and fp8,
deterministic init values, storage (local, fsspec), the writer lock and the checks run at open.
"""
