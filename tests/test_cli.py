import subprocess
import sys

import pytest

from lmforge.cli import build_parser, main


def test_help_lists_every_verb(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for verb in ("data", "tokenizer", "pretrain", "generate"):
        assert verb in out


@pytest.mark.parametrize(
    "argv",
    [
        ["pretrain", "--help"],
        ["generate", "--help"],
        ["tokenizer", "train", "--help"],
        ["data", "build", "--help"],
    ],
)
def test_each_verb_explains_itself(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    assert len(capsys.readouterr().out) > 300


def test_unknown_override_is_a_clean_error(capsys):
    code = main(["pretrain", "--config", "configs/demo/pretrain.yaml", "trainer.max_step=5"])
    err = capsys.readouterr().err
    assert code == 2 and "did you mean 'trainer.max_steps'" in err and "Traceback" not in err


def test_print_config_resolves_the_preset(capsys):
    assert (
        main(
            [
                "pretrain",
                "--config",
                "configs/demo/pretrain.yaml",
                "model.n_layer=2",
                "--print-config",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "n_layer: 2" in out and "n_embd: 384" in out


def test_missing_tokenizer_says_how_to_make_one(tmp_path, capsys):
    code = main(
        [
            "pretrain",
            "--config",
            "configs/demo/pretrain.yaml",
            f"tokenizer={tmp_path}/tok",
            f"out_dir={tmp_path}/run",
        ]
    )
    assert code == 2
    assert "lmforge tokenizer train" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_python_dash_m_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "lmforge", "--help"], capture_output=True, text=True, check=True
    )
    assert "pretrain" in out.stdout
    assert build_parser().prog == "lmforge"
