"""scripts/attribute_confusion.py's tally and scripts/gpu_sweep_summary.py's log reader, on inputs whose answer is
known: renders read as prompted, a render of another colour lands in its confusion cell and in the miss counts of
its other attributes, and the losses come back as the log printed them."""

import dataclasses

import numpy as np
import pytest

from distill import toyworld
from scripts.attribute_confusion import tally
from scripts.gpu_sweep_summary import read_log


def test_a_recoloured_render_is_tallied_as_the_colour_drawn():
    prompts = [q for q in toyworld.prompt_suite("held_out").prompts if " green " in q][:3]
    asked = [toyworld.parse_caption(q) for q in prompts]
    drawn = [asked[0], asked[1], dataclasses.replace(asked[2], colour="yellow")]
    videos = np.stack([toyworld.render(a, i) for i, a in enumerate(drawn)])
    out = tally(videos, prompts, "colour")
    assert out["accuracy"] == pytest.approx(2 / 3) and out["clips"] == 3
    assert out["confusion"] == {"green": {"green": 2, "yellow": 1}}
    background = out["misses_by"]["background"]
    assert sum(m for m, _ in background.values()) == 1 and sum(n for _, n in background.values()) == 3
    assert background[asked[2].background][0] == 1 and "colour" not in out["misses_by"]


def test_the_sweep_log_reader_takes_the_printed_losses(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("stage 4/6: dit\r\n[00:00] dit step 1000/2000 loss 0.2237 lr 9.76e-04 (0.03s/step)\n"
                   "[00:01] dit step 1900/2000 loss 0.1100 lr 1.1e-04 (0.04s/step)\n"
                   "[00:02] dit step 2000/2000 loss 0.0998 lr 1.00e-04 (0.04s/step)\n")
    got = read_log(log)
    assert got["dit_steps"] == 2000 and got["loss_at_last_logged_step"] == 0.0998
    assert got["loss_by_1000"] == {"1000": 0.2237, "2000": 0.0998} and got["s_per_step"] == ["0.03", "0.04"]
    (tmp_path / "empty.log").write_text("stage 1/6\n")
    with pytest.raises(SystemExit, match="empty.log"):
        read_log(tmp_path / "empty.log")
