"""Loading: the one path rule (source / is_local), config-vs-weights checks, dtypes, quiet dependencies."""
from __future__ import annotations

import os
import shutil

import pytest
import torch

from saescope.errors import ModelLoadError, SaescopeError
from saescope.lm import LanguageModel

pytestmark = pytest.mark.usefixtures("one_thread")


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert isinstance(exc.value, SaescopeError) and "\n" not in msg and msg
    return msg


def test_every_spelling_of_a_directory_is_the_same_local_model(gpt2_dir, gpt2_hub, tmp_path, monkeypatch):
    shutil.copytree(gpt2_dir, tmp_path / "models" / "tiny")
    monkeypatch.chdir(tmp_path)
    spellings = ["models/tiny", "./models/tiny", "models/tiny/", "./models//tiny", str(tmp_path / "models" / "tiny"),
                 "models/../models/tiny"]
    monkeypatch.setenv("HOME", str(tmp_path))
    spellings.append("~/models/tiny")
    loaded = [LanguageModel.from_pretrained(s, device="cpu") for s in spellings]
    assert {(m.source, m.is_local, str(m.path)) for m in loaded} == {("local", True, str(tmp_path / "models" / "tiny"))}
    assert [m.name for m in loaded] == spellings            # the name stays as the user wrote it
    hub = LanguageModel.from_pretrained(gpt2_hub, device="cpu")
    assert (hub.source, hub.is_local) == ("hub", False)
    bundled = LanguageModel.from_pretrained("tiny", device="cpu")
    assert (bundled.source, bundled.is_local) == ("bundled", True)
    os.mkdir(tmp_path / "gpt2")                               # a directory shadows a hub id of the same name
    with pytest.raises(ModelLoadError) as e:
        LanguageModel.from_pretrained("gpt2", device="cpu")
    assert "config.json" in _one_line(e)
