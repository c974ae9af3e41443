"""scripts/pair_table.py: two models of one eval, paired per clip (prompt-clustered interval) and through the eval's
own FVD/KVD model-vs-model rows."""

import numpy as np
import pytest

from scripts.pair_table import markdown, paired_rows


def test_per_clip_differences_are_paired_and_clustered_by_prompt():
    rng = np.random.default_rng(0)
    prompt_effect = np.repeat(rng.normal(0, 5, 6), 2)  # 6 prompts x 2 seeds: a shared effect cancels in pairs
    b = 50 + prompt_effect + rng.normal(0, 0.1, 12)
    a = b + 1.0 + rng.normal(0, 0.1, 12)
    fvd_row = {"value": -2.0, "ci95": [-3.0, -1.0], "value_a": 1.0, "value_b": 3.0}
    result = {"models": {"A": {"metrics": {"clip": {"higher_is_better": True},
                                           "fvd": {"higher_is_better": False, "paired_diff_vs_models": {"B": fvd_row}}}},
                         "B": {"metrics": {}}},
              "per_clip": {"prompt_of_clip": np.repeat(np.arange(6), 2).tolist(),
                           "models": {"A": {"clip": {"values": a.tolist()}},
                                      "B": {"clip": {"values": [None, *b[1:].tolist()]}}}}}
    clip, fvd = paired_rows(result, "A", "B")
    assert clip["n"] == 11 and clip["value"] == pytest.approx(np.mean(a[1:] - b[1:]))
    assert 0 < clip["ci95"][0] < clip["value"] < clip["ci95"][1] < 2  # paired: the prompt effect is gone
    assert fvd["metric"] == "fvd" and fvd["value"] == -2.0
    assert "| clip |" in markdown([clip, fvd], "A", "B") and "yes" in markdown([clip], "A", "B")
    with pytest.raises(SystemExit, match="no model 'C'"):
        paired_rows(result, "A", "C")
