"""A run: the plan done concurrently, each request a transaction.

Owns `run()` and its lifecycle (`runner`), the workers and deliveries of one run
(`transaction`), budgets as reservations (`budget`), the write-ahead record (`recovery`), the
lock kept saved (`keeper`), the diagnosis journal (`journal`), a run's options and results
(`options`, `results`). (Named `running`, not `run`: `flux_pipeline.run` is the public
function.) May import `store`, `language` and `provider`; not `review`, `emulator`, `cli`.
"""
