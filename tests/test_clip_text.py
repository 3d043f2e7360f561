"""fsclip.clip.text: short tokens, batched encoding, zero-shot classifiers, prompt embeddings."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fsclip.clip.compat import import_clip
from fsclip.clip.text import (
    encode_text, encode_text_embeddings, text_classifier, tokenize, tokenize_short,
)
from fsclip.clip.tiny import build_tiny_clip

clip = import_clip()
PROMPTS = [
    "a photo of a dog.",
    "a photo of a very large striped tabby cat sitting on a red woollen mat, a type of pet.",
    "x",
    "itap of a golden_retriever.",
]
TIGHT = dict(rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def model():
    return build_tiny_clip("ViT", seed=5, text_layers=2)


def test_tokenize_short_cuts_at_longest_eot():
    full = tokenize(PROMPTS)
    assert full.shape == (4, 77)
    short = tokenize_short(PROMPTS)
    eot = full.argmax(dim=-1)
    assert short.shape == (4, int(eot.max()) + 1) and short.shape[1] < 77
    assert torch.equal(short, full[:, : short.shape[1]])
    assert (short.argmax(dim=-1) == eot).all()
    assert tokenize("a dog").shape == (1, 77)
    assert tokenize_short("a dog").shape == (1, 4)  # SOT a dog EOT


@torch.no_grad()
def test_short_tokens_encode_exactly_like_77(model):
    full = model.encode_text(tokenize(PROMPTS))
    short = model.encode_text(tokenize_short(PROMPTS))
    torch.testing.assert_close(short, full, **TIGHT)
    # each prompt alone (its own, shorter length) too
    for i, prompt in enumerate(PROMPTS):
        torch.testing.assert_close(model.encode_text(tokenize_short(prompt))[0], full[i], **TIGHT)


def test_encode_text_batches(model):
    with torch.no_grad():
        expected = model.encode_text(tokenize(PROMPTS))
    for batch_size in (1, 3, 256):
        got = encode_text(model, PROMPTS, batch_size=batch_size)
        assert got.shape == (4, 64) and not got.requires_grad
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert encode_text(model, []).shape == (0, 64)
    with pytest.raises(ValueError, match="batch_size"):
        encode_text(model, PROMPTS, batch_size=0)


def test_text_classifier_single_template(model):
    names = ["dog", "golden_retriever", "sea lion"]
    weights = text_classifier(model, names, "a photo of a {}.")
    expected = F.normalize(encode_text(model, [f"a photo of a {n}." for n in names]), dim=-1)
    torch.testing.assert_close(weights, expected, **TIGHT)  # underscores kept as given


def test_text_classifier_ensemble(model):
    names = ["dog", "cat"]
    templates = ["itap of a {}.", "a bad photo of the {}.", "art of the {}."]
    weights = text_classifier(model, names, templates)
    assert weights.shape == (2, 64)
    torch.testing.assert_close(weights.norm(dim=-1), torch.ones(2), **TIGHT)
    for k, name in enumerate(names):
        per_template = F.normalize(encode_text(model, [t.format(name) for t in templates]), dim=-1)
        torch.testing.assert_close(weights[k], F.normalize(per_template.mean(0), dim=0), **TIGHT)
    # the ensemble is not just the first template
    assert not torch.allclose(weights, text_classifier(model, names, templates[:1]), atol=1e-3)
    with pytest.raises(ValueError, match="template"):
        text_classifier(model, names, [])


@pytest.mark.parametrize("arch", ["RN", "ViT"])
def test_zero_shot_logits_match_clip(arch):
    model = build_tiny_clip(arch, seed=6)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100.0))  # released CLIPs have logit_scale.exp() == 100
        images = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        names = ["dog", "cat", "sea_lion"]
        weights = text_classifier(model, names, "a photo of a {}.")
        ours = 100 * F.normalize(model.encode_image(images), dim=-1) @ weights.t()
        theirs, _ = model(images, clip.tokenize([f"a photo of a {n}." for n in names]))
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_encode_text_embeddings(model):
    tokens = tokenize_short(PROMPTS)
    embeddings = model.token_embedding(tokens).detach().requires_grad_(True)
    out = encode_text_embeddings(model, embeddings, tokens)
    with torch.no_grad():
        torch.testing.assert_close(out, model.encode_text(tokenize(PROMPTS)), **TIGHT)
    out.sum().backward()
    assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0
    # positions after EOT do not influence the feature (causal mask)
    assert embeddings.grad[2, 3:].abs().sum() == 0  # "x": SOT x EOT
    with pytest.raises(ValueError, match="agree"):
        encode_text_embeddings(model, embeddings[:, :-1], tokens)
