"""What a new user gets wrong about a teacher: a truncated weights file, a prompt longer than the text encoder reads,
words the tokenizer does not know. Each is named, not hidden."""

import shutil
import warnings

import pytest
from transformers import AutoTokenizer

from distill.teachers.resolve import IncompleteWeights, check_safetensors, check_weight_files
from distill.teachers.wan import PromptWarning, WanTeacher, prompt_problems


def test_a_truncated_or_garbled_safetensors_file_is_named(untrained_wan, tmp_path):
    check_weight_files(untrained_wan)  # a whole folder passes
    broken = tmp_path / "wan"
    shutil.copytree(untrained_wan, broken)
    weights = broken / "transformer" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(IncompleteWeights, match=f"weights file {str(weights)!r} is incomplete or corrupt: it has "
                                                f"{len(data) // 2} bytes but its tensors need {len(data)}"):
        WanTeacher.from_pretrained(str(broken), device="cpu")
    weights.write_bytes(data[:4])
    with pytest.raises(IncompleteWeights, match="incomplete or corrupt"):
        check_safetensors(weights)
    weights.write_bytes(data[:8] + b"{not json" + data[17:])
    with pytest.raises(IncompleteWeights, match="header is not valid safetensors metadata"):
        check_safetensors(weights)


@pytest.fixture(scope="module")
def tokenizer(untrained_wan):
    return AutoTokenizer.from_pretrained(untrained_wan / "tokenizer")


def test_a_long_prompt_says_how_many_tokens_were_cut(tokenizer):
    long = " ".join(["a red disc moving left"] * 1000)  # 5,000 words
    (problem,) = prompt_problems(tokenizer, long, 16)
    assert "is 5001 tokens long but the text encoder reads 16: 4985 tokens were cut" in problem
    assert prompt_problems(tokenizer, "a red disc moving left slowly", 16) == []


def test_unknown_words_are_named(tokenizer):
    (problem,) = prompt_problems(tokenizer, "A red Zorblax moving quixotically", 16)
    assert "does not know the words ['Zorblax', 'quixotically']" in problem and "<unk>" in problem


def test_the_teacher_warns_once_per_prompt(untrained_wan):
    teacher = WanTeacher.from_pretrained(str(untrained_wan), device="cpu", max_sequence_length=16)
    prompts = ["a red disc moving left slowly", "a glorp " * 20]
    with pytest.warns(PromptWarning) as caught:
        teacher.encode(prompts, negative="")
    messages = sorted(str(w.message) for w in caught if w.category is PromptWarning)
    assert len(messages) == 2
    assert "41 tokens long but the text encoder reads 16: 25 tokens were cut" in messages[0]
    assert "does not know the words ['glorp']" in messages[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error", PromptWarning)
        teacher.encode(prompts, negative="")  # the same prompts again: already said
        teacher.embed(prompts)
