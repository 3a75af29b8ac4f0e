"""Tests for torchprox.llm.evaluate: perplexity against a manual cross-entropy."""

import math

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from torchprox.llm.evaluate import perplexity, perplexity_texts  # noqa: E402

from .tiny import tiny_llama  # noqa: E402


def manual_ppl(model, blocks):
    nll, count = 0.0, 0
    with torch.no_grad():
        for row in blocks:
            logits = model(input_ids=row[None]).logits[0]
            nll += F.cross_entropy(logits[:-1].double(), row[1:], reduction="sum").item()
            count += row.numel() - 1
    return math.exp(nll / count)


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


def test_perplexity_matches_manual(model):
    blocks = torch.randint(0, 64, (5, 16), generator=torch.Generator().manual_seed(0))
    expected = manual_ppl(model, blocks)
    for bs in (1, 2, 5, 8):
        assert perplexity(model, blocks, batch_size=bs, disable=True) == pytest.approx(expected, rel=1e-5)
    # an untrained model over 64 tokens is close to uniform
    assert 40 < expected < 100


def test_perplexity_weights_tokens_not_blocks(model):
    # equal-length blocks: exp of the mean NLL over all predicted tokens == geometric mean of per-block ppl
    blocks = torch.randint(0, 64, (3, 12), generator=torch.Generator().manual_seed(1))
    per_block = [perplexity(model, b, disable=True) for b in blocks]
    geo = math.exp(sum(math.log(p) for p in per_block) / 3)
    assert perplexity(model, blocks, disable=True) == pytest.approx(geo, rel=1e-6)


def test_perplexity_of_a_perfect_predictor():
    class Oracle(torch.nn.Module):
        """Predicts token t+1 = (t + 1) % V with near certainty."""

        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(()))

        def forward(self, input_ids, use_cache=None):
            assert use_cache is False
            assert torch.is_inference_mode_enabled()
            return (F.one_hot((input_ids + 1) % 8, 8).float() * 50.0,)

    blocks = torch.arange(32).remainder(8).view(2, 16)
    assert perplexity(Oracle(), blocks, disable=True) == pytest.approx(1.0, abs=1e-6)


def test_perplexity_restores_training_mode(model):
    model.train()
    blocks = torch.randint(0, 64, (2, 8))
    perplexity(model, blocks, disable=True)
    assert model.training
    model.eval()
    perplexity(model, blocks, disable=True)
    assert not model.training


def test_perplexity_progress_bar_and_bf16(model, capsys):
    blocks = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(2))
    fp32 = perplexity(model, blocks)  # tqdm on (goes to stderr)
    bf16 = tiny_llama().to(torch.bfloat16)
    assert perplexity(bf16, blocks, disable=True) == pytest.approx(fp32, rel=5e-2)


def test_perplexity_errors(model):
    with pytest.raises(ValueError, match="at least 2"):
        perplexity(model, torch.zeros(3, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        perplexity(model, torch.zeros(0, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        perplexity(model, torch.zeros(2, 8))
    with pytest.raises(ValueError, match="batch_size"):
        perplexity(model, torch.zeros(2, 8, dtype=torch.long), batch_size=0)


def test_perplexity_texts(model):
    class CharTokenizer:
        def __call__(self, text, add_special_tokens=True, **kwargs):
            return {"input_ids": [ord(c) % 64 for c in text]}

    texts = ["hello world, this is a test", "of the perplexity over texts"]
    stream = torch.tensor([ord(c) % 64 for c in "\n\n".join(texts)])
    blocks = stream[: (stream.numel() // 8) * 8].view(-1, 8)
    assert perplexity_texts(model, CharTokenizer(), texts, seqlen=8, max_tokens=None, disable=True) == (
        pytest.approx(manual_ppl(model, blocks), rel=1e-5)
    )
    assert perplexity_texts(model, CharTokenizer(), texts, seqlen=8, max_tokens=16, disable=True) == (
        pytest.approx(manual_ppl(model, blocks[:2]), rel=1e-5)
    )
