"""ultra: run LLM benchmark collections at high concurrency; every result is an immutable event."""

__version__ = "0.1.0"
