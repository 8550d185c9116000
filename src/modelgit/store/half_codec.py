"""Delta coding of 16-bit floats (bf16, fp16) near the entropy of the update.

A fine-tune moves a 16-bit weight by a fraction of its last place: most elements do not change
at all, the others by one or two steps. Byte planes + zstd (the ``delta`` encoding) pay about
twice the information for that, because Huffman-coded bytes cost at least one bit each and a
sparse stream of ±1 breaks every match. This codec spends close to the entropy instead:

1. Both versions are mapped to monotone integer keys (negative floats reversed below the
   positive ones, so that -0 and +0 are neighbours and a sign change is a small step), and the
   difference is zig-zag mapped (0, -1, 1, -2... -> 0, 1, 2, 3...).
2. The context of an element is the exponent and the top two mantissa bits of its *parent*
   value, which the decoder knows: the same update is many steps for a small weight and a
   fraction of a step for a large one, and a relative update is half a step larger at the top
   of a binade than at its bottom. Elements are stably sorted by context, so that each
   context's elements sit together.
3. The sorted stream is a sequence of zero runs, each ended by a non-zero value (an *event*).
   Runs and values are cut into tokens (small numbers as themselves, larger ones as their
   magnitude class plus raw low bits) and entropy-coded with rANS under a frequency table per
   context class (adjacent contexts with few events share a class), sent in the payload.
4. The stream is cut into lanes of about ``EVENTS_PER_LANE`` events each, coded side by side:
   numpy then works on all lanes at once, one event per step (interleaved rANS).

Payload layout (all integers little-endian)::

    offset  size  field
    0       1     format version (1)
    1       1     context shift m: the context of an element is (parent & 0x7fff) >> m
    2       4     header length H (u32)
    6       H     header, zstd: u16 classes C, u32 lanes L, u32 steps T, then
                  u8[(0x7fff >> m) + 1] class of each context, u8[C, 2, NTOK] frequency codes
                  (runs, values), u32[L + 1] lane boundaries (element offsets in the sorted
                  stream), u32[L] final rANS states
    6+H     ...   rANS words (u16), in the order the decoder reads them

A writer MUST NOT use more than ``MAX_STEPS`` steps (items in one lane): the decoder's work is
a numpy pass per step, and a payload from elsewhere must not buy minutes of it. A decoder MUST
reject a version it does not know, a header that does not parse, more than ``MAX_CLASSES``
classes, more steps than ``MAX_STEPS``, lanes that do not tile the stream, a run that
overshoots its lane, more steps than the header states, reads past the words, words left over,
and a key outside 0..65535. The store checks the content id after decoding.
"""

from __future__ import annotations

import struct

import numpy as np
import zstandard

from .encodings import zstd_decompress_bounded

__all__ = ["encode", "decode"]

VERSION = 1
PROB_BITS = 15  # rANS probability precision: frequencies sum to 2**15
RANS_LOW = 1 << 16  # states live in [2**16, 2**32); words of 16 bits renormalise them
_MASK = (1 << PROB_BITS) - 1
CONTEXT_MANTISSA = 2  # mantissa bits of the parent, below its exponent, in the context
RAW_PIECE = 12  # raw low bits are coded as uniform symbols of at most this many bits
DIRECT = 8  # numbers below this are their own token
NTOK = DIRECT + 4 * 26  # numbers up to 2**29 (runs of a 256 MiB object fit)
EVENTS_PER_LANE = 384  # more lanes: fewer numpy steps, but 4-8 bytes of state and bounds each
MAX_STEPS = 4096  # lanes of EVENTS_PER_LANE events take at most 2 * EVENTS_PER_LANE + 1
BLOCK = 1 << 18  # items tokenised at a time (bounds the encoder's temporaries)
MAX_CLASSES = 256  # a context's class is one byte
CLASS_EVENTS = 3072  # a context class collects at least this many events (its table costs bytes)
_PREFIX = struct.Struct("<BBI")
_HEAD = struct.Struct("<HII")
MAX_HEADER = 1 << 24


def _keys(bits):
    """uint16 float bit patterns -> int32 keys, monotone in the float's value (bijective):
    positive b -> b ^ 0x8000, negative b -> 0xFFFF - b (= b ^ 0xFFFF), in 16-bit passes."""
    bits = np.asarray(bits, dtype=np.uint16)
    flip = (bits >> 15) * np.uint16(0x7FFF)
    flip ^= np.uint16(0x8000)
    flip ^= bits
    return flip.astype(np.int32)


def _unkeys(keys):
    """int keys in 0..65535 -> little-endian uint16 bit patterns (inverse of :func:`_keys`)."""
    keys = keys.astype(np.uint16)
    flip = (np.uint16(1) - (keys >> 15)) * np.uint16(0x7FFF)
    flip ^= np.uint16(0x8000)
    flip ^= keys
    return flip.astype("<u2")


def _tokens(u):
    """numbers (int64, < 2**29) -> (token, raw bit count, raw bits).

    Numbers below DIRECT are their own token; a larger one is its magnitude class and the two
    bits below its leading one, followed by the rest as raw bits."""
    e = np.frexp(np.maximum(u, 1).astype(np.float64))[1].astype(np.int64) - 1  # exact floor(log2)
    small = u < DIRECT
    nbits = np.where(small, 0, e - 2)
    token = np.where(small, u, DIRECT + (e - 3) * 4 + ((u >> nbits) & 3))
    raw = u & ((np.int64(1) << nbits) - 1)
    return token.astype(np.uint8), nbits, raw


def _token_base():
    tok = np.arange(NTOK)
    e = 3 + (tok - DIRECT) // 4
    base = np.where(tok < DIRECT, tok, (4 + (tok - DIRECT) % 4) << np.maximum(e - 2, 0))
    nbits = np.where(tok < DIRECT, 0, e - 2)
    return base.astype(np.int64), nbits.astype(np.int64)


_BASE, _NBITS = _token_base()
# bits of raw piece k of each token's number (pieces of RAW_PIECE bits, lowest first)
_PIECES = [np.clip(_NBITS - RAW_PIECE * k, 0, RAW_PIECE) for k in range(3)]
# frequency codes: code c > 0 weighs (16 + c % 16) << (c // 16), about 2**(c / 16): integers,
# so that encoder and decoder derive the same table on every machine
_WEIGHT = np.array([0] + [(16 + c % 16) << (c // 16) for c in range(1, 256)], dtype=np.int64)


def _codes(counts):
    """Counts (..., NTOK) -> uint8 codes: 0 for absent symbols, log-scale for present ones."""
    counts = counts.astype(np.float64)
    top = counts.max(axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        codes = 255 + np.round(16 * np.log2(counts / np.maximum(top, 1)))
    return np.where(counts > 0, np.clip(codes, 1, 255), 0).astype(np.uint8)


def _freqs(codes):
    """uint8 codes (..., NTOK) -> frequencies summing to 2**PROB_BITS per table (integer math)."""
    w = _WEIGHT[codes.astype(np.int64)]
    present = (w > 0).sum(axis=-1, keepdims=True)
    total = np.maximum(w.sum(axis=-1, keepdims=True), 1)
    spare = (1 << PROB_BITS) - present
    f = np.where(w > 0, 1 + w * spare // total, 0)
    rest = (1 << PROB_BITS) - f.sum(axis=-1, keepdims=True)
    f = f + rest * (np.arange(NTOK) == np.argmax(w, axis=-1)[..., None])
    # an all-absent table (an unused class) stays all zero: no symbol may be coded with it
    return np.where(present > 0, f, 0)


def _classes(ctx_of_events, nctx):
    """Context -> class: adjacent contexts merged until a class holds CLASS_EVENTS events."""
    counts = np.bincount(ctx_of_events, minlength=nctx)
    cmap = np.zeros(nctx, dtype=np.uint8)
    cls, acc = 0, 0
    for c in range(nctx):
        if acc >= CLASS_EVENTS and cls < 255:
            # only start a new class if what remains is enough for one
            if counts[c:].sum() >= CLASS_EVENTS:
                cls, acc = cls + 1, 0
        cmap[c] = cls
        acc += counts[c]
    return cmap, cls + 1


def _layout(su, sclass, n):
    """The items of every lane, lane after lane, each with its step (its rank in its lane); the
    lane bounds (element offsets, lanes + 1); and the most items a lane has.

    An item is a zero run ended by an event (a non-zero value) or by the end of its lane. Lanes
    hold about EVENTS_PER_LANE events each; a lane starts at an event."""
    ev = np.flatnonzero(su).astype(np.int32)  # positions: n < 2**31
    lanes = max(1, min(len(ev) // EVENTS_PER_LANE, 1 << 20))
    bounds = np.empty(lanes + 1, dtype=np.int64)
    bounds[0], bounds[-1] = 0, n
    if lanes > 1:
        bounds[1:-1] = ev[(np.arange(1, lanes) * len(ev)) // lanes]
    ev_lane = (np.searchsorted(bounds, ev, side="right") - 1).astype(np.int32)
    # run start of each event: the previous event of its lane + 1, or the lane's start
    start = np.empty_like(ev)
    if len(ev):
        start[0] = 0
        start[1:] = ev[:-1] + 1
        first = np.ones(len(ev), dtype=bool)
        first[1:] = ev_lane[1:] != ev_lane[:-1]
        start[first] = bounds[ev_lane[first]]
    # the tail run of each lane: from its last event + 1 (or its start) to its end, if any
    last = np.full(lanes, -1, dtype=np.int32)
    if len(ev):
        last[ev_lane] = ev  # later events overwrite earlier ones (numpy assigns in order)
    tail_start = np.where(last >= 0, last + 1, bounds[:-1]).astype(np.int32)
    has_tail = tail_start < bounds[1:]
    item_lane = np.concatenate([ev_lane, np.flatnonzero(has_tail).astype(np.int32)])
    item_start = np.concatenate([start, tail_start[has_tail]])
    item_end = np.concatenate([ev, bounds[1:][has_tail].astype(np.int32)])  # event or lane end
    is_event = np.concatenate([np.ones(len(ev), bool), np.zeros(int(has_tail.sum()), bool)])
    del ev, ev_lane, start
    order = np.argsort(item_start, kind="stable")  # lanes are ranges of positions, in order
    item_lane, item_start, item_end, is_event = (a[order] for a in
                                                 (item_lane, item_start, item_end, is_event))
    per_lane = np.bincount(item_lane, minlength=lanes)
    first_item = np.concatenate([[0], np.cumsum(per_lane)[:-1]])
    step = (np.arange(len(item_lane)) - first_item[item_lane]).astype(np.int32)
    steps = int(per_lane.max()) if len(item_lane) else 0
    items = dict(lane=item_lane, step=step, run=item_end - item_start,
                 run_class=sclass[np.minimum(item_start, n - 1)] if n else item_start,
                 event=is_event, pos=item_end)
    return items, bounds, steps


def _phases(tokens, raw, freq, cum, table):
    """(freq, start) of every rANS symbol of some numbers: their tokens, then the raw pieces
    that any of them has (uint16 arrays; freq 0 where a number has no such piece)."""
    flat = table * NTOK + tokens
    # frequencies are at most 2**15, starts below it: 16 bits each
    out = [(freq.ravel()[flat].astype(np.uint16), cum.ravel()[flat].astype(np.uint16))]
    for piece in range(3):
        k = _PIECES[piece][tokens]
        if not k.any():
            break
        value = (raw >> (RAW_PIECE * piece)) & ((np.int64(1) << k) - 1)
        f = np.where(k > 0, np.int64(1) << (PROB_BITS - k), 0)
        out.append((f.astype(np.uint16), (value * f).astype(np.uint16)))
    return out


def _block(items, su, sclass, lo, hi):
    """The runs and the values of items lo..hi: (numbers, table, item offsets or None) each."""
    run = items["run"][lo:hi].astype(np.int64)
    run_table = items["run_class"][lo:hi].astype(np.int64) * 2
    ev = np.flatnonzero(items["event"][lo:hi])
    pos = items["pos"][lo:hi][ev]
    value = su[pos].astype(np.int64) - 1  # events are non-zero
    value_table = sclass[pos].astype(np.int64) * 2 + 1
    return (run, run_table, None), (value, value_table, ev)


def _counts_and_tables(items, su, sclass, nclass):
    """The frequency codes of the class tables, and the (freq, start) arrays of every coding
    phase, aligned with the items. Items are tokenised BLOCK at a time, twice (to count, then
    to code): int64 temporaries of every event at once took ~150 MB for a dense 4 MiB chunk."""
    n_items = len(items["run"])
    counts = np.zeros(nclass * 2 * NTOK, np.int64)
    top = [0, 0]  # the largest token of runs and of values: it has the most raw pieces
    for lo in range(0, n_items, BLOCK):
        for kind, (numbers, table, _) in enumerate(_block(items, su, sclass, lo, lo + BLOCK)):
            tok = _tokens(numbers)[0]
            counts += np.bincount(table * NTOK + tok, minlength=counts.size)
            if tok.size:
                top[kind] = max(top[kind], int(tok.max()))
    codes = _codes(counts.reshape(nclass, 2, NTOK))
    freq = _freqs(codes).reshape(nclass * 2, NTOK)
    cum = np.concatenate([np.zeros((nclass * 2, 1), np.int64), np.cumsum(freq, axis=1)[:, :-1]], 1)
    grids = []
    for kind in (0, 1):
        pieces = sum(1 for piece in range(3) if _PIECES[piece][top[kind]] > 0)
        grids.append([(np.zeros(n_items, np.uint16), np.zeros(n_items, np.uint16))
                      for _ in range(1 + pieces)])
    for lo in range(0, n_items, BLOCK):
        for kind, (numbers, table, ev) in enumerate(_block(items, su, sclass, lo, lo + BLOCK)):
            tok, _, raw = _tokens(numbers)
            at = slice(lo, lo + BLOCK) if ev is None else lo + ev
            for (grid_f, grid_s), (f, start) in zip(grids[kind], _phases(tok, raw, freq, cum, table)):
                grid_f[at], grid_s[at] = f, start
    return codes, grids[0] + grids[1]


def _code_steps(phases, lane_of, offsets, lanes: int):
    """rANS-code the items, last step first: (the words in the decoder's order, final states).

    Each step is one item per lane of some lanes (ascending), gathered once; an item without a
    symbol in a phase (frequency 0 in ``phases``, set to 2**PROB_BITS here, in place) takes the
    identity symbol (start 0: the state does not change and emits no word), so that every phase
    works on the whole step. ``x // f`` is taken in float64: exact, as x < 2**32 and
    f <= 2**15 leave the quotient at least 2**-15 from the next integer, far above float64's
    rounding, and several times cheaper than integer division."""
    for f_all, _ in phases:
        f_all[f_all == 0] = 1 << PROB_BITS
    x = np.full(lanes, RANS_LOW, dtype=np.int64)
    words = []
    for t in range(len(offsets) - 2, -1, -1):
        lo, hi = offsets[t], offsets[t + 1]
        step_lanes = lane_of[lo:hi].astype(np.intp)
        xa = x.take(step_lanes)
        for f_all, s_all in reversed(phases):
            f = f_all[lo:hi]
            emit = (xa >> (32 - PROB_BITS)) >= f
            if emit.any():
                # lanes in descending order: the whole stream is reversed at the end
                words.append(xa[emit][::-1].astype("<u2"))  # the low 16 bits
                xa[emit] >>= 16
            q = (xa / f).astype(np.int64)
            xa += q * ((1 << PROB_BITS) - f.astype(np.int64))
            xa += s_all[lo:hi]
        x[step_lanes] = xa
    # reversed: the decoder reads step by step, phase by phase, lanes in ascending order
    body = np.concatenate(words)[::-1] if words else np.zeros(0, "<u2")
    return body, x


def encode(raw, parent, mantissa_bits: int) -> bytes:
    """Payload of ``raw`` (uint16 floats) as a delta against ``parent`` of the same size.

    Args:
        mantissa_bits: of the float format: 7 for bf16, 10 for fp16.

    Raises:
        ValueError: sizes differ or are odd.
    """
    if len(raw) != len(parent) or len(raw) % 2:
        raise ValueError("delta16 needs a parent of the same, even, size")
    par = np.frombuffer(parent, dtype="<u2")
    d = _keys(np.frombuffer(raw, dtype="<u2")) - _keys(par)
    shift = max(1, mantissa_bits - CONTEXT_MANTISSA)
    nctx = (0x7FFF >> shift) + 1
    ctx = ((par & 0x7FFF) >> shift).astype(np.uint16)
    order = np.argsort(ctx, kind="stable")
    del par
    d = d[order]
    su = (d << 1) ^ (d >> 31)  # zig-zag, < 2**17 (int32)
    del d
    sctx = ctx[order]
    n = len(su)
    cmap, nclass = _classes(sctx[su != 0], nctx)
    sclass = cmap[sctx]  # uint8
    del sctx, order, ctx
    items, bounds, steps = _layout(su, sclass, n)
    lanes = len(bounds) - 1
    if steps > MAX_STEPS:  # cannot happen with EVENTS_PER_LANE events a lane
        raise ValueError(f"delta16 lanes of {steps} steps, more than MAX_STEPS (a modelgit bug)")
    # items in decoding order: step by step, lanes ascending within a step (one array at a
    # time, so that the old order of each is freed before the next is copied)
    by_step = np.argsort(items["step"].astype(np.int64) * lanes + items["lane"], kind="stable")
    for key in list(items):
        items[key] = items[key][by_step]
    del by_step
    codes, phases = _counts_and_tables(items, su, sclass, nclass)
    lane_of = items["lane"]
    offsets = np.searchsorted(items["step"], np.arange(steps + 1))
    del items, su, sclass

    body, x = _code_steps(phases, lane_of, offsets, lanes)
    header = b"".join([_HEAD.pack(nclass, lanes, steps), cmap.tobytes(), codes.tobytes(),
                       bounds.astype("<u4").tobytes(), x.astype("<u4").tobytes()])
    zheader = zstandard.ZstdCompressor(level=19).compress(header)
    return _PREFIX.pack(VERSION, shift, len(zheader)) + zheader + body.tobytes()


def _parse(payload, n: int):
    """The header fields of a payload, checked. Raises ValueError."""
    if len(payload) < _PREFIX.size:
        raise ValueError("delta16 payload shorter than its prefix")
    version, shift, hlen = _PREFIX.unpack_from(payload)
    if version != VERSION:
        raise ValueError(f"delta16 format version {version} is newer than this modelgit "
                         f"(knows {VERSION}): upgrade modelgit")
    if not 0 < shift < 15 or hlen > MAX_HEADER or len(payload) < _PREFIX.size + hlen:
        raise ValueError(f"delta16 header is malformed (context shift {shift}, length {hlen})")
    try:
        header = zstd_decompress_bounded(bytes(payload[_PREFIX.size:_PREFIX.size + hlen]),
                                         MAX_HEADER)
    except zstandard.ZstdError as exc:
        raise ValueError(f"delta16 header does not decompress: {exc}") from None
    if len(header) < _HEAD.size:
        raise ValueError("delta16 header is shorter than its counts")
    nclass, lanes, steps = _HEAD.unpack_from(header)
    nctx = (0x7FFF >> shift) + 1
    sizes = [nctx, nclass * 2 * NTOK, 4 * (lanes + 1), 4 * lanes]
    if not nclass or not lanes or len(header) != _HEAD.size + sum(sizes) or steps > MAX_STEPS:
        raise ValueError("delta16 header does not match its counts")
    if nclass > MAX_CLASSES:
        # the class map is one byte a context: no writer has more; the decoder's symbol table
        # costs 128 KiB a class, which a payload from elsewhere must not choose
        raise ValueError(f"delta16 header has {nclass} classes, more than {MAX_CLASSES}")
    parts, at = [], _HEAD.size
    for size in sizes:
        parts.append(header[at:at + size])
        at += size
    cmap = np.frombuffer(parts[0], np.uint8)
    codes = np.frombuffer(parts[1], np.uint8).reshape(nclass, 2, NTOK)
    bounds = np.frombuffer(parts[2], "<u4").astype(np.int64)
    states = np.frombuffer(parts[3], "<u4").astype(np.int64)
    if cmap.max() >= nclass or bounds[0] != 0 or bounds[-1] != n or np.any(np.diff(bounds) < 0) \
            or np.any(states < RANS_LOW):
        raise ValueError("delta16 header is inconsistent (classes, lanes or states)")
    if (len(payload) - _PREFIX.size - hlen) % 2:
        raise ValueError("delta16 words are cut in the middle of one")
    words = np.frombuffer(payload, "<u2", offset=_PREFIX.size + hlen).astype(np.int64)
    return shift, cmap, codes, bounds, states, steps, words


# a uniform symbol of k raw bits (k <= RAW_PIECE) has frequency 2**(PROB_BITS - k) and starts at
# its bits << (PROB_BITS - k); k = 0 is the identity on a state (frequency 2**PROB_BITS, start 0)
_RAW_SHIFT = (PROB_BITS - np.arange(RAW_PIECE + 1)).astype(np.uint32)
_RAW_LOW = ((np.uint32(1) << _RAW_SHIFT) - np.uint32(1)).astype(np.uint32)


class _Reader:
    """Vectorised rANS decoding of one number per lane, for every open lane at once.

    The caller keeps the states of the open lanes (uint32: a state stays below 2**32 through
    every step), in ascending lane order: words are consumed in that order, as the encoder wrote
    them. A chunk takes ~2 * EVENTS_PER_LANE steps of a few coding phases each, on arrays of
    one element per lane, so the numpy calls per phase are kept few: a symbol is found with one
    table lookup (no binary search), and a lane with nothing to decode in a phase takes the
    identity symbol (frequency 2**PROB_BITS, start 0: the state does not change and reads no
    word) instead of being gathered out and scattered back."""

    def __init__(self, words, freq, cum):
        self.words, self.ptr = words.astype(np.uint32), 0
        tables = len(freq)
        # the symbol of every slot of every table (table t at t << PROB_BITS), as its flat
        # index + 1 into the lookups below; index 0 has frequency 0 and is refused: the slots
        # of a table without symbols (an unused class) point there. One more table, the last,
        # holds the identity symbol only.
        flat = np.arange(1, tables * NTOK + 1, dtype=np.uint16).reshape(tables, NTOK)
        reps = freq.copy()
        absent = reps.sum(axis=1) == 0
        flat[absent, 0], reps[absent, 0] = 0, 1 << PROB_BITS
        identity = tables * NTOK + 1
        self.symbol = np.concatenate([np.repeat(flat.ravel(), reps.ravel()),
                                      np.full(1 << PROB_BITS, identity, np.uint16)])
        self.identity_key = tables << PROB_BITS
        self.check = bool(absent.any())
        self.freq = np.concatenate([[0], freq.ravel(), [1 << PROB_BITS]]).astype(np.uint32)
        self.cum = np.concatenate([[0], cum.ravel(), [0]]).astype(np.uint32)
        token = np.concatenate([[0], np.tile(np.arange(NTOK), tables), [0]])
        self.base, self.nbits = _BASE[token], _NBITS[token]
        # the first raw piece of each symbol, looked up rather than computed
        first = np.minimum(self.nbits, RAW_PIECE)
        self.shift0, self.low0 = _RAW_SHIFT[first], _RAW_LOW[first]

    def _renormalise(self, x):
        """Pull a word into every state that fell below RANS_LOW (``x`` in place)."""
        need = (x < RANS_LOW).nonzero()[0]
        if need.size:
            if self.ptr + need.size > len(self.words):
                raise ValueError("delta16 payload ends before its last symbol")
            x[need] = (x.take(need) << 16) | self.words[self.ptr:self.ptr + need.size]
            self.ptr += need.size

    def number(self, x, table_key):
        """Decode one number (a token and its raw pieces) from each state of ``x`` (uint32,
        updated in place) under the tables ``table_key >> PROB_BITS`` (int64). Returns the
        numbers (int64). Lookups use ``take`` with native indices: numpy's fancy indexing
        costs several times more on arrays of this size."""
        slot = x & _MASK
        at = self.symbol.take(table_key | slot).astype(np.intp)
        f = self.freq.take(at)
        if self.check and not f.all():
            raise ValueError("delta16 symbol outside its table")
        x >>= PROB_BITS
        x *= f
        x += slot
        x -= self.cum.take(at)
        self._renormalise(x)
        value = self.base.take(at)
        nbits = self.nbits.take(at)
        if not nbits.any():
            return value
        shift, low = self.shift0.take(at), self.low0.take(at)
        for piece in range(3):
            slot = x & _MASK
            x >>= PROB_BITS
            x <<= shift
            x += slot & low
            self._renormalise(x)
            value += (slot >> shift).astype(np.int64) << (RAW_PIECE * piece)
            nbits -= RAW_PIECE
            if piece == 2 or not (nbits > 0).any():
                break
            k = np.clip(nbits, 0, RAW_PIECE)
            shift, low = _RAW_SHIFT.take(k), _RAW_LOW.take(k)
        return value


def _decode_events(reader, sclass, bounds, states, steps):
    """Walk the lanes step by step: (sorted positions, zig-zagged values) of every event.

    The arrays of the open lanes (state, position, end) are kept compact, in ascending lane
    order, and shrink only when a lane ends."""
    # table keys: runs of an element of class c use table 2c, values table 2c + 1
    run_key = sclass.astype(np.int64) << (PROB_BITS + 1)
    value_key = 1 << PROB_BITS
    pos, end, x = bounds[:-1].copy(), bounds[1:].copy(), states.astype(np.uint32)
    out_pos, out_val, out_event = [], [], []  # every lane's, and which of them are events
    done = pos >= end
    for step in range(steps + 1):
        if done.any():
            # a lane is done when its runs reach its end; a run that overshoots it is damage
            if np.any(x[done] != RANS_LOW) or np.any(pos[done] != end[done]):
                raise ValueError("delta16 payload does not end where its symbols do, or a run "
                                 "overshoots its lane")
            live = ~done
            pos, end, x = pos[live], end[live], x[live]
        if not pos.size or step == steps:
            break
        hit = pos + reader.number(x, run_key.take(pos))
        is_event = hit < end
        if is_event.any():
            # lanes whose run ended at their lane's end decode the identity symbol
            keys = np.where(is_event, run_key.take(hit, mode="clip") | value_key,
                            reader.identity_key)
            out_val.append(reader.number(x, keys))
            out_pos.append(hit)
            out_event.append(is_event)
            hit = hit + is_event
        pos = hit
        done = pos >= end
    if pos.size:
        raise ValueError(f"delta16 payload holds more than its {steps} steps")
    if reader.ptr != len(reader.words):
        raise ValueError("delta16 payload does not end where its symbols do")
    if not out_pos:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    event = np.concatenate(out_event)
    return np.concatenate(out_pos)[event], np.concatenate(out_val)[event] + 1


def decode(payload, parent) -> np.ndarray:
    """The uint16 content a payload holds, given its parent's content (flat uint8 array).

    Raises:
        ValueError: with the reason, on any malformed payload.
    """
    par = np.frombuffer(parent, dtype="<u2")
    n = len(par)
    shift, cmap, codes, bounds, states, steps, words = _parse(payload, n)
    ctx = ((par & 0x7FFF) >> shift).astype(np.uint16)
    if ctx.size and int(ctx.max()) >= len(cmap):
        raise ValueError("delta16 parent has a context outside the header's map")
    # the class of each element of the sorted stream: contexts in order, each as often as the
    # parent has it (no gather through the sort)
    sclass = np.repeat(cmap, np.bincount(ctx, minlength=len(cmap)))
    freq = _freqs(codes).reshape(-1, NTOK)
    cum = np.concatenate([np.zeros((len(freq), 1), np.int64), np.cumsum(freq, axis=1)[:, :-1]], 1)
    ev_pos, u = _decode_events(_Reader(words, freq, cum), sclass, bounds, states, steps)
    del sclass
    # only the changed elements are touched: the others are their parent's bits
    at = np.argsort(ctx, kind="stable")[ev_pos]
    del ctx
    keys = _keys(par[at]) + ((u >> 1) ^ -(u & 1))
    if np.any((keys < 0) | (keys > 0xFFFF)):
        raise ValueError("delta16 payload decodes to keys outside 16 bits")
    out = par.astype("<u2")  # a copy
    out[at] = _unkeys(keys)
    return out.view(np.uint8)
