"""FitConfig's settings mean what their names say: ``head_epochs`` (the head phase's
ceiling; the old key ``epochs`` is still read, with a warning), ``class_weight``
checked like every other setting, and docs/training.md's defaults equal FitConfig's."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from transferkit import FitConfig, InputError

PAGE = Path(__file__).resolve().parents[1] / "docs" / "training.md"


def test_head_epochs_is_the_head_phases_ceiling():
    config = FitConfig(head_epochs=7, fine_tune_epochs=3).validate()
    assert (config.head_epochs, config.fine_tune_epochs) == (7, 3)
    assert "epochs" not in config.to_dict() and config.to_dict()["head_epochs"] == 7
    with pytest.raises(InputError, match="head-epochs must be >= 1, got 0"):
        FitConfig(head_epochs=0).validate()


def test_the_old_key_epochs_is_read_as_head_epochs_with_a_warning(tmp_path, caplog):
    """Config files and run folders written before the rename still load."""
    caplog.set_level(logging.WARNING, logger="transferkit")
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"epochs": 12, "lr": 0.01}))
    config = FitConfig.from_file(path)
    assert config.head_epochs == 12 and config.lr == 0.01
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "config key 'epochs' is now called 'head_epochs'; reading it as 'head_epochs'"
    ]
    assert FitConfig.from_dict({"epochs": 5}).head_epochs == 5


def test_old_and_new_key_together_are_refused():
    with pytest.raises(
        InputError, match=r"both 'epochs' and 'head_epochs'.*keep only 'head_epochs'"
    ):
        FitConfig.from_dict({"epochs": 5, "head_epochs": 6})


def test_class_weight_is_balanced_or_none():
    assert FitConfig().class_weight is None
    assert FitConfig(class_weight="balanced").validate().class_weight == "balanced"
    with pytest.raises(InputError) as caught:
        FitConfig(class_weight="balance").validate()
    message = str(caught.value)
    assert "--class-weight 'balance' is not one of balanced" in message and "\n" not in message


def _documented_defaults() -> dict[str, str]:
    """The settings table of docs/training.md: FitConfig key -> default as written."""
    text = PAGE.read_text()
    table = text[text.index("| flag | key |") :].split("\n\n")[0]
    return dict(re.findall(r"^\| [^|]* \| `([a-z_]+)` \| `([^`]*)` \|", table, flags=re.M))


def test_the_documented_defaults_are_fitconfigs():
    documented = _documented_defaults()
    assert {"head_epochs", "fine_tune_epochs", "class_weight", "patience"} <= set(documented)
    defaults = FitConfig()
    for key, written in documented.items():
        value = getattr(defaults, key)
        assert written == (
            "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
        ), key
    text = PAGE.read_text()
    for flag in ("--head-epochs N", "--fine-tune-epochs N", "--class-weight balanced"):
        assert flag in text, flag


def test_a_misspelt_config_key_names_the_close_ones(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"fine_tune_lrr": 0.001}))
    with pytest.raises(InputError, match="key 'fine_tune_lrr'; did you mean 'fine_tune_lr'"):
        FitConfig.from_file(path)
