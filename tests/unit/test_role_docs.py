"""The role READMEs' "Role Variables" sections match meta/argument_specs.yml and defaults."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from modelserve import role_docs

REPO = Path(__file__).resolve().parents[2]
ROLES = REPO / "roles"


def test_every_role_readme_is_generated_from_its_argument_specs() -> None:
    stale = role_docs.stale_readmes(ROLES)
    assert not stale, f"stale role READMEs, run `python -m modelserve.role_docs`: {stale}"


def test_every_documented_variable_is_in_the_readme_with_its_default() -> None:
    for role in role_docs.documented_roles(ROLES):
        readme = (role / "README.md").read_text()
        defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {}
        specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())
        for variable in role_docs.variables(specs):
            assert f"    {variable.name}:" in readme, (role.name, variable.name)
            if variable.name in defaults:
                block = role_docs.default_blocks((role / "defaults" / "main.yml").read_text())
                assert yaml.safe_load(block[variable.name]) == {
                    variable.name: defaults[variable.name]
                }


@pytest.fixture
def roles_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "roles"
    shutil.copytree(ROLES, copy)
    assert role_docs.main(["--roles-dir", str(copy)]) == 0
    assert role_docs.main(["--check", "--roles-dir", str(copy)]) == 0
    return copy


def test_check_catches_an_edited_description_and_regeneration_fixes_it(
    roles_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    specs = roles_copy / "logrotate" / "meta" / "argument_specs.yml"
    specs.write_text(specs.read_text().replace("Rotated logs kept.", "Rotated logs retained."))
    capsys.readouterr()

    assert role_docs.main(["--check", "--roles-dir", str(roles_copy)]) == 1
    assert "logrotate/README.md" in capsys.readouterr().err

    readme = roles_copy / "logrotate" / "README.md"
    head = readme.read_text().split(role_docs.BEGIN)[0]
    assert role_docs.main(["--roles-dir", str(roles_copy)]) == 0
    assert "Rotated logs retained." in readme.read_text()
    assert readme.read_text().startswith(head), "the hand-written part is kept"
    assert role_docs.main(["--check", "--roles-dir", str(roles_copy)]) == 0


def test_check_catches_a_changed_default_and_a_hand_edit(roles_copy: Path) -> None:
    defaults = roles_copy / "logrotate" / "defaults" / "main.yml"
    defaults.write_text(defaults.read_text().replace("logrotate_keep: 14", "logrotate_keep: 7"))
    assert role_docs.stale_readmes(roles_copy) == [roles_copy / "logrotate" / "README.md"]
    role_docs.main(["--roles-dir", str(roles_copy)])
    assert "    logrotate_keep: 7\n" in (roles_copy / "logrotate" / "README.md").read_text()

    readme = roles_copy / "docker" / "README.md"
    readme.write_text(readme.read_text().replace("Users added to the docker group.", "Users."))
    assert role_docs.stale_readmes(roles_copy) == [readme]


def test_a_default_without_an_argument_spec_shows_up(roles_copy: Path) -> None:
    defaults = roles_copy / "logrotate" / "defaults" / "main.yml"
    defaults.write_text(defaults.read_text() + "logrotate_extra: 1\n")
    assert role_docs.stale_readmes(roles_copy) == [roles_copy / "logrotate" / "README.md"]
    role_docs.main(["--roles-dir", str(roles_copy)])
    text = (roles_copy / "logrotate" / "README.md").read_text()
    assert "    logrotate_extra: 1\n\nNot in meta/argument_specs.yml: describe it there." in text


def test_a_new_role_gets_a_readme(roles_copy: Path) -> None:
    role = roles_copy / "newrole"
    (role / "meta").mkdir(parents=True)
    (role / "defaults").mkdir()
    (role / "meta" / "main.yml").write_text("galaxy_info:\n  description: A new service.\n")
    (role / "meta" / "argument_specs.yml").write_text(
        "argument_specs:\n  main:\n    options:\n"
        "      newrole_port:\n        type: int\n        description: Its port.\n"
    )
    (role / "defaults" / "main.yml").write_text("---\n# Why 9000.\nnewrole_port: 9000\n")

    assert role_docs.stale_readmes(roles_copy) == [role / "README.md"]
    role_docs.main(["--roles-dir", str(roles_copy)])
    text = (role / "README.md").read_text()
    assert text.startswith("# Role: newrole\n\nA new service.\n")
    assert "    newrole_port: 9000\n\nIts port." in text
    assert role_docs.stale_readmes(roles_copy) == []


# Role variables carry their role's prefix (never a bare YAML 1.1 word such as "on").
_names = st.from_regex(r"[a-z]{1,8}_[a-z0-9_]{1,12}", fullmatch=True)
# PyYAML does not read back its own dump of YAML 1.1's extra line breaks (NEL, U+2028/9).
_text = st.text(st.characters(exclude_characters="\x85\u2028\u2029"), max_size=20)
_scalars = st.none() | st.booleans() | st.integers() | _text
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_names, inner, max_size=3),
    max_leaves=8,
)


@given(st.dictionaries(_names, _values, min_size=1, max_size=6), _text)
def test_default_blocks_quote_each_value_as_yaml_reads_it(
    variables: dict[str, object], comment: str
) -> None:
    # Comments and blank lines between the variables, as in a real defaults file.
    comment_line = "# " + " ".join(comment.split())
    text = "---\n" + "".join(
        f"{comment_line}\n{yaml.safe_dump({name: value}, allow_unicode=True)}\n"
        for name, value in variables.items()
    )
    blocks = role_docs.default_blocks(text)
    assert set(blocks) == set(variables)
    for name, value in variables.items():
        assert yaml.safe_load(blocks[name]) == {name: value}
