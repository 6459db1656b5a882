"""Post-training: the chat template and its loss mask, SFT, the reward model and DPO."""

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_config

from lmforge.artifact import load, save_model_artifact
from lmforge.cli import main
from lmforge.data.chat import (
    IGNORE,
    PackedChatBatches,
    PairBatches,
    Preference,
    encode_chat,
    encode_completion,
    encode_prompt,
    load_conversations,
    load_preferences,
    render,
)
from lmforge.errors import ConfigError, DataError
from lmforge.model.lora import adapters_disabled, inject_lora
from lmforge.model.transformer import LanguageModel
from lmforge.tokenizer import Tokenizer
from lmforge.train.objectives import completion_logps, dpo_loss
from lmforge.utils import read_json

CHAT = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "What is the colour of the sky?"},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "And of grass?"},
    {"role": "assistant", "content": "Green."},
]


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_dir):
    return Tokenizer.load(tiny_tokenizer_dir)


# --- the template ---------------------------------------------------------------------------


def test_chat_tokens_are_the_rendered_template_and_only_answers_are_trained(tok):
    ids, labels = encode_chat(tok, CHAT)
    assert tok.decode(ids) == "<|bos|>" + render(CHAT)
    # pieces == the whole string's tokens (the string written with the control tokens on purpose)
    assert ids == tok.encode("<|bos|>" + render(CHAT), allow_special=True)
    trained = [t for t in labels if t != IGNORE]
    # the assistant contents with their <|im_end|>, nothing else (no system, user, headers)
    assert tok.decode(trained) == "Blue.<|im_end|>Green.<|im_end|>"
    assert [lab for lab, i in zip(labels, ids) if lab != IGNORE] == trained
    assert trained.count(tok.im_end_id) == 2


def test_generation_prompt_matches_training_and_cuts_from_the_left(tok):
    ids, labels = encode_chat(tok, CHAT)
    prompt, cut = encode_prompt(tok, CHAT[:-1], max_len=1000)
    # the prompt is the training sequence up to where the last answer starts
    first_answer_token = max(
        i for i, lab in enumerate(labels) if lab == IGNORE and i < len(ids) - 3
    )
    assert not cut and ids[: len(prompt)] == prompt
    assert prompt[-len(tok.encode("assistant\n")) - 1 :] == [
        tok.im_start_id,
        *tok.encode("assistant\n"),
    ]
    assert first_answer_token >= len(prompt) - 1
    short, cut = encode_prompt(tok, CHAT[:-1], max_len=12)
    assert cut and len(short) == 12 and short[0] == tok.bos_id and short[1:] == prompt[-11:]


def test_completion_scores_exactly_the_trained_tokens(tok):
    ids, start = encode_completion(tok, CHAT[:2], "Blue.")
    full, labels = encode_chat(tok, CHAT[:3])
    assert ids == full[: len(ids)]
    assert ids[start:] == [t for t in labels if t != IGNORE]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    "row,match",
    [
        ({"messages": CHAT[:2]}, r"x.jsonl:2: the conversation ends with a user turn"),
        ({"messages": [{"role": "human", "content": "hi"}]}, "role 'human'.*'human' -> 'user'"),
        (
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": " "},
                ]
            },
            "empty assistant message",
        ),
        ({"text": "hello"}, "expected .*messages"),
    ],
)
def test_bad_conversations_are_refused_with_the_line(tmp_path, row, match):
    path = _write(tmp_path / "x.jsonl", [{"messages": CHAT}, row])
    with pytest.raises(DataError, match=match):
        load_conversations(path)


def test_prompt_completion_pairs_and_preferences_load(tmp_path):
    convs = load_conversations(
        _write(tmp_path / "c.jsonl", [{"prompt": "Hi", "completion": "Hello."}])
    )
    assert convs == [
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    ]
    prefs = load_preferences(
        _write(
            tmp_path / "p.jsonl",
            [
                {"prompt": "Sky?", "chosen": "Blue.", "rejected": "Green."},
                {
                    "prompt": [{"role": "user", "content": "Grass?"}],
                    "chosen": [{"role": "assistant", "content": "Green."}],
                    "rejected": "Red.",
                },
            ],
        )
    )
    assert prefs[1] == Preference([{"role": "user", "content": "Grass?"}], "Green.", "Red.")
    with pytest.raises(DataError, match="p2.jsonl:1: chosen equals rejected"):
        load_preferences(
            _write(tmp_path / "p2.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "b "}])
        )


def test_a_tokenizer_without_chat_tokens_is_refused_with_the_fix(tmp_path):
    from tokenizers import Tokenizer as HF
    from tokenizers import models, pre_tokenizers

    hf = HF(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(ConfigError, match="no <\\|im_start\\|>.*add them as special tokens"):
        encode_chat(Tokenizer(hf), CHAT)


def test_packed_rows_keep_conversations_whole_and_targets_shifted(tok):
    convs = [encode_chat(tok, CHAT), encode_chat(tok, CHAT[:3]), encode_chat(tok, CHAT[1:3])] * 4
    loader = PackedChatBatches(convs, batch_size=2, seq_len=64, pad_id=tok.pad_id, seed=1)
    batch = loader.next_batch()
    x, y = batch["input_ids"], batch["targets"]
    trained = y != IGNORE
    assert trained.any() and torch.equal(y[:, :-1][trained[:, :-1]], x[:, 1:][trained[:, :-1]])
    for row in x.tolist():  # each row starts a conversation (BOS) and never ends mid-way
        assert row[0] == tok.bos_id
    state = loader.state_dict()
    following = loader.next_batch()
    again = PackedChatBatches(convs, batch_size=2, seq_len=64, pad_id=tok.pad_id, seed=1)
    again.load_state_dict(state)
    assert torch.equal(again.next_batch()["input_ids"], following["input_ids"])


# --- the losses ------------------------------------------------------------------------------


def test_dpo_loss_is_the_papers_formula():
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-3.0, -5.0, -4.0, -4.5))
    loss, rewards = dpo_loss(pc, pr, rc, rr, beta=0.1)
    delta = (-3.0 - -4.0) - (-5.0 - -4.5)
    assert loss.item() == pytest.approx(-F.logsigmoid(torch.tensor(0.1 * delta)).item())
    assert rewards["chosen"].item() == pytest.approx(0.1) and rewards[
        "rejected"
    ].item() == pytest.approx(-0.05)


def test_completion_logps_sum_the_answer_tokens_only():
    torch.manual_seed(0)
    model = LanguageModel(tiny_config(vocab_size=30, max_seq_len=16)).eval()
    ids = torch.randint(0, 30, (1, 10))
    answer = torch.zeros(1, 10, dtype=torch.bool)
    answer[0, 6:] = True
    logp = torch.log_softmax(model(ids[:, :-1]), -1)[0]
    want = sum(logp[t - 1, ids[0, t]] for t in range(6, 10))
    assert completion_logps(model, ids, answer).item() == pytest.approx(want.item(), abs=1e-5)


def test_lora_reference_is_the_base_model_with_adapters_off():
    torch.manual_seed(0)
    model = LanguageModel(tiny_config(vocab_size=30, max_seq_len=16)).eval()
    ids, answer = torch.randint(0, 30, (2, 9)), torch.ones(2, 9, dtype=torch.bool)
    base = completion_logps(model, ids, answer)
    inject_lora(model, ["q_proj", "v_proj"], r=4, alpha=8)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p)  # a trained adapter changes the output...
    assert not torch.allclose(completion_logps(model, ids, answer), base)
    with adapters_disabled(model):  # ...and switching it off is exactly the reference
        assert torch.allclose(completion_logps(model, ids, answer), base)


# --- the stages, end to end on a tiny model -------------------------------------------------

COLOURS = {
    "sky": "blue",
    "grass": "green",
    "snow": "white",
    "coal": "black",
    "blood": "red",
    "sun": "yellow",
    "sea": "blue",
    "leaf": "green",
}


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("chat")
    convs = [
        {
            "messages": [
                {"role": "user", "content": f"What colour is the {k}?"},
                {"role": "assistant", "content": f"The {k} is {v}."},
            ],
            "task": "colour",
        }
        for k, v in COLOURS.items()
    ]
    _write(d / "train.jsonl", convs * 4)
    _write(d / "val.jsonl", convs)
    wrong = {
        "blue": "red",
        "green": "black",
        "white": "green",
        "black": "white",
        "red": "blue",
        "yellow": "black",
    }
    prefs = [
        {
            "prompt": f"What colour is the {k}?",
            "chosen": f"The {k} is {v}.",
            "rejected": f"The {k} is {wrong[v]}.",
        }
        for k, v in COLOURS.items()
    ]
    _write(d / "preferences-train.jsonl", prefs * 4)
    _write(d / "preferences-val.jsonl", prefs)
    return d


@pytest.fixture(scope="module")
def base_lm(tmp_path_factory, tok):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("base") / "lm"
    cfg = tiny_config(
        vocab_size=tok.vocab_size,
        n_embd=64,
        intermediate_size=128,
        max_seq_len=64,
        bos_token_id=tok.bos_id,
        eos_token_id=tok.eos_id,
        pad_token_id=tok.pad_id,
    )
    save_model_artifact(out, LanguageModel(cfg), kind="causal_lm")
    tok.save(out)
    return out


TRAIN = [
    "trainer.progress=false",
    "trainer.precision=fp32",
    "trainer.warmup_steps=2",
    "trainer.eval_every=1000",
    "trainer.checkpoint_every=1000",
    "trainer.log_every=5",
    "trainer.spike.enabled=false",
]  # memorising 8 answers drives the loss to ~0: no spikes


def _data_args(d, kind):
    if kind == "sft":
        return [f"data.train={d / 'train.jsonl'}", f"data.val={d / 'val.jsonl'}", "data.seq_len=64"]
    return [
        f"data.train={d / 'preferences-train.jsonl'}",
        f"data.val={d / 'preferences-val.jsonl'}",
        "data.seq_len=64",
    ]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, base_lm, chat_data):
    out = tmp_path_factory.mktemp("sft") / "run"
    args = [
        "sft",
        "--config",
        "configs/demo/sft.yaml",
        f"init={base_lm}",
        f"out_dir={out}",
        *_data_args(chat_data, "sft"),
        "epochs=60",
        "trainer.micro_batch_size=4",
        "trainer.lr=3e-3",
        "answers.n=8",
        "answers.max_new_tokens=30",
        *TRAIN,
    ]
    assert main(args) == 0
    return out


def test_sft_learns_the_answers_and_to_stop(sft_run, tok):
    summary = read_json(sft_run / "summary.json")
    assert summary["answers"]["token_f1"] > 0.9 > summary["answers_before"]["token_f1"]
    assert summary["answers"]["by_task"]["colour"]["n"] == 8
    # the model answers through the same template and stops at <|im_end|>
    from lmforge.infer.generate import SamplingConfig, stream_chat

    loaded = load(sft_run)
    answer = "".join(
        stream_chat(
            loaded.model,
            loaded.tokenizer,
            [{"role": "user", "content": "What colour is the snow?"}],
            SamplingConfig(max_new_tokens=30, temperature=0),
        )
    )
    assert answer == "The snow is white."
    assert loaded.kind == "causal_lm" and loaded.meta["post_training"] == "sft"


def test_sft_with_lora_trains_adapters_and_saves_a_merged_model(tmp_path, base_lm, chat_data):
    out = tmp_path / "lora"
    args = [
        "sft",
        "--config",
        "configs/demo/sft.yaml",
        f"init={base_lm}",
        f"out_dir={out}",
        *_data_args(chat_data, "sft"),
        "method=lora",
        "lora.r=4",
        "epochs=2",
        "answers.n=0",
        *TRAIN,
    ]
    assert main(args) == 0
    summary = read_json(out / "summary.json")
    assert 0 < summary["params_trainable"] < 0.2 * summary["params"]
    assert not any("lora" in k for k in load(out).model.state_dict())  # merged: a plain LM


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory, sft_run, chat_data):
    out = tmp_path_factory.mktemp("reward") / "run"
    args = [
        "reward",
        "--config",
        "configs/demo/reward.yaml",
        f"init={sft_run}",
        f"out_dir={out}",
        *_data_args(chat_data, "pref"),
        "epochs=10",
        "trainer.micro_batch_size=4",
        "trainer.lr=1e-3",
        *TRAIN,
    ]
    assert main(args) == 0
    return out


def test_reward_model_learns_to_rank_chosen_above_rejected(reward_run):
    s = read_json(reward_run / "summary.json")
    assert s["val_accuracy"] == 1.0 and s["val_margin"] > 1.0
    assert s["before"]["val_accuracy"] < 1.0 or s["before"]["val_margin"] < 0.5 * s["val_margin"]
    assert load(reward_run).meta["head"]["num_labels"] == 1


@pytest.mark.parametrize("method", ["full", "lora"])
def test_dpo_moves_rewards_apart_and_reports_a_win_rate(
    tmp_path, sft_run, reward_run, chat_data, method
):
    out = tmp_path / method
    args = [
        "dpo",
        "--config",
        "configs/demo/dpo.yaml",
        f"init={sft_run}",
        f"out_dir={out}",
        *_data_args(chat_data, "pref"),
        f"method={method}",
        "lora.r=4",
        "epochs=4",
        "trainer.micro_batch_size=4",
        "trainer.lr=1e-3",
        f"win_rate.reward_model={reward_run}",
        "win_rate.n=4",
        "win_rate.max_new_tokens=10",
        *TRAIN,
    ]
    assert main(args) == 0
    s = read_json(out / "summary.json")
    # before training the policy is its reference: implicit rewards are exactly zero
    assert s["before"]["val_margin"] == pytest.approx(0, abs=1e-5)
    assert s["before"]["val_loss"] == pytest.approx(0.6931, abs=1e-3)
    assert s["val_margin"] > 0.1 and s["val_reward_accuracy"] >= 0.75 and s["val_loss"] < 0.69
    assert s["val_chosen_reward"] > s["val_rejected_reward"]
    wr = read_json(out / "win_rate.json")
    assert 0 <= s["win_rate_over_init"] <= 1 and len(wr["transcripts"]) == 4
    outcomes = [
        1.0
        if t["policy_reward"] > t["baseline_reward"]
        else 0.5
        if t["policy_reward"] == t["baseline_reward"]
        else 0.0
        for t in wr["transcripts"]
    ]
    assert s["win_rate_over_init"] == pytest.approx(sum(outcomes) / 4)
    lo, hi = s["win_rate_ci95"]
    assert s["win_rate_n"] == 4 and min(outcomes) <= lo <= s["win_rate_over_init"] <= hi <= max(
        outcomes
    )
    assert load(out).kind == "causal_lm"


def test_reward_and_dpo_refuse_a_classifier_as_the_starting_point(tmp_path, reward_run, chat_data):
    args = [
        "dpo",
        "--config",
        "configs/demo/dpo.yaml",
        f"init={reward_run}",
        f"out_dir={tmp_path / 'x'}",
        *_data_args(chat_data, "pref"),
        *TRAIN,
    ]
    assert main(args) == 2
    assert not (tmp_path / "x").exists()


def test_pair_batches_put_chosen_first_and_mark_answers(tok):
    pairs = [Preference([{"role": "user", "content": "Sky?"}], "Blue.", "A long wrong answer.")]
    batch = next(PairBatches(tok, pairs, 1, 64, shuffle=False).batches())
    x, answer = batch["input_ids"], batch["answer"]
    assert tok.decode(x[0][answer[0]].tolist()) == "Blue.<|im_end|>"
    assert tok.decode(x[1][answer[1]].tolist()) == "A long wrong answer.<|im_end|>"


def test_sft_with_lora_from_a_transformers_qwen2_checkpoint(tmp_path, tok, chat_data):
    """The same recipe on a Hugging Face checkpoint (a tiny Qwen2 from save_pretrained)."""
    import transformers

    cfg = transformers.Qwen2Config(
        vocab_size=tok.vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_id,
        eos_token_id=tok.eos_id,
        pad_token_id=tok.pad_id,
    )
    torch.manual_seed(0)
    transformers.Qwen2ForCausalLM(cfg).save_pretrained(tmp_path / "qwen")
    tok.save(tmp_path / "qwen")
    out = tmp_path / "sft"
    args = [
        "sft",
        "--config",
        "configs/demo/sft.yaml",
        f"init={tmp_path / 'qwen'}",
        f"out_dir={out}",
        *_data_args(chat_data, "sft"),
        "method=lora",
        "lora.r=4",
        "epochs=2",
        "answers.n=2",
        "answers.max_new_tokens=4",
        *TRAIN,
    ]
    assert main(args) == 0
    s = read_json(out / "summary.json")
    assert 0 < s["params_trainable"] < s["params"] and s["answers"]["n"] == 2
    assert load(out).kind == "causal_lm"
