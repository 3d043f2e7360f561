"""fsclip.prompting: the text prompt learner and the prefix-shared text encoder."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fsclip.clip.text import encode_text, encode_text_embeddings, text_classifier, tokenize
from fsclip.clip.tiny import build_tiny_clip
from fsclip.errors import ConfigError
from fsclip.prompting import TextPromptLearner, encode_shared_prefix

NAMES = ["red circle", "blue dotted square", "cat", "golden retriever", "x"]
TIGHT = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def model():
    """Two heads, three layers: enough to tell attention paths apart."""
    return build_tiny_clip("ViT", seed=3, text_width=128, text_layers=3).requires_grad_(False)


def close(a, b, **tol):
    """assert_close relative to the magnitude of b (gradients can be large)."""
    scale = b.abs().max().clamp_min(1.0)
    torch.testing.assert_close(a / scale, b / scale, **(tol or TIGHT))


# ------------------------------------------------------------------------ prompts
def test_ctx_init_gives_the_template_exactly(model):
    """Context initialised from "a photo of a": the prompts are that template's, so the text
    features are zero-shot CLIP's, bit for bit on the plain path."""
    learner = TextPromptLearner(model, NAMES, n_ctx=16, ctx_init="a photo of a")
    assert learner.n_ctx == 4 and learner.ctx.shape == (4, 128) and not learner.csc
    zero_shot = text_classifier(model, NAMES, ["a photo of a {}."])
    with torch.no_grad():
        learner.share_prefix = False
        plain = learner.text_features(model)
        learner.share_prefix = True
        shared = learner.text_features(model)
    # the encoder's input and output are the template's: the zero-shot classifier's rows
    assert torch.equal(plain, encode_text(model, [f"a photo of a {n}." for n in NAMES]))
    torch.testing.assert_close(F.normalize(plain, dim=-1), zero_shot, rtol=0, atol=1e-7)
    close(F.normalize(shared, dim=-1), zero_shot)


@pytest.mark.parametrize("position,text", [("front", "{} a photo of a."), ("middle", "a photo {} of a.")])
def test_class_token_position_places_the_name(model, position, text):
    """Front / middle (context split at M // 2) give the prompts CoOp builds: with the context
    initialised from words, the features are those of the corresponding sentence."""
    learner = TextPromptLearner(model, NAMES, ctx_init="a photo of a", position=position)
    assert not learner.prefix_shared
    with torch.no_grad():
        got = learner.text_features(model)
    assert torch.equal(got, encode_text(model, [text.format(n) for n in NAMES]))
    # the EOT token sits where the sentence puts it
    assert torch.equal(learner.tokens.argmax(-1), tokenize([text.format(n) for n in NAMES]).argmax(-1))


def test_short_context_and_random_init(model):
    torch.manual_seed(0)
    learner = TextPromptLearner(model, NAMES, n_ctx=8)
    longest = int(tokenize([f"{'X ' * 8}{n}." for n in NAMES]).argmax(-1).max()) + 1
    assert learner.tokens.shape == (len(NAMES), longest) and longest < 77
    assert learner().shape == (len(NAMES), longest, 128)
    assert 0.015 < learner.ctx.std().item() < 0.025  # N(0, 0.02^2)
    # the prompt rows are [SOT, ctx, name tokens, ".", EOT, pad] with the learned ctx in place
    prompts = learner()
    assert torch.equal(prompts[:, 1:9], learner.ctx.detach().expand(len(NAMES), -1, -1))
    with torch.no_grad():
        fixed = model.token_embedding(learner.tokens).float()
    assert torch.equal(prompts[:, 9:], fixed[:, 9:]) and torch.equal(prompts[:, 0], fixed[:, 0])


def test_class_specific_context(model):
    learner = TextPromptLearner(model, NAMES, n_ctx=3, csc=True)
    assert learner.ctx.shape == (len(NAMES), 3, 128) and not learner.prefix_shared
    feats = learner.text_features(model)
    grad, = torch.autograd.grad(feats[2].sum(), learner.ctx)
    assert grad[2].abs().sum() > 0
    assert grad[[0, 1, 3, 4]].abs().sum() == 0  # class k's feature depends on its own context only
    # with CTX_INIT the context is generic whatever CSC says (CoOp)
    assert TextPromptLearner(model, NAMES, ctx_init="a photo of a", csc=True).ctx.dim() == 2


def test_bad_position_is_a_config_error(model):
    with pytest.raises(ConfigError, match="class token position"):
        TextPromptLearner(model, NAMES, position="start")


# ------------------------------------------------------------------ prefix sharing
def grads_both_ways(model, learner, ctx, weights):
    out = {}
    for shared in (True, False):
        learner.share_prefix = shared
        c = ctx.detach().clone().requires_grad_(True)
        feats = learner.text_features(model, c)
        loss = (feats * weights).sum() + feats.pow(2).sum()
        grad, = torch.autograd.grad(loss, c)
        out[shared] = (feats.detach(), grad)
    learner.share_prefix = True
    return out


def test_prefix_shared_equals_plain_in_values_and_gradients(model):
    torch.manual_seed(1)
    learner = TextPromptLearner(model, NAMES, n_ctx=6)
    assert learner.prefix_shared
    weights = torch.randn(len(NAMES), 64)
    out = grads_both_ways(model, learner, learner.ctx, weights)
    close(out[True][0], out[False][0])
    close(out[True][1], out[False][1])
    assert out[True][1].abs().sum() > 0


def test_prefix_shared_per_image_contexts(model):
    """CoCoOp: one context per image ([B, M, width]) -> [B, K, D], the prefix run once per image."""
    torch.manual_seed(2)
    learner = TextPromptLearner(model, NAMES, ctx_init="a photo of a")
    ctx = learner.ctx.detach() + 0.05 * torch.randn(3, 4, 128)
    weights = torch.randn(3, len(NAMES), 64)
    out = grads_both_ways(model, learner, ctx, weights)
    assert out[True][0].shape == (3, len(NAMES), 64)
    close(out[True][0], out[False][0])
    close(out[True][1], out[False][1])
    # image b's features are the unbatched features of its own context
    learner.share_prefix = False
    with torch.no_grad():
        single = learner.text_features(model, ctx[1])
    close(out[True][0][1], single)


def test_encode_shared_prefix_equals_whole_sequences(model):
    """The function alone, on arbitrary embeddings (not only prompts), including a suffix whose
    EOT is not the last position."""
    torch.manual_seed(3)
    prefix = torch.randn(2, 5, 128, requires_grad=True)
    suffix = torch.randn(4, 6, 128, requires_grad=True)
    eot = torch.tensor([5, 2, 3, 0])
    got = encode_shared_prefix(model, prefix, suffix, eot)
    whole = torch.cat([prefix[:, None].expand(-1, 4, -1, -1), suffix[None].expand(2, -1, -1, -1)], 2)
    tokens = torch.zeros(8, 11, dtype=torch.long)
    tokens[torch.arange(8), (eot + 5).repeat(2)] = 49407
    want = encode_text_embeddings(model, whole.reshape(8, 11, 128), tokens).reshape(2, 4, -1)
    close(got, want)
    g1 = torch.autograd.grad(got.sum(), [prefix, suffix])
    g2 = torch.autograd.grad(want.sum(), [prefix, suffix])
    for a, b in zip(g1, g2):
        close(a, b)


def test_gradients_reach_only_the_context(model):
    learner = TextPromptLearner(model, NAMES, n_ctx=4)
    learner.text_features(model).sum().backward()
    assert learner.ctx.grad is not None and learner.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


# ------------------------------------------------------------------ checkpoints
def test_state_dict_holds_the_context_and_loads_coop_files(model):
    torch.manual_seed(4)
    learner = TextPromptLearner(model, NAMES, n_ctx=4)
    assert list(learner.state_dict()) == ["ctx"]
    # a CoOp checkpoint: fp16 ctx plus the fixed tokens of *other* classes (e.g. the base classes)
    coop_state = {"ctx": torch.randn(4, 128).half(), "token_prefix": torch.randn(2, 1, 128),
                  "token_suffix": torch.randn(2, 70, 128)}
    learner.load_state_dict(coop_state)
    assert torch.equal(learner.ctx.detach(), coop_state["ctx"].float())
    assert learner.token_suffix.shape[0] == len(NAMES)  # rebuilt for these classes, not loaded


def test_class_specific_context_on_other_classes_is_a_config_error(model):
    learner = TextPromptLearner(model, NAMES, n_ctx=4, csc=True)
    with pytest.raises(ConfigError, match="class-specific context"):
        learner.load_state_dict({"ctx": torch.zeros(3, 4, 128)})
    with pytest.raises(ConfigError, match="N_CTX"):
        learner.load_state_dict({"ctx": torch.zeros(len(NAMES), 8, 128)})
