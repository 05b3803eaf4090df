"""Editable memory: a table's commits over its read-only base.

- :mod:`.segment`: a commit's rows of one layer in one file (sorted ids, stored rows, checksum);
- :mod:`.log`: the log that makes commits visible (one atomic rename), reader pins, orphans;
- :mod:`.overlay`: reading through commits (newest commit holding a row, else the base);
- :mod:`.session`: staging rows and writing a commit.

:class:`~engramctl.table.sources.table.Table` reads and writes through these; history, revert
and compaction are :mod:`engramctl.table.commits`. See docs/format.md ("Commits").
"""
