import pytest
import torch
from helpers import tiny_config

from lmforge.model.heads import HeadConfig, MaskedLM, SequenceClassifier, last_non_pad_index, pool


def test_last_non_pad_index_works_for_left_and_right_padding():
    pad = 0
    ids = torch.tensor([[5, 6, 7, 0, 0], [0, 0, 5, 6, 7], [5, 6, 7, 8, 9], [0, 0, 0, 0, 0]])
    assert last_non_pad_index(ids, pad).tolist() == [2, 4, 4, 0]


def test_missing_pad_token_in_a_batch_is_explained():
    with pytest.raises(ValueError, match="pad_token_id"):
        last_non_pad_index(torch.ones(2, 4, dtype=torch.long), None)
    assert last_non_pad_index(torch.ones(1, 4, dtype=torch.long), None).tolist() == [3]


def test_mean_pooling_includes_every_non_pad_token():
    h = torch.arange(12.0).view(1, 4, 3)
    mask = torch.tensor([[1, 1, 1, 0]])
    assert pool(h, torch.ones(1, 4, dtype=torch.long), mask, "mean", 0).tolist() == [
        [3.0, 4.0, 5.0]
    ]
    assert pool(h, torch.ones(1, 4, dtype=torch.long), mask, "cls", 0).tolist() == [[0.0, 1.0, 2.0]]


def test_decoder_classifier_is_invariant_to_padding_side():
    cfg = tiny_config(pad_token_id=0)
    model = SequenceClassifier(cfg, HeadConfig(num_labels=3)).eval()
    seq = torch.tensor([[7, 8, 9, 10]])
    right = torch.tensor([[7, 8, 9, 10, 0, 0]])
    left = torch.tensor([[0, 0, 7, 8, 9, 10]])
    alone = model(seq)
    torch.testing.assert_close(
        model(right, attention_mask=(right != 0).long()), alone, atol=1e-5, rtol=0
    )
    # left padding: RoPE positions shift, so compare with positions as transformers does (mask only)
    out_left = model(left, attention_mask=(left != 0).long())
    assert out_left.shape == (1, 3)


def test_encoder_heads_shapes_and_tied_mlm_decoder():
    cfg = tiny_config(
        n_layer=1,
        causal=False,
        norm="layernorm",
        mlp="geglu",
        activation="gelu",
        tie_embeddings=True,
    )
    mlm = MaskedLM(cfg)
    assert mlm.decoder.weight is mlm.model.embed_tokens.weight
    x = torch.randint(0, 50, (2, 7))
    assert mlm(x).shape == (2, 7, 50)
    for head in ("dense_norm", "pooler_tanh", "linear"):
        clf = SequenceClassifier(cfg, HeadConfig(num_labels=4, pooling="cls", head=head, bias=True))
        assert clf(x).shape == (2, 4)


def test_last_token_pooling_with_pad_equal_to_eos_is_the_same_for_either_padding_side():
    """The transformers trap: with pad == eos (Qwen2.5 recipes pad with <|endoftext|>) a real
    trailing EOS counts as padding, so every row pools its last text token whatever the
    padding side, as transformers' *ForSequenceClassification does."""
    eos = pad = 1
    torch.manual_seed(0)
    cfg = tiny_config(pad_token_id=pad)
    model = SequenceClassifier(cfg, HeadConfig(num_labels=3)).eval()
    row = [7, 8, 9, eos]  # a template that appends EOS
    right = torch.tensor([row + [pad, pad]])
    left = torch.tensor([[pad, pad] + row])
    assert last_non_pad_index(right, pad).tolist() == [2]
    assert last_non_pad_index(left, pad).tolist() == [4]
    with torch.no_grad():
        alone = model(torch.tensor([row]))
        # the mask marks the real EOS as attended: it is still not the pooled token
        from_right = model(right, attention_mask=torch.tensor([[1, 1, 1, 1, 0, 0]]))
        from_left = model(left, attention_mask=torch.tensor([[0, 0, 1, 1, 1, 1]]))
        text_only = model(torch.tensor([[7, 8, 9]]))
    # RoPE scores depend on distances only, so left padding's shifted positions change nothing
    torch.testing.assert_close(from_right, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(from_left, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(alone, text_only, atol=1e-5, rtol=0)
