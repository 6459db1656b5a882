import torch
from helpers import tiny_config

from lmforge.infer.generate import SamplingConfig, filter_logits, generate_tokens
from lmforge.model.transformer import LanguageModel


def test_cached_generation_equals_uncached(tiny_cfg):
    torch.manual_seed(0)
    model = LanguageModel(tiny_cfg)
    for sampling in [
        SamplingConfig(max_new_tokens=25, temperature=0),
        SamplingConfig(max_new_tokens=25, temperature=1.0, top_k=10, seed=3),
    ]:
        cached = list(generate_tokens(model, [1, 2, 3], sampling, use_cache=True))
        plain = list(generate_tokens(model, [1, 2, 3], sampling, use_cache=False))
        assert cached == plain and len(cached) == 25


def test_seed_makes_sampling_reproducible(tiny_cfg):
    model = LanguageModel(tiny_cfg)
    s = SamplingConfig(max_new_tokens=20, temperature=1.0, top_k=None, seed=7)
    assert list(generate_tokens(model, [5], s)) == list(generate_tokens(model, [5], s))


def test_stop_token_ends_generation(tiny_cfg):
    model = LanguageModel(tiny_cfg)
    greedy = list(generate_tokens(model, [1, 2], SamplingConfig(max_new_tokens=10, temperature=0)))
    stopped = list(
        generate_tokens(
            model,
            [1, 2],
            SamplingConfig(max_new_tokens=10, temperature=0, stop_token_ids=[greedy[3]]),
        )
    )
    assert stopped == greedy[: greedy.index(greedy[3])]


def test_generation_stops_at_the_context_end_for_learned_positions():

    cfg = tiny_config(n_layer=1, pos_embedding="learned")
    out = list(
        generate_tokens(
            LanguageModel(cfg), list(range(10)), SamplingConfig(max_new_tokens=100, temperature=0)
        )
    )
    assert len(out) == 6


def test_top_k_and_top_p_filtering():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    kept = filter_logits(logits, top_k=2, top_p=None).isfinite()
    assert kept.tolist() == [[True, True, False, False, False]]
    probs = logits.softmax(-1)[0]  # ~ .64 .24 .09 .03 .01
    kept = filter_logits(logits, top_k=None, top_p=0.8).isfinite()[0]
    assert kept.tolist() == [True, True, False, False, False] and probs[0] < 0.8 < probs[:2].sum()
    kept = filter_logits(logits, top_k=None, top_p=0.5).isfinite()[0]
    assert kept.tolist() == [True, False, False, False, False]
