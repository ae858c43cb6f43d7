"""The dataset command's choices and defaults, importable without pyarrow (the CLI lists them)."""

ENGINES = ("local", "ray")
INPUT_FORMATS = ("parquet", "csv", "json")
BAD_ROW_POLICIES = ("fail", "skip")
DEFAULT_BATCH_ROWS = 10_000  # rows per output file and per batch: what a resumed run redoes at most
DEFAULT_CACHE_MB = 128  # embeddings of recent texts kept across batches
