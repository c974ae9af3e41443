"""The version of the `eval.json` record, written by the harness and read by the gate."""

SCHEMA = "distill.eval/1"
