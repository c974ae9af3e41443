"""Consistency and DMD2 with an image that gives a latent frame clean (a text-and-image teacher's first frame): the
networks' outputs on that frame never reach a loss, and DMD2's samples carry the image's latent there."""

import torch

from distill.students.base import Context
from distill.students.consistency import ConsistencyConfig, ConsistencyDistillation
from distill.students.dmd import DMD2Config
from distill.students.dmd2 import DMD2

CTX = Context(teacher_shift=3.0, teacher_guidance=5.0, teacher_steps=50, depth=2, dim=8, heads=2)
SHAPE = (2, 3, 3, 2, 2)  # [B, C, F, H, W]: three latent frames, the first given by the image
IMAGE = torch.full((2, 3, 1, 2, 2), 0.5)


class Net:
    """A handle whose velocity is `base` plus `frame0` on the first latent frame; the batch's image gives frame 0."""

    def __init__(self, scale: float, frame0: float = 0.0):
        self.scale, self.frame0 = scale, frame0

    def __call__(self, x, t, guidance=None):
        v = self.scale * x
        v[:, :, :1] += self.frame0
        return v

    def image_frames(self, x):
        return torch.tensor([True] + [False] * (x.shape[2] - 1))

    def keep_image_frames(self, x):
        out = x.clone()
        out[:, :, :1] = IMAGE
        return out


def _consistency(student: Net) -> float:
    recipe = ConsistencyDistillation(ConsistencyConfig(name="consistency", target="online"), CTX)
    nets = {"student": student, "teacher": Net(0.3)}
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    return float(recipe.loss("student", nets, x0, torch.Generator().manual_seed(1))["student"])


def test_consistency_leaves_the_given_frame_out_of_its_distance():
    assert _consistency(Net(0.1)) == _consistency(Net(0.1, frame0=100.0))
    assert _consistency(Net(0.1)) != _consistency(Net(0.2))  # the generated frames are scored


def _dmd(phase: str, critic: Net, teacher: Net) -> dict:
    recipe = DMD2(DMD2Config(name="dmd2", critic_steps=1, sampler={"steps": 2}), CTX)
    nets = {"student": Net(0.1), "critic": critic, "teacher": teacher}
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    return recipe.loss(phase, nets, x0, torch.Generator().manual_seed(1))


def test_dmd2_leaves_the_given_frame_out_of_its_losses_and_keeps_the_image_in_its_samples():
    for phase in ("critic", "student"):
        plain = float(_dmd(phase, Net(0.2), Net(0.3))[phase])
        assert plain == float(_dmd(phase, Net(0.2, frame0=50.0), Net(0.3, frame0=-70.0))[phase]), phase
        assert plain != float(_dmd(phase, Net(0.25), Net(0.3))[phase]), phase
    recipe = DMD2(DMD2Config(name="dmd2", sampler={"steps": 2}), CTX)
    fake, _ = recipe.sample(Net(0.1), torch.zeros(SHAPE), torch.Generator().manual_seed(0), grad=False)
    assert torch.equal(fake[:, :, :1], IMAGE)
