"""modelgit: build machine-learning models the way open source builds software.

The foundation is a content-addressed tensor store with lossless delta compression; see
:mod:`modelgit.checkpoint` for the high-level calls re-exported here.
"""

from .checkpoint import add, collect_garbage, load_manifest, materialize, store_report, verify
from .errors import ModelgitError
from .manifest import Manifest
from .store import Store

__version__ = "0.1.0"

__all__ = ["add", "collect_garbage", "load_manifest", "materialize", "store_report", "verify",
           "Manifest", "ModelgitError", "Store", "__version__"]
