"""comparison.md says how many intervals the eval holds and prints family-wise adjusted model-vs-model rows."""

from distill import compare
from tests.eval.test_bias_correction import _result_with_pairs


def test_comparison_says_how_many_intervals_and_prints_adjusted_ones():
    comp = compare.comparison(_result_with_pairs(), [], "x.yaml")
    assert [p["family_size"] for p in comp["pairs"]] == [3, 3, 3] and comp["intervals_in_eval"] == 12
    text = compare.comparison_markdown(comp)
    assert "Bonferroni 95% of 3" in text and "holds 12 intervals; this table prints 3" in text
