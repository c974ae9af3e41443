"""Few-step samplers for distilled students, as pure functions (model, initial noise, timesteps in; latents out).

`model(x, t)` returns the student's velocity at noise level t ∈ [0, 1] (a float64 tensor [B]); the student's
clean-clip estimate is x0 = x − t·v (the consistency function of a flow-matching model). The multistep consistency
sampler lives in the teacher layer (`teachers.samplers`), because any flow-matching model can be sampled with it
and the eval harness, which sees only that layer, must be able to run it; it is re-exported here.
"""

from teachers.samplers import consistency_timesteps, sample_consistency

__all__ = ["consistency_timesteps", "sample_consistency"]
