"""Seed diversity (eval/diversity.py)."""

import numpy as np
import pytest
import torch

from distill.eval.diversity import diversity, pairwise_diversity


def test_identical_clips_give_zero():
    same = torch.ones(5, 8).mul(0.3)
    assert pairwise_diversity(same) == 0.0


def test_matches_mean_pairwise_distance_by_hand():
    feats = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 4.0]])
    # pairs: (0,1) 5, (0,2) 4, (1,2) 3
    assert pairwise_diversity(feats) == pytest.approx(4.0)


def test_more_spread_gives_more():
    base = torch.from_numpy(np.random.default_rng(0).standard_normal((6, 10)))
    assert pairwise_diversity(2.0 * base) == pytest.approx(2.0 * pairwise_diversity(base))
    assert pairwise_diversity(base) > pairwise_diversity(0.1 * base) > 0.0


def test_per_prompt_values_in_order_and_float64():
    rng = np.random.default_rng(1)
    collapsed = np.zeros((4, 3))
    spread = rng.standard_normal((4, 3))
    values = diversity([collapsed, spread, 3 * spread[:2]])  # seed counts may differ per prompt
    assert values.dtype == torch.float64 and values.shape == (3,)
    assert values[0] == 0.0 and values[1] > 0.0
    assert values[2] == pytest.approx(3 * np.linalg.norm(spread[0] - spread[1]))


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="S=1"):
        pairwise_diversity(torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        pairwise_diversity(torch.zeros(4))
    with pytest.raises(ValueError, match="prompt 1"):
        diversity([torch.zeros(2, 3), torch.zeros(1, 3)])
    with pytest.raises(ValueError, match="no prompts"):
        diversity([])
