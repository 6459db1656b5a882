"""Quantizers against their formulas and torch.ao, quantized layers, and the quantize stage."""

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_config
from test_classify import decoder_dir, recipe, task_csv  # noqa: F401  (fixtures)

from lmforge.artifact import load, save_model_artifact
from lmforge.cli import main
from lmforge.errors import ConfigError
from lmforge.model.heads import HeadConfig, SequenceClassifier
from lmforge.model.quant import (
    Int8Head,
    QuantEmbedding,
    QuantLinear,
    pack_int4,
    quantize_asymmetric,
    quantize_model,
    quantize_symmetric,
    unpack_int4,
)


def test_symmetric_absmax_matches_the_formula_and_torch_ao():
    torch.manual_seed(0)
    w = torch.randn(6, 40)
    q, scale = quantize_symmetric(w, 8)
    assert torch.allclose(scale, w.abs().amax(1) / 127.5)
    assert q.dtype == torch.int8 and q.min() >= -128 and q.max() <= 127
    assert ((q.float() * scale[:, None] - w).abs() <= scale[:, None] / 2 + 1e-6).all()
    ao = torch.quantize_per_channel(
        w, scale.double(), torch.zeros(6, dtype=torch.long), 0, torch.qint8
    )
    # the same codes, except where w/scale is exactly +-127.5 (the row's max): a rounding tie
    diff = (ao.int_repr().int() - q.int()).abs()
    at_max = w.abs() == w.abs().amax(1, keepdim=True)
    assert diff[~at_max].max() == 0 and diff.max() <= 1


def test_asymmetric_groups_keep_zero_exact_and_match_the_formula():
    w = torch.tensor([[0.5, 1.0, 1.5, 3.0, -2.0, -1.0, 0.0, 1.0]])
    q, scale, zero = quantize_asymmetric(w, 4, group_size=4)
    # group 1: range [0, 3] (0 included): scale 3/15, zero 0; group 2: [-2, 1]: scale 3/15, zero 10
    assert torch.allclose(scale, torch.tensor([[0.2, 0.2]]))
    assert torch.equal(zero, torch.tensor([[0.0, 10.0]]))
    assert q.max() <= 15 and q[0, 6] == zero[0, 1]  # 0.0 is exactly the zero point
    deq = (q.float().reshape(1, 2, 4) - zero[..., None]) * scale[..., None]
    assert (deq.reshape(1, 8) - w).abs().max() <= 0.1 + 1e-6
    ao = torch.fake_quantize_per_channel_affine(
        w.reshape(2, 4), scale.reshape(2), zero.reshape(2).int(), 0, 0, 15
    )
    assert torch.allclose(ao.reshape(1, 8), deq.reshape(1, 8))


def test_group_size_that_does_not_divide_is_refused_with_a_divisor():
    with pytest.raises(ConfigError, match="does not divide the layer width 96.*e.g. 96"):
        quantize_asymmetric(torch.randn(4, 96), 4, group_size=128)


def test_int4_packing_round_trips():
    q = torch.randint(0, 16, (5, 32), dtype=torch.uint8)
    packed = pack_int4(q)
    assert packed.shape == (5, 16) and torch.equal(unpack_int4(packed), q)


@pytest.mark.parametrize("method,tol", [("int8", 0.05), ("int8-weight", 0.02), ("int4", 0.25)])
def test_quantized_linear_stays_close_to_fp32(method, tol):
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48)
    x = torch.randn(3, 7, 64)
    q = QuantLinear.from_linear(lin, method, group_size=32)
    want = lin(x)
    rel = (q(x) - want).norm() / want.norm()
    assert rel < tol, rel


def test_w8a8_matches_its_formula():
    """The output is the W8A8 formula (activations per row, int32 accumulation, fp32 rescale)
    evaluated in float64; the weight codes are checked against torch.ao above.

    torch.ao's quantized linear is not the reference for the output: its fbgemm kernel rounds
    differently per instruction set (AVX2's vpmaddubsw saturates int16 pair sums, AVX-512
    VNNI does not), so a comparison with it passes on one CPU and fails on another."""
    from lmforge.model.quant import int_mm_is_exact

    if not int_mm_is_exact():
        pytest.skip("torch._int_mm is wrong under this ONEDNN_MAX_CPU_ISA cap; never picked here")
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48)
    x = torch.randn(40, 64)
    q = QuantLinear.from_linear(lin, "int8", group_size=32)

    sx = x.abs().amax(dim=-1, keepdim=True) / 127.5  # fp32, as the layer computes it
    xq = torch.clamp(torch.round(x / sx), -128, 127).double()
    formula = (xq @ q.qweight.double().t()) * sx.double() * q.scale.double() + lin.bias.double()
    with torch.no_grad():
        ours, want = q.forward_with("onednn", x).double(), lin(x).double()
    # int32 accumulation is exact; only the fp32 rescale rounds (|y| ~ 1, fp32 eps ~ 1e-7)
    assert torch.allclose(ours, formula, rtol=1e-5, atol=1e-5)

    # per-row activation scales are no worse than one scale per tensor (what torch.ao uses)
    st = x.abs().amax() / 127.5
    per_tensor = torch.clamp(torch.round(x / st), -128, 127).double() * st.double()
    per_tensor = per_tensor @ (q.qweight.double() * q.scale.double()[:, None]).t()
    per_tensor = per_tensor + lin.bias.double()
    assert (ours - want).norm() <= (per_tensor - want).norm()
    assert (ours - want).norm() / want.norm() < 0.02  # 8-bit noise on both operands


def test_w8a8_fbgemm_kernel_matches_its_per_tensor_formula():
    """The kernel picked where the CPU has no int8 dot-product instructions: fbgemm's dynamic
    linear quantizes the activations per tensor, asymmetric, to 7 bits (reduce_range), on the
    same weight codes. Checked against that formula in float64; 7-bit codes cannot saturate
    AVX2's 16-bit pair sums (127 * 128 * 2 < 32767), so it holds on every x86 CPU."""
    from lmforge.model.quant import int_mm_is_exact

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48)
    x = torch.randn(40, 64)
    q = QuantLinear.from_linear(lin, "int8", group_size=32)

    lo, hi = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
    sx = (hi - lo) / 127
    zx = round(-lo / sx)
    xq = torch.clamp(torch.round(x.double() / sx) + zx, 0, 127)
    formula = ((xq - zx) @ q.qweight.double().t()) * sx * q.scale.double() + lin.bias.double()
    with torch.no_grad():
        ours, want = q.forward_with("fbgemm", x).double(), lin(x).double()
    assert torch.allclose(ours, formula, rtol=1e-4, atol=1e-3 * want.abs().max().item())
    assert (ours - want).norm() / want.norm() < 0.03

    # the packed weight follows the buffers: loading new codes changes the output
    q.load_state_dict(QuantLinear.from_linear(torch.nn.Linear(64, 48), "int8", 32).state_dict())
    with torch.no_grad():
        assert not torch.allclose(q.forward_with("fbgemm", x), ours.float())
        if int_mm_is_exact():
            assert torch.allclose(
                q.forward_with("fbgemm", x), q.forward_with("onednn", x), atol=0.05
            )


def test_int8_kernel_is_chosen_by_measurement_and_cached(tmp_path, monkeypatch):
    from lmforge.model import quant

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("LMFORGE_INT8_KERNEL", raising=False)
    calls = []

    def fake(**_):
        calls.append(1)
        return {"onednn": 0.2, "fbgemm": 0.01}

    monkeypatch.setattr(quant, "_time_int8_kernels", fake)
    monkeypatch.setattr(quant, "int_mm_is_exact", lambda: True)  # the cap case: its own test
    quant.int8_kernel.cache_clear()
    try:
        assert quant.int8_kernel() == "fbgemm"
        quant.int8_kernel.cache_clear()
        assert quant.int8_kernel() == "fbgemm" and len(calls) == 1  # read from the cache
        monkeypatch.setenv("LMFORGE_INT8_KERNEL", "onednn")
        quant.int8_kernel.cache_clear()
        assert quant.int8_kernel() == "onednn"
        monkeypatch.setenv("LMFORGE_INT8_KERNEL", "vnni")
        quant.int8_kernel.cache_clear()
        with pytest.raises(ConfigError, match="use one of onednn, fbgemm"):
            quant.int8_kernel()
        # quantize refuses it before anything is written (not at its first evaluation)
        src = tmp_path / "fp32"
        save_model_artifact(src, _classifier(), "sequence_classifier")
        assert main(["quantize", str(src), "--method", "int8", "--out", str(tmp_path / "q")]) == 2
        assert not (tmp_path / "q").exists()
    finally:
        quant.int8_kernel.cache_clear()


def test_int4_kernel_is_the_dequantized_formula():
    """ATen's int4 layout holds our codes, and its (q - 8) * s + (8 - z) * s is our (q - z) * s:
    the output equals x @ dequantized^T up to bf16 (activations, scales, zero points)."""
    torch.manual_seed(0)
    x = torch.randn(3, 64)
    for out_features, used in ((48, True), (40, False)):  # 40: not a multiple of 16: fallback
        q = QuantLinear.from_linear(torch.nn.Linear(64, out_features), "int4", group_size=32)
        with torch.no_grad():
            want = x @ q.dequantized_weight().t() + q.bias
            got = q(x)
        assert bool(q.__dict__.get("_packed")) == used
        assert got.dtype == torch.float32 and got.shape == (3, out_features)
        assert (got - want).abs().max() <= 0.02 * want.abs().max(), (got - want).abs().max()
    # new codes are packed again
    q.load_state_dict(QuantLinear.from_linear(torch.nn.Linear(64, 40), "int4", 32).state_dict())
    with torch.no_grad():
        assert not torch.allclose(q(x), got)


def test_int8_decode_kernels_are_the_dequantized_formula(monkeypatch):
    """One row (decoding) takes the decode kernel; both candidates are x @ (q * s)^T + b, the
    weight-only one up to bf16, fbgemm up to its 7-bit activations."""
    from lmforge.model import quant

    torch.manual_seed(0)
    q = QuantLinear.from_linear(torch.nn.Linear(64, 48), "int8", group_size=0)
    x = torch.randn(1, 64)
    with torch.no_grad():
        want = x @ q.dequantized_weight().t() + q.bias
        for kernel, tol in (("int8pack", 0.01), ("fbgemm", 0.03)):
            got = q.forward_with(kernel, x)
            assert (got - want).norm() / want.norm() < tol, kernel
        calls = []
        monkeypatch.setattr(quant, "int8_decode_kernel", lambda: calls.append(1) or "int8pack")
        assert torch.equal(q(x), q.forward_with("int8pack", x)) and calls
        calls.clear()
        q(torch.randn(quant.DECODE_ROWS + 1, 64))  # more rows: the prefill kernel
        assert not calls


def test_int8_layers_made_under_inference_mode_run_and_time_their_kernels():
    """Evaluation loads models under inference_mode: its tensors keep no version counter,
    and the kernel's packed copy must still be made once and used."""
    from lmforge.model import quant

    with torch.inference_mode():
        q = quant.QuantLinear(64, 32, True, "int8", 0)
        q.qweight.copy_(torch.randint(-127, 128, (32, 64), dtype=torch.int8))
        q.scale.fill_(1e-2)
        x = torch.randn(2, 64)
        for kernel in quant.INT8_DECODE_KERNELS:
            if kernel == "fbgemm" and "fbgemm" not in torch.backends.quantized.supported_engines:
                continue
            y = q.forward_with(kernel, x)
            assert torch.allclose(y, F.linear(x, q.dequantized_weight(), q.bias), atol=0.25)
        if "fbgemm" not in torch.backends.quantized.supported_engines:
            return
        times = quant._time_int8_decode_kernels(layers=1, k=64, n=32)
    assert set(times) == set(quant.INT8_DECODE_KERNELS) and min(times.values()) > 0


def test_int_mm_that_gives_wrong_sums_is_never_picked(monkeypatch):
    """Under ONEDNN_MAX_CPU_ISA below VNNI on a CPU with VNNI, torch._int_mm returns wrong
    sums: the kernel choice must fall to fbgemm without measuring, and forcing it is refused."""
    from lmforge.model import quant

    if "fbgemm" not in torch.backends.quantized.supported_engines:
        pytest.skip("no fbgemm on this CPU: _int_mm is the only int8 kernel")
    monkeypatch.delenv("LMFORGE_INT8_KERNEL", raising=False)
    monkeypatch.setattr(quant, "int_mm_is_exact", lambda: False)
    monkeypatch.setattr(quant, "_time_int8_kernels", lambda **_: pytest.fail("measured"))
    quant.int8_kernel.cache_clear()
    try:
        assert quant.int8_kernel() == "fbgemm"
        monkeypatch.setenv("LMFORGE_INT8_KERNEL", "onednn")
        quant.int8_kernel.cache_clear()
        with pytest.raises(ConfigError, match="_int_mm gives wrong sums.*use fbgemm"):
            quant.int8_kernel()
    finally:
        quant.int8_kernel.cache_clear()


def test_int8_decode_kernel_is_measured_once_and_can_be_forced(tmp_path, monkeypatch):
    from lmforge.model import quant

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("LMFORGE_INT8_DECODE_KERNEL", raising=False)
    calls = []
    monkeypatch.setattr(
        quant,
        "_time_int8_decode_kernels",
        lambda **_: calls.append(1) or {"fbgemm": 0.03, "int8pack": 0.02},
    )
    quant.int8_decode_kernel.cache_clear()
    try:
        if "fbgemm" in torch.backends.quantized.supported_engines:
            assert quant.int8_decode_kernel() == "int8pack"
            quant.int8_decode_kernel.cache_clear()
            assert quant.int8_decode_kernel() == "int8pack" and len(calls) == 1
        monkeypatch.setenv("LMFORGE_INT8_DECODE_KERNEL", "fbgemm")
        quant.int8_decode_kernel.cache_clear()
        assert quant.int8_decode_kernel() == "fbgemm"
        monkeypatch.setenv("LMFORGE_INT8_DECODE_KERNEL", "vnni")
        quant.int8_decode_kernel.cache_clear()
        with pytest.raises(ConfigError, match="use one of fbgemm, int8pack"):
            quant.int8_decode_kernel()
    finally:
        quant.int8_decode_kernel.cache_clear()


@pytest.mark.parametrize("tied", [True, False])
def test_lm_head_runs_as_int8_rows_and_keeps_its_weights(tmp_path, tied):
    """int8 / int4 multiply the LM head as int8 rows (symmetric per row); its parameter, a tie
    to the embedding and the artifact's keys stay as they were."""
    from lmforge.model.transformer import LanguageModel

    torch.manual_seed(0)
    cfg = tiny_config(vocab_size=64, n_embd=64, intermediate_size=128, tie_embeddings=tied)
    model = LanguageModel(cfg).eval()
    ids = torch.randint(0, 64, (1, 5))
    quantize_model(model, "int4", group_size=32)
    head = model.lm_head
    assert isinstance(head, Int8Head)
    assert (getattr(model.model.embed_tokens, "weight", None) is head.weight) == tied
    assert "lm_head.weight" in model.state_dict() and "lm_head.qweight" not in model.state_dict()
    with torch.no_grad():
        h = model.model(ids)
        codes, scale = quantize_symmetric(head.weight, 8)
        q = head._int8()
        assert torch.equal(q.qweight, codes) and torch.equal(q.scale, scale)
        assert torch.equal(model(ids), q(h))  # what the head multiplies is those rows
        want = h @ (codes.float() * scale[:, None]).t()
        assert torch.allclose(model(ids), want, atol=0.03 * want.abs().max().item())
        got = model(ids)
    save_model_artifact(
        tmp_path, model, "causal_lm", {"quantization": {"method": "int4", "group_size": 32}}
    )
    again = load(tmp_path).model
    assert isinstance(again.lm_head, Int8Head)
    with torch.no_grad():
        assert torch.equal(again(ids), got)
        again.lm_head.weight.mul_(2)  # a changed weight is quantized again
        assert not torch.allclose(again(ids), got)


def _classifier():
    torch.manual_seed(0)
    cfg = tiny_config(
        vocab_size=64, n_embd=64, intermediate_size=128, max_seq_len=32, pad_token_id=0
    )
    return SequenceClassifier(cfg, HeadConfig(num_labels=3))


@pytest.mark.parametrize("method", ["int8", "int8-weight", "int4", "bf16"])
def test_quantized_artifact_round_trips_and_is_smaller(tmp_path, method):
    model = _classifier().eval()
    ids = torch.randint(1, 64, (2, 10))
    want = model(ids)
    save_model_artifact(tmp_path / "fp32", model, "sequence_classifier")
    quantize_model(model, method, group_size=32)
    got = model(ids)
    save_model_artifact(
        tmp_path / "q",
        model,
        "sequence_classifier",
        {"quantization": {"method": method, "group_size": 32}},
    )
    again = load(tmp_path / "q").model
    assert torch.equal(again(ids), got)
    assert (got.float() - want).abs().max() < 0.1
    size = (tmp_path / "q" / "model.safetensors").stat().st_size
    assert size < 0.6 * (tmp_path / "fp32" / "model.safetensors").stat().st_size
    if method != "bf16":
        assert isinstance(again.model.embed_tokens, QuantEmbedding)
    with pytest.raises(ConfigError, match="already quantized"):
        quantize_model(again, "int8")


def test_quantize_cli_on_a_classify_run(tmp_path, decoder_dir, task_csv, capsys):  # noqa: F811
    from lmforge.stages.classify import train

    train(recipe(tmp_path, decoder_dir, task_csv, "full", epochs=2, speed=False))
    capsys.readouterr()
    out = tmp_path / "int8"
    assert main(["quantize", str(tmp_path / "full"), "--method", "int8", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (
        summary["method"] == "int8" and summary["checkpoint_mb"] < summary["source_checkpoint_mb"]
    )
    assert {"macro_f1", "latency_ms_p50", "test"} <= set(summary)
    src = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert abs(summary["test"]["macro_f1"] - src["test"]["macro_f1"]) < 0.1
    # a quantized run is a run: eval and compare work on it
    assert main(["classify", "eval", str(out), "--split", "test"]) == 0
    assert main(["compare", str(out), str(tmp_path / "full"), "--split", "test"]) == 0
    capsys.readouterr()
    assert main(["quantize", str(out), "--method", "int4", "--out", str(tmp_path / "x")]) == 2
    assert "already quantized" in capsys.readouterr().err

    # the trade-off over the two runs: table, plot, damage of int8 vs its source, a pick
    assert main(["tradeoff", str(tmp_path), "--min-macro-f1", "0", "--max-ece", "1"]) == 0
    result = json.loads((tmp_path / "tradeoff.json").read_text())
    assert {r["run"] for r in result["runs"]} == {"full", "int8"}
    assert result["damage"][0]["run"] == "int8" and result["damage"][0]["source"] == "full"
    assert result["recommended"] in ("full", "int8") and (tmp_path / "tradeoff.png").is_file()
    assert "## Recommendation" in (tmp_path / "tradeoff.md").read_text()
    assert main(["tradeoff", str(tmp_path), "--min-macro-f1", "1.01"]) == 1
    assert "no run meets every limit" in capsys.readouterr().out
    # runs of another task are refused, naming them; so is a directory with no runs
    import shutil

    shutil.copytree(out, tmp_path / "other")
    labels = json.loads((tmp_path / "other" / "labels.json").read_text())
    labels["names"] = [n + "-x" for n in labels["names"]]
    (tmp_path / "other" / "labels.json").write_text(json.dumps(labels))
    assert main(["tradeoff", str(tmp_path)]) == 2
    assert "mixes runs of different tasks" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["tradeoff", str(tmp_path / "empty")]) == 2
    assert "holds no classifier runs" in capsys.readouterr().err


def test_distillation_loss_is_the_course_formula():
    from lmforge.train.objectives import distillation_loss

    torch.manual_seed(0)
    s, t, y = torch.randn(5, 4), torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    T, a = 4.0, 0.7
    p_t = torch.softmax(t / T, -1)
    kl = (p_t * (p_t.log() - torch.log_softmax(s / T, -1))).sum(-1).mean()
    ce = torch.nn.functional.cross_entropy(s, y)
    assert torch.allclose(distillation_loss(s, t, y, T, a), a * T**2 * kl + (1 - a) * ce)
    assert torch.allclose(distillation_loss(s, t, y, T, 0.0), ce)
    assert distillation_loss(s, s, y, T, 1.0).abs() < 1e-6


def test_distill_logits_then_a_student_and_bad_caches(tmp_path, decoder_dir, task_csv, capsys):  # noqa: F811
    from lmforge.errors import CheckpointError
    from lmforge.stages.classify import train

    train(
        recipe(tmp_path, decoder_dir, task_csv, "full", epochs=2, speed=False, eval_splits=["val"])
    )
    cache = tmp_path / "teacher-logits"
    assert (
        main(["distill", "logits", "--teacher", str(tmp_path / "full"), "--out", str(cache)]) == 0
    )
    info = json.loads((cache / "examples.json").read_text())
    assert info["labels"] == ["animal", "food", "motion", "weather"] and len(info["ids"]) > 100
    distill = {"teacher_logits": str(cache), "temperature": 2.0, "alpha": 0.5}
    student = recipe(
        tmp_path,
        decoder_dir,
        task_csv,
        "probe",
        epochs=2,
        speed=False,
        eval_splits=["val"],
        distill=distill,
    )
    summary = train(student)
    assert summary["distill"]["temperature"] == 2.0 and summary["macro_f1"] > 0
    # the grid: one run per (T, alpha), a table, finished runs read back rather than retrained
    from lmforge.config import save_config

    save_config(student.model_copy(update={"out_dir": str(tmp_path / "grid")}), tmp_path / "g.yaml")
    capsys.readouterr()
    argv = [
        "distill",
        "grid",
        "--config",
        str(tmp_path / "g.yaml"),
        "--temperatures",
        "1",
        "4",
        "--alphas",
        "0.5",
    ]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "| 1 | 0.5 |" in table and "| 4 | 0.5 |" in table
    grid = json.loads((tmp_path / "grid" / "grid.json").read_text())
    assert [(r["temperature"], r["alpha"]) for r in grid] == [(1.0, 0.5), (4.0, 0.5)]
    stamp = (tmp_path / "grid" / "T1-a0.5" / "summary.json").stat().st_mtime
    assert main(argv) == 0
    assert (tmp_path / "grid" / "T1-a0.5" / "summary.json").stat().st_mtime == stamp
    # a cache from another task: labels differ, or examples are missing
    info["labels"] = ["a", "b", "c", "d"]
    (cache / "examples.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="labels differ"):
        train(student.model_copy(update={"out_dir": str(tmp_path / "s2")}))
    info["labels"] = ["animal", "food", "motion", "weather"]
    info["ids"] = info["ids"][:10] + ["0" * 16] * (len(info["ids"]) - 10)
    (cache / "examples.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="no teacher logits for"):
        train(student.model_copy(update={"out_dir": str(tmp_path / "s3")}))
