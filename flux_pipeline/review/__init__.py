"""Looking at results: what changed, and the images laid out to be seen.

Owns `check` and `diff` between a spec, its lock and a git revision (`compare`, `git`), and
the gallery: its page (`gallery`, `templates/`), its grid (`grid`) and the contact sheet
(`sheet`). Reads what `store` keeps; never sends a request. May import `store`, `language` and
`provider`; not `running`, `emulator`, `cli`.
"""
