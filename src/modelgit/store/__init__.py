"""Content-addressed tensor object store (layer ``store/``)."""

from .backends import Backend, FsspecBackend, LocalBackend, open_backend
from .chunking import CHUNK_BYTES, Chunk, chunk_layout
from .encodings import ENCODINGS
from .ids import format_shape, is_object_id, object_id, parse_shape
from .store import MAX_DELTA_DEPTH, GcResult, PutResult, Store, StoreStats

__all__ = [
    "Backend", "FsspecBackend", "LocalBackend", "open_backend",
    "CHUNK_BYTES", "Chunk", "chunk_layout", "ENCODINGS",
    "format_shape", "is_object_id", "object_id", "parse_shape",
    "MAX_DELTA_DEPTH", "GcResult", "PutResult", "Store", "StoreStats",
]
