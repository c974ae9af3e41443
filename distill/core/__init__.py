"""The low layer every other one may import: config primitives and error formatting, process-group helpers,
hashing, clip I/O and video checks, shared types. It imports nothing else of ours."""
