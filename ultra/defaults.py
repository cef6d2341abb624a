"""Every default of ultra in one place: what a run, a model, a route and the command line
use when nothing says otherwise. Other modules import these names; none repeats a value.

Imports nothing but pathlib, so the quick entry point (`ultra.launch`) may use it.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "AZURE_API_VERSION", "BROKEN_AFTER", "CLAIM_BATCH", "DEFAULT_CONDITION",
    "DEFAULT_DB", "DEFAULT_OUT", "LEASE_SECONDS", "LOG_CACHE_MIB", "MAX_RETRIES", "MAX_TURNS", "REQUEST_TIMEOUT_S",
    "SUITE", "TEST_TIMEOUT_S", "TRANSCRIPTS",
]

# -- where the log and the projection live (`--db`, `--out`) --
DEFAULT_DB = Path("ultra-data/events.db")
DEFAULT_OUT = Path("ultra-data/master_database.json")

# -- a run (`[run]` in the config) --
SUITE = "workflow"
MAX_TURNS = 10  # model turns a test may take; a test key names any other value
DEFAULT_CONDITION = "default"  # the condition label of a test run with every default
TRANSCRIPTS = "all"  # whose transcripts the log stores: "all" | "failures" | "none"

# -- a model (`[models.NAME]`) --
REQUEST_TIMEOUT_S = 120.0  # one HTTP request
TEST_TIMEOUT_S = 900.0  # one whole test, retries included
MAX_RETRIES = 5  # failed requests retried per test (429 waits are bounded by time)
BROKEN_AFTER = 3  # consecutive non-retryable answers that mark a route broken

# -- a provider (`[providers.NAME]`) --
AZURE_API_VERSION = "2024-12-01-preview"  # Azure OpenAI's `api-version` query parameter

# -- collectors sharing a log --
LEASE_SECONDS = 30.0  # a route's or test's claim lives this long without a heartbeat
CLAIM_BATCH = 32  # tests a shard claims in one transaction (at most its worker count)

# -- the SQLite log's page cache per connection, MiB (it fills up to this and stays) --
LOG_CACHE_MIB = 4
