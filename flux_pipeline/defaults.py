"""Defaults shared by the CLI and the library, kept in a module that imports nothing heavy."""

DEFAULT_BASE_URL = "https://api.aimlapi.com"
API_KEY_ENV = "AIMLAPI_KEY"
MAX_SPEC_REQUESTS = 100_000  # a spec that makes more is refused before it is expanded
