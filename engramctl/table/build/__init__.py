"""New tables: create (lazy or full, resumable), create on Dask, chunk writing and recording, and
replacing a table atomically under its writer lock."""
