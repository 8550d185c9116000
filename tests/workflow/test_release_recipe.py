"""The recipes `modelgit release` builds follow the merge layer's rules (mergekit's)."""

import pytest

from modelgit.errors import UsageError
from modelgit.merge.recipe import parse_recipe
from modelgit.workflow.project import Project
from modelgit.workflow.releases import build_recipe


def test_release_recipes_parse_and_name_the_base_only_where_it_is_the_reference():
    project = Project()
    ties = parse_recipe(build_recipe(project, ["a", "b"], "ties", {"density": 0.5, "lambda": 0.9}))
    assert ties.base_model == "model" and [m.model for m in ties.models] == ["model+contributions/a",
                                                                            "model+contributions/b"]
    # linear has no use for a base: naming it would merge the base as a third model
    linear = parse_recipe(build_recipe(project, ["a", "b"], "linear", {"weight:a": 2.0}))
    assert linear.base_model is None and not linear.warnings
    assert linear.models[0].parameters == {"weight": 2.0}


def test_a_release_parameter_the_method_lacks_is_an_error():
    with pytest.raises(UsageError, match="unknown parameter `lambda` for linear"):
        parse_recipe(build_recipe(Project(), ["a"], "linear", {"lambda": 0.5}))
