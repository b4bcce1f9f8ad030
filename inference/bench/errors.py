"""The one exception type the CLI shows as a single line instead of a traceback."""


class BenchmarkError(RuntimeError):
    """An expected failure (server not ready, unreadable tokenizer, ...) shown without a traceback."""
