"""`python -m flux_pipeline` runs the command line."""

from .cli import main

main()
