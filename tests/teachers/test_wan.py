import pytest
import torch

from distill.teachers.schedule import flow_sigmas, shift_sigmas
from distill.teachers.wan import WanTeacher, seed_list

PROMPT = "a blue plank moving right quickly on a white background"


@pytest.fixture(scope="module")
def teacher(untrained_wan):
    return WanTeacher.from_pretrained(str(untrained_wan), device="cpu", max_sequence_length=32)


@pytest.mark.parametrize("frames,hint", [(16, "4k\\+1.*13 or 17"), (0, "4k\\+1")])
def test_frames_not_4k_plus_1_are_refused(teacher, frames, hint):
    with pytest.raises(ValueError, match=f"frames={frames} is not {hint}"):
        teacher.latent_shape(frames, 64, 64)


@pytest.mark.parametrize("height,width,name", [(60, 64, "height=60"), (64, 72, "width=72")])
def test_sizes_not_divisible_are_refused(teacher, height, width, name):
    with pytest.raises(ValueError, match=f"{name} is not divisible by 16.*48 or 64|{name} is not divisible by 16"):
        teacher.latent_shape(17, height, width)


def test_latent_shape(teacher):
    # the tiny teacher's VAE: 8 latent channels, 4x temporal and 4x spatial compression
    assert teacher.latent_shape(17, 64, 96) == (8, 5, 16, 24)


def test_empty_prompts_are_refused(teacher):
    with pytest.raises(ValueError, match="empty prompt list"):
        teacher.encode([])
    with pytest.raises(ValueError, match=r"positions \[1\]"):
        teacher.encode(["a red disc", "  "])


def test_cfg_runs_both_halves_in_one_forward_and_equals_the_two_pass_formula(teacher):
    cond = teacher.encode([PROMPT, "a red disc"], negative="")
    x = teacher.noise(2, 17, 64, 64, seed=0)
    t = torch.tensor([0.7, 0.3], dtype=torch.float64)
    batches = []
    hook = teacher.dit.register_forward_hook(lambda m, args, kw, out: batches.append(kw["hidden_states"].shape[0]),
                                                     with_kwargs=True)
    try:
        v = teacher.velocity(x, t, cond, guidance=4.0)
    finally:
        hook.remove()
    assert batches == [4]  # one forward, conditional and unconditional halves together
    v_c = teacher.velocity(x, t, cond, guidance=1.0)
    v_u = teacher.velocity(x, t, type(cond)(cond.negative_embeds, None), guidance=1.0)
    torch.testing.assert_close(v, v_u + 4.0 * (v_c - v_u), atol=1e-4, rtol=1e-4)


def test_each_clip_depends_only_on_its_own_seed(teacher):
    both = teacher.sample([PROMPT, "a red disc moving up slowly on a gray background"], steps=3, guidance=3.0,
                          seed=[5, 9], sampler="euler", frames=5, height=32, width=32)
    alone = teacher.sample(["a red disc moving up slowly on a gray background"], steps=3, guidance=3.0, seed=9,
                           sampler="euler", frames=5, height=32, width=32)
    torch.testing.assert_close(both[1:], alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(both[0], both[1])
    assert seed_list(7, 3) == [7, 8, 9]
    with pytest.raises(ValueError, match="2 seeds for 3 prompts"):
        seed_list([1, 2], 3)


def test_decode_and_encode_video_shapes(teacher):
    latents = teacher.noise(1, 5, 32, 32, seed=0)
    video = teacher.decode(latents)
    assert video.shape == (1, 5, 32, 32, 3) and video.dtype == torch.uint8
    assert teacher.encode_video(video).shape == latents.shape


def test_flow_sigmas_and_shift():
    s = flow_sigmas(50, 3.0)
    assert len(s) == 51 and s[0] == 1.0 and s[-1] == 0.0 and bool((s[1:] < s[:-1]).all())
    u = torch.linspace(0, 1, 11)
    torch.testing.assert_close(shift_sigmas(u, 1.0), u)
    assert bool((shift_sigmas(u[1:-1], 3.0) > u[1:-1]).all())  # a shift > 1 spends more steps at high noise
    assert len(flow_sigmas(4, 3.0)) == 5
