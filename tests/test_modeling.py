"""Model family on tiny random backbones: shapes, batch (mask) invariance, gradient flow, options, errors."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_BACKBONES, tiny_model
from transformers import AutoConfig

from gliclass.config import GLiClassConfig
from gliclass.modeling.layers import LayerwiseAttention, LstmEncoder

BACKBONES = ["bert", "deberta", "modernbert"]
VECTOR_POOLINGS = ["first", "last", "avg", "max", "sum", "rms", "abs_max", "abs_avg", "attn"]
VECTOR_SCORERS = ["simple", "mlp", "weighted-dot", "hopfield"]
ARCHS = ["uni-encoder", "bi-encoder", "bi-encoder-fused", "encoder-decoder"]
CROSS_ATTN = dict(pooling_strategy="pass", scorer_type="cross-attn", scorer_num_heads=2, scorer_mlp_hidden_size=16)

SHORT = "good movie"
LONG = " ".join(["the service was terrible and the food was bad but the music was great"] * 4)  # ~56 words
TEXTS = [SHORT, LONG]
LABELS = [["positive", "negative", "very good food"], ["food", "service"]]


# tiny tensors: one intra-op thread (conftest.single_thread)
pytestmark = pytest.mark.usefixtures("single_thread")


def forward(model, processor, texts=TEXTS, labels=LABELS, **kwargs):
    batch = processor(texts, labels, **kwargs)
    with torch.no_grad():
        return model(**batch), batch


def check_outputs(model, out, batch) -> None:
    """Every output has the documented shape and real slots are finite."""
    config = model.config
    dim = config.encoder_config.get_text_config().hidden_size
    num_texts, length = batch["input_ids"].shape
    num_slots = batch["labels_mask"].shape[1]
    assert out.logits.shape == (num_texts, num_slots)
    assert torch.equal(out.labels_mask, batch["labels_mask"].bool())
    assert torch.isfinite(out.logits[out.labels_mask]).all()
    expected_text = (num_texts, length, dim) if config.pooling_strategy == "pass" else (num_texts, dim)
    assert out.text_embeddings.shape == expected_text
    assert out.class_embeddings.shape == (num_texts, num_slots, dim)
    assert out.token_embeddings.shape == (num_texts, length, dim)
    assert out.token_mask.shape == (num_texts, length)


def check_batch_invariance(model, processor, texts=TEXTS, labels=LABELS, **kwargs) -> None:
    """Each row's logits are the same alone and padded in a batch beside a much longer text / more labels."""
    out, batch = forward(model, processor, texts, labels, **kwargs)
    check_outputs(model, out, batch)
    for i, labels_i in enumerate(labels):
        single = {key: [value[i]] for key, value in kwargs.items()}
        alone, _ = forward(model, processor, texts[i : i + 1], labels[i : i + 1], **single)
        assert alone.logits.shape == (1, len(labels_i))
        torch.testing.assert_close(alone.logits[0], out.logits[i, : len(labels_i)], atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------ shapes + invariance
@pytest.mark.parametrize(
    "arch,backbone",
    [("uni-encoder", b) for b in BACKBONES]
    + [("bi-encoder", b) for b in BACKBONES]
    + [("bi-encoder-fused", b) for b in BACKBONES]
    + [("encoder-decoder", "t5")],
)
def test_architecture_on_backbone(arch, backbone):
    model, processor = tiny_model(backbone, architecture_type=arch)
    check_batch_invariance(model, processor)


@pytest.mark.parametrize("pooling", VECTOR_POOLINGS)
@pytest.mark.parametrize("arch", ARCHS)
def test_pooling_in_every_architecture(arch, pooling):
    model, processor = tiny_model(architecture_type=arch, pooling_strategy=pooling)
    check_batch_invariance(model, processor)


@pytest.mark.parametrize("scorer", VECTOR_SCORERS)
@pytest.mark.parametrize("arch", ARCHS)
def test_scorer_in_every_architecture(arch, scorer):
    model, processor = tiny_model(architecture_type=arch, scorer_type=scorer)
    if scorer == "hopfield":  # beta * (large dot products) in a softmax amplifies float32 rounding to ~1e-4
        model.double()
    check_batch_invariance(model, processor)


@pytest.mark.parametrize("arch", ["uni-encoder", "encoder-decoder"])
def test_pass_pooling_with_cross_attn_scorer(arch):
    model, processor = tiny_model(architecture_type=arch, **CROSS_ATTN)
    check_batch_invariance(model, processor)


OPTIONS = {
    "class_token_pooling=average": dict(class_token_pooling="average"),
    "use_lstm": dict(use_lstm=True),
    "use_segment_embeddings": dict(use_segment_embeddings=True),
    "encoder_layer_id=1": dict(encoder_layer_id=1),
    "encoder_layer_id=0": dict(encoder_layer_id=0),
    "squeeze_layers": dict(squeeze_layers=True),
    "normalize_features": dict(normalize_features=True),
    "prompt_first": dict(prompt_first=True),
    "embed_class_token=False": dict(embed_class_token=False),
    "embed_class_token=False,average": dict(embed_class_token=False, class_token_pooling="average"),
    "extract_text_features": dict(extract_text_features=True, pooling_strategy="avg"),
    "extract_text_features,prompt_first,average": dict(
        extract_text_features=True, prompt_first=True, class_token_pooling="average"
    ),
    "everything": dict(
        use_lstm=True,
        use_segment_embeddings=True,
        squeeze_layers=True,
        normalize_features=True,
        prompt_first=True,
        class_token_pooling="average",
        pooling_strategy="attn",
        scorer_type="mlp",
    ),
}


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("backbone", BACKBONES)
def test_uni_encoder_option(backbone, option):
    model, processor = tiny_model(backbone, **OPTIONS[option])
    check_batch_invariance(model, processor)


@pytest.mark.parametrize("backbone", ["bert", "modernbert"])
def test_prompt_and_examples_batch_invariance(backbone):
    model, processor = tiny_model(backbone, use_segment_embeddings=True, pooling_strategy="avg")
    examples = [[{"text": "great film", "labels": ["positive"]}], None]
    check_batch_invariance(model, processor, prompts=["classify the review", None], examples=examples)


# ------------------------------------------------------------------------------------------ label features
def _positions(input_ids: torch.Tensor, token_id: int) -> list[int]:
    return (input_ids == token_id).nonzero().flatten().tolist()


@pytest.mark.parametrize("embed_class_token", [True, False])
def test_class_token_pooling_first_reads_the_label_token(embed_class_token):
    model, processor = tiny_model(embed_class_token=embed_class_token)
    out, batch = forward(model, processor, [SHORT], [LABELS[0]])
    positions = torch.tensor(_positions(batch["input_ids"][0], model.config.class_token_index))
    positions = positions if embed_class_token else positions + 1  # else: the token right after <<LABEL>>
    expected = model.model.classes_projector(out.token_embeddings[0, positions])
    torch.testing.assert_close(out.class_embeddings[0], expected)


@pytest.mark.parametrize("embed_class_token", [True, False])
def test_class_token_pooling_average_means_each_label_span(embed_class_token):
    # with extract_text_features the last span stops at <<SEP>>, so every label has a closed span
    model, processor = tiny_model(
        class_token_pooling="average", extract_text_features=True, embed_class_token=embed_class_token
    )
    out, batch = forward(model, processor, [SHORT], [["very good food", "really bad", "the movie"]])
    ids = batch["input_ids"][0]
    starts = _positions(ids, model.config.class_token_index)
    ends = [*starts[1:], _positions(ids, model.config.text_token_index)[0]]
    states = out.token_embeddings[0]
    means = torch.stack(
        [states[s + (0 if embed_class_token else 1) : e].mean(0) for s, e in zip(starts, ends, strict=True)]
    )
    torch.testing.assert_close(out.class_embeddings[0], model.model.classes_projector(means), atol=1e-5, rtol=1e-5)
    # multi-token labels: the average is not the label token alone
    assert not torch.allclose(means[0], states[starts[0]], atol=1e-3)


def test_extract_text_features_pools_from_sep_on():
    model, processor = tiny_model(extract_text_features=True, pooling_strategy="avg", prompt_first=True)
    out, batch = forward(model, processor, [SHORT], [LABELS[0]])
    sep = _positions(batch["input_ids"][0], model.config.text_token_index)[0]
    expected = model.model.text_projector(out.token_embeddings[0, sep:].mean(0))
    torch.testing.assert_close(out.text_embeddings[0], expected, atol=1e-5, rtol=1e-5)
    # without the option the text vector pools the whole sequence (labels included)
    whole = model.model.text_projector(out.token_embeddings[0].mean(0))
    assert not torch.allclose(out.text_embeddings[0], whole, atol=1e-4)


def test_uni_logits_are_the_plain_dot_product_without_normalisation():
    model, processor = tiny_model()
    out, _ = forward(model, processor)
    torch.testing.assert_close(out.logits, torch.einsum("bd,bcd->bc", out.text_embeddings, out.class_embeddings))


@pytest.mark.parametrize("arch", ["uni-encoder", "bi-encoder"])
def test_normalize_features_gives_unit_vectors_and_scaled_cosines(arch):
    model, processor = tiny_model(architecture_type=arch, normalize_features=True)
    out, _ = forward(model, processor)
    mask = out.labels_mask
    torch.testing.assert_close(out.text_embeddings.norm(dim=-1), torch.ones(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.class_embeddings[mask].norm(dim=-1), torch.ones(int(mask.sum())), atol=1e-5, rtol=0)
    cosine = torch.einsum("bd,bcd->bc", out.text_embeddings, out.class_embeddings)
    torch.testing.assert_close(out.logits, cosine * model.model.logit_scale)
    assert out.logits.abs().max() <= model.model.logit_scale + 1e-5


def test_segment_ids_mark_text_labels_and_examples():
    model, processor = tiny_model(use_segment_embeddings=True)
    examples = [{"text": "great film", "labels": ["positive"]}]
    batch = processor([SHORT], [["positive", "negative"]], examples=[examples])
    ids = batch["input_ids"][0]
    segments = model.model.segment_ids(batch["input_ids"])[0]
    sep = _positions(ids, model.config.text_token_index)[0]
    example = _positions(ids, model.config.example_token_index)[0]
    assert sep < example
    assert segments[:sep].eq(0).all() and segments[sep:example].eq(1).all() and segments[example:].eq(2).all()
    # the segment embeddings are used
    before = model(**batch).logits
    with torch.no_grad():  # a random direction (a constant shift would vanish in the embedding LayerNorm)
        model.model.segment_embeddings.weight[2].add_(torch.randn(model.model.segment_embeddings.embedding_dim))
    assert not torch.allclose(model(**batch).logits, before)


# ------------------------------------------------------------------------------------------ hidden states
@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("layer_id", [0, 1, -2, -3])
def test_encoder_layer_id_selects_that_hidden_state(backbone, layer_id):
    model, processor = tiny_model(backbone, encoder_layer_id=layer_id)
    out, batch = forward(model, processor, [SHORT], [LABELS[0]])
    with torch.no_grad():
        manual = model.model.encoder_model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
        )
    torch.testing.assert_close(out.token_embeddings, manual.hidden_states[layer_id])
    if layer_id in (0, -3):  # the embedding output, not a transformer layer
        assert not torch.allclose(out.token_embeddings, manual.last_hidden_state, atol=1e-3)


def test_encoder_layer_id_zero_is_the_embedding_output():
    model, processor = tiny_model("bert", encoder_layer_id=0)
    out, batch = forward(model, processor, [SHORT], [LABELS[0]])
    with torch.no_grad():
        embedded = model.model.encoder_model.embeddings(input_ids=batch["input_ids"])
    torch.testing.assert_close(out.token_embeddings, embedded)
    last, _ = forward(*tiny_model("bert"), [SHORT], [LABELS[0]])
    assert not torch.allclose(out.logits, last.logits, atol=1e-4)


@pytest.mark.parametrize("layer_id", [3, -4, 10])
def test_encoder_layer_id_out_of_range_fails_at_config_time(layer_id):
    encoder = AutoConfig.for_model("bert", hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
    with pytest.raises(ValueError, match=rf"encoder_layer_id={layer_id} is out of range.*3 hidden states"):
        GLiClassConfig(encoder_config=encoder, encoder_layer_id=layer_id)
    for ok in (2, -3, 0):
        assert GLiClassConfig(encoder_config=encoder, encoder_layer_id=ok).encoder_layer_id == ok


@pytest.mark.parametrize("backbone", BACKBONES)
def test_squeeze_layers_uses_all_k_plus_1_hidden_states(backbone):
    model, processor = tiny_model(backbone, squeeze_layers=True)
    layer_wise = model.model.layer_wise_attention
    num_layers = model.config.encoder_config.num_hidden_layers
    assert layer_wise.num_states == num_layers + 1  # the official module is built for num_hidden_layers: crashes
    assert layer_wise.W1.in_features == num_layers + 1 and layer_wise.W2.out_features == num_layers + 1
    out, batch = forward(model, processor)
    with torch.no_grad():
        states = model.model.encoder_model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
        ).hidden_states
        assert len(states) == num_layers + 1
        expected = layer_wise(states, batch["attention_mask"])
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(out.token_embeddings[mask], expected[mask])


def _layerwise_by_hand(module: LayerwiseAttention, states, mask) -> torch.Tensor:
    """Paper eqs. 3-6 with explicit loops over the batch and the layers (mean over real tokens only)."""
    batch, num_states = states[0].shape[0], len(states)
    out = []
    for b in range(batch):
        n = int(mask[b].sum())
        z = torch.stack([module.squeeze(states[k][b, :n]).squeeze(-1).mean() for k in range(num_states)])  # eq. 3
        s = torch.sigmoid(module.W2.weight @ torch.relu(module.W1.weight @ z + module.W1.bias) + module.W2.bias)
        mixed = sum(s[k] * states[k][b] for k in range(num_states))  # eq. 5
        out.append(mixed @ module.output_projection.weight.T + module.output_projection.bias)  # eq. 6
    return torch.stack(out)


def test_layerwise_attention_matches_eqs_3_to_6():
    torch.manual_seed(0)
    num_states, dim = 5, 8
    module = LayerwiseAttention(num_states, dim, output_size=6)
    assert module.W1.weight.shape == (num_states // 2, num_states)  # W1 in R^{K/2 x K}
    assert module.W2.weight.shape == (num_states, num_states // 2)  # W2 in R^{K x K/2}
    states = tuple(torch.randn(2, 7, dim) for _ in range(num_states))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    out = module(states, mask)
    assert out.shape == (2, 7, 6)
    torch.testing.assert_close(out, _layerwise_by_hand(module, states, mask), atol=1e-5, rtol=1e-5)


def test_layerwise_attention_weights_ignore_padding():
    torch.manual_seed(0)
    module = LayerwiseAttention(3, 8)
    states = tuple(torch.randn(2, 6, 8) for _ in range(3))
    mask = torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0]])
    real = mask.bool()
    alone = module(tuple(s[1:, :3] for s in states), torch.ones(1, 3))
    torch.testing.assert_close(alone[0], module(states, mask)[1, :3])
    seen_by_unmasked = []
    for sign in (1.0, -1.0):  # garbage that pushes the squeezed value up, then down (the ReLU may cut one)
        fill = sign * 50.0 * module.squeeze.weight.detach().sign().view(1, 1, -1)
        dirty = tuple(torch.where(real.unsqueeze(-1), s, fill.expand_as(s)) for s in states)
        torch.testing.assert_close(module(dirty, mask)[real], module(states, mask)[real])
        unmasked = module(dirty, torch.ones_like(mask))[1, :3]
        seen_by_unmasked.append(not torch.allclose(unmasked, alone[0], atol=1e-3))
    assert any(seen_by_unmasked)  # an unmasked squeeze would see the padding


def test_layerwise_attention_rejects_the_wrong_number_of_states():
    module = LayerwiseAttention(3, 8)
    with pytest.raises(ValueError, match="built for 3 hidden states, got 2"):
        module(tuple(torch.randn(1, 4, 8) for _ in range(2)), torch.ones(1, 4))


def test_lstm_encoder_ignores_padding_and_zeroes_it():
    torch.manual_seed(0)
    lstm = LstmEncoder(8)
    x = torch.randn(2, 6, 8)
    mask = torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0]])
    out = lstm(x, mask)
    assert out.shape == (2, 6, 8)
    assert torch.equal(out[1, 3:], torch.zeros(3, 8))
    torch.testing.assert_close(out[1, :3], lstm(x[1:, :3], torch.ones(1, 3))[0])


# ------------------------------------------------------------------------------------------ gradient flow
def _grads(model, processor, **kwargs) -> dict[str, torch.Tensor | None]:
    model.zero_grad()
    out = model(**processor(TEXTS, LABELS, **kwargs))
    out.logits[out.labels_mask].sum().backward()
    return {name: param.grad for name, param in model.named_parameters()}


def _assert_trained(grads, prefix: str, every: bool = True) -> None:
    """Parameters under `prefix` get a nonzero gradient (all of them, or at least one of them)."""
    # unused by design: the backbones' own (BERT) pooler head, and the attn pooling's score bias (a softmax is
    # shift-invariant, so that bias always has zero gradient)
    unused = ("pooler.dense.weight", "pooler.dense.bias", "model.pooler.score.bias")
    selected = {n: g for n, g in grads.items() if n.startswith(prefix) and not n.endswith(unused)}
    assert selected, f"no parameters under {prefix}"
    ok = {n: g is not None and bool(g.abs().sum() > 0) for n, g in selected.items()}
    if every:
        assert all(ok.values()), f"no gradient for {[n for n, v in ok.items() if not v]}"
    else:
        assert any(ok.values()), f"no gradient reaches {prefix}"


def test_gradient_reaches_every_uni_encoder_part():
    model, processor = tiny_model(
        use_lstm=True,
        squeeze_layers=True,
        use_segment_embeddings=True,
        normalize_features=True,
        pooling_strategy="attn",
        scorer_type="mlp",
    )
    examples = [[{"text": "great film", "labels": ["positive"]}], None]
    grads = _grads(model, processor, examples=examples)
    for prefix in [
        "model.encoder_model.",
        "model.text_projector.",
        "model.classes_projector.",
        "model.scorer.",
        "model.pooler.",
        "model.lstm.",
        "model.layer_wise_attention.",
        "model.segment_embeddings.",
        "model.logit_scale",
    ]:
        _assert_trained(grads, prefix)
    embeddings = grads["model.encoder_model.embeddings.word_embeddings.weight"]
    for token_id in (model.config.class_token_index, model.config.text_token_index, model.config.example_token_index):
        assert embeddings[token_id].abs().sum() > 0  # the added special tokens are trained


def test_gradient_reaches_every_layer_with_cross_attn():
    model, processor = tiny_model(**CROSS_ATTN)
    grads = _grads(model, processor)
    for prefix in ["model.encoder_model.", "model.text_projector.", "model.classes_projector.", "model.scorer."]:
        _assert_trained(grads, prefix)


@pytest.mark.parametrize("arch", ["bi-encoder", "bi-encoder-fused"])
def test_gradient_reaches_both_encoders(arch):
    model, processor = tiny_model(architecture_type=arch, scorer_type="weighted-dot")
    grads = _grads(model, processor)
    for prefix in [
        "model.label_encoder.",
        "model.biencoder_projector.",
        "model.text_projector.",
        "model.scorer.",
        "model.logit_scale",
    ]:
        _assert_trained(grads, prefix)
    # fused: the <<LABEL>> rows are overwritten, so not every embedding row trains; the layers all do
    _assert_trained(grads, "model.encoder_model.encoder.", every=True)
    _assert_trained(grads, "model.encoder_model.embeddings.", every=False)


def test_gradient_reaches_encoder_and_decoder():
    model, processor = tiny_model(architecture_type="encoder-decoder", pooling_strategy="avg")
    grads = _grads(model, processor)
    for prefix in ["model.encoder_decoder_model.encoder.block.", "model.encoder_decoder_model.decoder.block."]:
        _assert_trained(grads, prefix)
    _assert_trained(grads, "model.classes_projector.")


# ------------------------------------------------------------------------------------------ bi-encoders
@pytest.mark.parametrize("scorer", VECTOR_SCORERS)
def test_bi_encoder_is_label_permutation_equivariant(scorer):
    model, processor = tiny_model(architecture_type="bi-encoder", scorer_type=scorer)
    labels = ["positive", "negative", "very good food", "sports", "the service"]
    perm = [3, 0, 4, 1, 2]
    model.double()  # see test_scorer_in_every_architecture: float32 rounding is amplified by hopfield
    out, _ = forward(model, processor, [LONG], [labels])
    permuted, _ = forward(model, processor, [LONG], [[labels[i] for i in perm]])
    torch.testing.assert_close(permuted.logits[0], out.logits[0, perm], atol=1e-5, rtol=1e-5)


def test_bi_encoder_label_vectors_are_cacheable():
    model, processor = tiny_model(architecture_type="bi-encoder")
    out, batch = forward(model, processor)
    mask = batch["labels_mask"]
    with torch.no_grad():
        flat = model.encode_labels(batch["class_input_ids"][mask], batch["class_attention_mask"][mask])
        cached = torch.zeros(*mask.shape, flat.shape[-1])
        cached[mask] = flat
        reused = model(batch["input_ids"], batch["attention_mask"], labels_mask=mask, class_embeddings=cached)
    torch.testing.assert_close(reused.logits[mask], out.logits[mask])
    # the label vector of "food" does not depend on the text it is scored against
    other, _ = forward(model, processor, [SHORT], [["food"]])
    torch.testing.assert_close(other.class_embeddings[0, 0], out.class_embeddings[1, 0], atol=1e-5, rtol=1e-5)


def test_fused_bi_encoder_feeds_label_vectors_into_the_text_encoder():
    model, processor = tiny_model(architecture_type="bi-encoder-fused")
    out, batch = forward(model, processor, [SHORT], [["positive", "negative"]])
    changed, changed_batch = forward(model, processor, [SHORT], [["positive", "sports"]])
    assert torch.equal(batch["input_ids"], changed_batch["input_ids"])  # same <<LABEL>> placeholders...
    assert not torch.allclose(out.logits, changed.logits, atol=1e-4)  # ...but other label vectors
    bad = dict(batch, labels_mask=torch.ones(1, 3, dtype=torch.bool))
    bad["class_input_ids"] = torch.cat([batch["class_input_ids"], batch["class_input_ids"][:, :1]], dim=1)
    bad["class_attention_mask"] = torch.cat([batch["class_attention_mask"], batch["class_attention_mask"][:, :1]], 1)
    with pytest.raises(ValueError, match="number of <<LABEL>> tokens differs"):
        model(**bad)


def test_encoder_decoder_reads_the_label_prompt_bidirectionally():
    """The first label's vector depends on the labels after it (a causal decoder would ignore them)."""
    model, processor = tiny_model(architecture_type="encoder-decoder")
    first, _ = forward(model, processor, [SHORT], [["positive", "negative"]])
    second, _ = forward(model, processor, [SHORT], [["positive", "sports"]])
    assert not torch.allclose(first.class_embeddings[0, 0], second.class_embeddings[0, 0], atol=1e-4)


# ------------------------------------------------------------------------------------------ errors
def _encoder(model_type: str = "bert"):
    spec = dict(TINY_BACKBONES[model_type])
    return AutoConfig.for_model(spec.pop("model_type"), **spec)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(pooling_strategy="mean"), r"pooling_strategy='mean' is not supported.*'avg'"),
        (dict(scorer_type="cosine"), r"scorer_type='cosine' is not supported.*'simple'"),
        (dict(architecture_type="decoder"), r"architecture_type='decoder' is not supported.*'uni-encoder'"),
        (dict(class_token_pooling="max"), r"class_token_pooling='max' is not supported"),
        (dict(scorer_type="cross-attn"), r"scorer_type='cross-attn'.*needs pooling_strategy='pass'"),
        (dict(pooling_strategy="pass"), r"pooling_strategy='pass'.*scorer_type='cross-attn'"),
        (dict(architecture_type="bi-encoder"), r"architecture_type='bi-encoder' needs label_model_config"),
        (dict(architecture_type="encoder-decoder"), r"architecture_type='encoder-decoder' needs an encoder-decoder"),
        (dict(layer_wise=True), r"layer_wise=True"),
    ],
)
def test_config_errors_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GLiClassConfig(encoder_config=_encoder(), **kwargs)


@pytest.mark.parametrize("arch", ["bi-encoder", "bi-encoder-fused"])
def test_bi_encoders_reject_pass_pooling_at_config_time(arch):
    """Their label encoder pools each label to one vector; 'pass' used to crash in the forward pass."""
    with pytest.raises(ValueError, match=rf"pooling_strategy='pass'.*architecture_type='{arch}'"):
        GLiClassConfig(encoder_config=_encoder(), label_model_config=_encoder(), architecture_type=arch, **CROSS_ATTN)


def test_forward_errors_are_clear():
    bi, processor = tiny_model(architecture_type="bi-encoder")
    batch = processor([SHORT], [["positive"]])
    with pytest.raises(ValueError, match="class_input_ids or class_embeddings"):
        bi(batch["input_ids"], batch["attention_mask"])
    encdec, processor = tiny_model(architecture_type="encoder-decoder")
    batch = processor([SHORT], [["positive"]])
    with pytest.raises(ValueError, match="needs class_input_ids and class_attention_mask"):
        encdec(batch["input_ids"], batch["attention_mask"])
    uni, _ = tiny_model()
    with pytest.raises(ValueError, match="encode_labels needs a bi-encoder"):
        uni.encode_labels(batch["class_input_ids"], batch["class_attention_mask"])


def test_labels_mask_defaults_to_the_label_tokens():
    model, processor = tiny_model()
    batch = processor(TEXTS, LABELS)
    with torch.no_grad():
        given = model(**batch)
        derived = model(batch["input_ids"], batch["attention_mask"])
    assert torch.equal(derived.labels_mask, batch["labels_mask"])
    torch.testing.assert_close(derived.logits[derived.labels_mask], given.logits[given.labels_mask])
