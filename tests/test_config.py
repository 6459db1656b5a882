import pytest

from lmforge.config import Section, load_config, parse_override
from lmforge.errors import ConfigError
from lmforge.train.trainer import TrainerConfig


class Recipe(Section):
    name: str = "x"
    trainer: TrainerConfig = TrainerConfig()


def test_dotted_override_sets_nested_key(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("trainer:\n  max_steps: 10\n")
    cfg = load_config(
        Recipe, path, ["trainer.max_steps=50", "trainer.lr=3e-4", "trainer.compile=true"]
    )
    assert cfg.trainer.max_steps == 50
    assert cfg.trainer.lr == pytest.approx(3e-4)
    assert cfg.trainer.compile is True


def test_unknown_key_names_the_closest_valid_key(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("trainer:\n  max_step: 10\n")
    with pytest.raises(
        ConfigError, match=r"trainer\.max_step.*did you mean 'trainer\.max_steps'"
    ) as e:
        load_config(Recipe, path)
    assert str(path) in str(e.value)


def test_unknown_override_is_rejected():
    with pytest.raises(ConfigError, match="did you mean 'trainer.warmup_steps'"):
        load_config(Recipe, None, ["trainer.warmup_step=5"])


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match="trainer.max_steps"):
        load_config(Recipe, None, ["trainer.max_steps=lots"])


def test_override_without_equals_is_explained():
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_override("trainer.max_steps")


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Recipe, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Recipe, bad)
