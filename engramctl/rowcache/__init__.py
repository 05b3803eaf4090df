"""The row cache, torch-free: the pager's configuration and cache policy (:mod:`.policy`) and its
slot map (:mod:`.slotmap`), shared by the pager (:mod:`engramctl.model.serve.paging`, which adds
the device copies) and ``cache-plan`` (whose ``pager`` curve models the same policy).
"""
