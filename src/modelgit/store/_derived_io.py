"""The derived-object half of :class:`~modelgit.store.store.Store` (see :mod:`.derived` for the
format and the rules): writing a recipe, reading one (computed, checked, cached), the inputs it
names. A mixin, so that the store's module stays about storing bytes.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import TYPE_CHECKING

from ..errors import ObjectMissingError, StoreError
from .backends import LocalBackend
from .derived import DERIVED, Recipe, compute, parse_recipe, recipe_input_ids
from .encodings import sum_of_squares
from .ids import object_id
from .objectfile import ObjectHeader, pack_header, unpack_header

if TYPE_CHECKING:
    from .store import PutResult

__all__ = ["DerivedObjects", "DERIVED_CACHE"]

DERIVED_CACHE = "cache/derived"  # computed bytes of derived objects: ``cache/derived/<id>``
#: how deep derived inputs may nest (a release merged onto a release's derived weights...)
MAX_DERIVED_DEPTH = 8
_nesting = threading.local()  # the depth of the computation this thread is in


class DerivedObjects:
    """Methods of :class:`~modelgit.store.store.Store` for derived objects."""

    def put_derived(self, recipe: Recipe, dtype: str, shape: tuple[int, ...],
                    expected=None) -> "PutResult | None":
        """Store the object that ``recipe`` computes as that recipe (see :mod:`.derived`).

        The bytes are computed here from the inputs as stored (each read back and verified),
        and the recipe is stored only when they equal ``expected`` (the bytes the caller
        wants to store, when it has them): a computation that does not reproduce them is never
        relied on. An object already present (whatever its encoding) is kept.

        Returns:
            The put's result, or None when the computation does not give ``expected`` (the
            caller then stores the bytes with :meth:`put`).
        Raises:
            ObjectMissingError: an input is not in the store.
            StoreError: the recipe is malformed (a modelgit bug).
        """
        payload = recipe.to_bytes()
        if self._writers and not all(self.has(ref.oid) for ref in recipe.inputs):
            self.flush()  # inputs written in this batch (staged) become readable
        try:
            parse_recipe(payload, dtype, tuple(shape))  # the checks a reader makes
            raw = compute(recipe, dtype, tuple(shape), lambda ref: self._derived_input("new", ref))
        except ValueError as exc:
            raise StoreError(f"cannot store a derived object of {recipe.fn}: {exc} "
                             "(a modelgit bug)") from None
        if expected is not None and bytes(memoryview(expected).cast("B")) != raw:
            return None
        oid = object_id(dtype, tuple(shape), raw)
        if self.freshen(oid):
            return _result(oid, False, 0, None)
        self.use_derived()
        head = pack_header(DERIVED, 0, dtype, tuple(shape), len(raw), None,
                           sum_of_squares(raw, dtype))
        if self._writers and hasattr(self.backend, "stage"):
            self.backend.stage(self._key(oid), head, payload)
        else:
            self.backend.write_atomic(self._key(oid), head + payload)
        self._cache_put(oid, raw)
        return _result(oid, True, len(head) + len(payload), DERIVED.name)

    def derived_inputs(self, oid: str, head: ObjectHeader | None = None) -> list[str]:
        """The ids of the inputs of ``oid`` when it is a derived object, else ``[]`` (an
        unknown function's inputs too: gc and transfers keep and move them all the same).

        Raises:
            CorruptObjectError: the object is derived but its recipe does not parse.
        """
        head = head or self.header(oid)
        if head.encoding is not DERIVED:
            return []
        blob = self._read(oid)
        try:
            return recipe_input_ids(memoryview(blob)[unpack_header(blob).payload_offset:])
        except ValueError as exc:
            raise self._corrupt(oid, str(exc), blob) from None

    def _derived_input(self, oid: str, ref, fn: str = ""):
        """The verified content of input ``ref`` of derived object ``oid``."""
        depth = getattr(_nesting, "depth", 0)
        try:
            head = self.header(ref.oid)
            if head.dtype != ref.dtype or tuple(head.shape) != ref.shape:
                raise ValueError(f"its input {ref.oid} is {head.dtype} {list(head.shape)}, not "
                                 f"{ref.dtype} {list(ref.shape)} as the recipe says")
            if head.encoding is DERIVED and depth >= MAX_DERIVED_DEPTH:
                # a release on a release on ... is a chain; a loop of recipes ends here too
                raise ValueError(f"its inputs are derived more than {MAX_DERIVED_DEPTH} deep")
            _nesting.depth = depth + 1
            return self._load(ref.oid)[1]
        except ObjectMissingError as exc:
            if exc.oid != ref.oid:
                raise
            raise ObjectMissingError(
                f"object {ref.oid}, an input of derived object {oid} ({fn or 'a recipe'}), is "
                f"missing from the store at {self.url}; fetch it (`modelgit fetch`, or "
                "`modelgit checkout` in a repository) from the remote that has the derived "
                "object", ref.oid) from None
        finally:
            _nesting.depth = depth

    def _load_derived(self, oid: str, head: ObjectHeader, blob, with_size: bool):
        """(header, content) of derived object ``oid``: from the cache, else computed from
        its inputs, checked against the id either way."""
        try:
            recipe = parse_recipe(memoryview(blob)[head.payload_offset:], head.dtype, head.shape)
        except ValueError as exc:
            raise self._corrupt(oid, f"bad recipe: {exc}", blob) from None
        raw = self._cache_get(oid, head)
        if raw is None:
            try:
                raw = compute(recipe, head.dtype, head.shape,
                              lambda ref: self._derived_input(oid, ref, recipe.fn))
            except ValueError as exc:
                raise self._corrupt(oid, f"its recipe ({recipe.fn}) cannot run: {exc}", blob) from None
            if object_id(head.dtype, head.shape, raw) != oid:
                raise self._corrupt(
                    oid, f"computing its recipe ({recipe.fn}) from its inputs does not reproduce "
                    "its id: the recipe was changed, or this machine computes differently", blob)
            self._cache_put(oid, raw)
        if with_size:
            return head, raw, len(blob) - head.payload_offset, 0
        return head, raw

    def _cache_on(self) -> bool:
        return (self.quarantine and isinstance(self.backend, LocalBackend)
                and os.environ.get("MODELGIT_DERIVED_CACHE", "1") != "0")

    def _cache_get(self, oid: str, head: ObjectHeader):
        """The cached content of derived ``oid``, verified; None when absent or damaged."""
        if not self._cache_on():
            return None
        key = f"{DERIVED_CACHE}/{oid}"
        try:
            raw = self.backend.read(key)
        except (FileNotFoundError, OSError):
            return None
        if len(raw) != head.raw_len or object_id(head.dtype, head.shape, raw) != oid:
            self.backend.delete(key)  # damaged: computed again
            return None
        return raw

    def _cache_put(self, oid: str, raw) -> None:
        if self._cache_on():
            with contextlib.suppress(OSError, StoreError):  # a cache: a full disk only costs time
                self.backend.write_atomic(f"{DERIVED_CACHE}/{oid}", raw)

    def drop_derived_cache(self, keep: set[str] = frozenset()) -> int:
        """Delete the cached content of derived objects (all but ``keep``); returns how many."""
        dropped = 0
        for key in list(self.backend.list(DERIVED_CACHE)):
            if key.rsplit("/", 1)[-1] not in keep:
                self.backend.delete(key)
                dropped += 1
        return dropped


def _result(*fields):
    from .store import PutResult  # the store module imports this one

    return PutResult(*fields)
