"""The adapter library: base fingerprints checked, names checked, adapters found by name."""

from __future__ import annotations

import json
import shutil

import pytest

from modelgit.errors import UsageError
from modelgit.route import Library
from modelgit.route.library import adapter_content_id, recorded_base_fingerprint


def test_library_records_fingerprints_and_ids(domains, library):
    from modelgit.fingerprint import fingerprint_dir

    assert library.base_fingerprint == fingerprint_dir(domains["base"])
    assert library.names == ("animals", "code")
    animals = library.get("animals")
    assert animals.base_fingerprint == library.base_fingerprint  # recorded by `modelgit train`
    assert animals.adapter_id == adapter_content_id(domains["animals"])
    assert animals.adapter_id != library.get("code").adapter_id


def _other_base(tmp_path, domains, name="other"):
    """The animals adapter, recorded as trained on another base."""
    moved = tmp_path / name
    shutil.copytree(domains["animals"], moved)
    config = json.loads((moved / "training_config.json").read_text())
    config["resolved"]["base_fingerprint"] = "ab" * 32
    (moved / "training_config.json").write_text(json.dumps(config))
    return str(moved)


def test_an_adapter_of_another_base_is_refused_with_the_reason(tmp_path, domains):
    other = _other_base(tmp_path, domains)
    with pytest.raises(UsageError) as caught:
        Library.from_dirs(domains["base"], {"code": domains["code"], "other": other})
    message = str(caught.value)
    assert "'other'" in message and "another base" in message and "abababab" in message
    assert "modelgit rebase" in message
    lenient = Library.from_dirs(domains["base"], {"code": domains["code"], "other": other},
                                strict=False)
    assert lenient.names == ("code",)
    assert lenient.refused[0][0] == "other" and "another base" in lenient.refused[0][1]
    assert Library.from_dirs(domains["base"], {"other": other}, allow_mismatch=True).names == ("other",)


def test_contribution_json_records_the_base_when_training_config_does_not(tmp_path, domains):
    moved = tmp_path / "contributed"
    shutil.copytree(domains["code"], moved)
    (moved / "training_config.json").unlink()
    assert recorded_base_fingerprint(str(moved)) is None
    (moved / "contribution.json").write_text(json.dumps({"base_fingerprint": "cd" * 32}))
    assert recorded_base_fingerprint(str(moved)) == "cd" * 32
    with pytest.raises(UsageError, match="another base"):
        Library.from_dirs(domains["base"], {"c": str(moved)})


@pytest.mark.parametrize("name", ["base", "../x", "", "a b", "-x", "x" * 64])
def test_unusable_names_are_refused(domains, name):
    with pytest.raises(UsageError, match="adapter name"):
        Library.from_dirs(domains["base"], [(name, domains["code"])])


def test_duplicate_names_missing_dirs_and_unknown_lookups(tmp_path, domains, library):
    with pytest.raises(UsageError, match="given twice"):
        Library.from_dirs(domains["base"], [("a", domains["code"]), ("a", domains["animals"])])
    with pytest.raises(UsageError, match="no adapter_config.json"):
        Library.from_dirs(domains["base"], {"a": str(tmp_path)})
    with pytest.raises(UsageError, match="at least one adapter"):
        Library.from_dirs(domains["base"], {})
    with pytest.raises(UsageError, match="did you mean 'animals'"):
        library.get("animal")
