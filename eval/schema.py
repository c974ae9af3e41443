"""The version of the `eval.json` record, written by the harness and read by the gate.

distill.eval/2 (this version): every metric record has value, ci95 (null where no interval is claimed), n and
higher_is_better, plus se and method where an interval was computed; set metrics (FVD, KVD) also `dim`,
`detector`, `protocol` and `reference`, and students carry `paired_diff_vs_models` for them; per-clip metrics
carry `paired_diff_vs_teacher` in points. See docs/eval.md for every field.

distill.eval/1 is refused by the gate, by name: its FVD intervals came from independent resampling and could
exclude their own point estimate, its FVD resampled frames uniformly, and its flicker ran VBench on moving clips;
its numbers cannot be compared with /2's.
"""

SCHEMA = "distill.eval/2"
OLD_SCHEMAS = {"distill.eval/1": "re-run `distill eval` to write distill.eval/2 (FVD/KVD with paired intervals, "
                                 "fvd16 on consecutive frames, VBench flicker on static clips only)"}
