"""What is on disk: the lock, the output folder, the cache of earlier outputs.

Owns the lock file format (`lock`), the plan of a spec against its lock and files
(`planning`, with what models cost as recorded: `costs`), partial locks and merging (`shards`),
the cache of earlier outputs (`cache`), atomic writes and temporary files (`atomic`), the
folder's writer lock and owner (`writer_lock`), paths inside the output folder
(`output_folder`), and a delivered image downloaded into place (`fetcher`). May import
`language` and `provider`; nothing above it.
"""
