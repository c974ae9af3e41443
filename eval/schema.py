"""The version of the `eval.json` record, written by the harness and read by the gate.

distill.eval/2 (this version): every metric record has value, ci95 (null where no interval is claimed), n and
higher_is_better, plus se and method where an interval was computed; set metrics (FVD, KVD) also `dim`,
`detector`, `protocol` and `reference`, and students carry `paired_diff_vs_models` for them; per-clip metrics
carry `paired_diff_vs_teacher` in points. See docs/eval.md for every field.

Additions within /2 (issue 23; additive, so a reader of /2 keeps working and needs no new version): every interval
record carries `target`, what its ci95 covers: "expected value at this n" (a set metric under its standard name),
"population distance" (a set metric's `bias_corrected` sub-record: jackknife bias-corrected, with `bias` and
`bias_correction`), "difference of population distances" (every `paired_diff_vs_models` row and a set metric's
`paired_diff_vs_teacher`, now bias-corrected, with the plain difference under `at_n`), or "population mean over
prompts like these and fresh seeds" (per-clip means and their paired differences). A set record may carry
`bias_warning` (the plain value's estimated bias is at least half its standard error). A /2 record without
`target` predates these additions: its intervals all target the expected value at this n, its model-vs-model rows
are plain (uncorrected) differences.

Additions within /2 (issue 26; additive likewise): per-clip `subject_consistency[<clip backend>]` on every suite, and,
on a suite that carries first images (image-to-video), per-clip `first_frame.psnr` and
`first_frame.feature_dist[<clip backend>]` and the suite record's `first_images` ({source, n, sha256 of the images'
pixels}); a text-to-video suite has neither the first-frame records nor the `first_images` key.

distill.eval/1 is refused by the gate, by name: its FVD intervals came from independent resampling and could
exclude their own point estimate, its FVD resampled frames uniformly, and its flicker ran VBench on moving clips;
its numbers cannot be compared with /2's.
"""

SCHEMA = "distill.eval/2"
OLD_SCHEMAS = {"distill.eval/1": "re-run `distill eval` to write distill.eval/2 (FVD/KVD with paired intervals, "
                                 "fvd16 on consecutive frames, VBench flicker on static clips only)"}
