"""The workflow's fixtures (a model repository around a tiny causal LM, its remote, contributor
clones, three tiny text domains and their suites), for the export tests."""

from workflow.conftest import contributor, domain_data, hub, suites, tiny_base  # noqa: F401
from gitutil import git_env  # noqa: F401  (autouse: private HOME and git identity)
from model_fixtures import one_thread  # noqa: F401  (autouse)
