"""The delta16 decoder as first written (modelgit 837cc48): one binary search per symbol and a
gather/scatter of the lane states per phase. Kept as a reference: the store's decoder must give
the same bytes, and refuse the same payloads, on anything (tests/store/test_half_codec_decoder.py).
"""

import numpy as np

from modelgit.store.half_codec import (_BASE, _MASK, _PIECES, NTOK, PROB_BITS, RANS_LOW, RAW_PIECE,
                                       _freqs, _keys, _parse, _unkeys)


class _Reader:
    """Vectorised rANS decoding of one symbol per given lane."""

    def __init__(self, states, words, freq, cum):
        self.x, self.words, self.ptr = states.astype(np.int64), words, 0
        self.freq, self.cum = freq.ravel(), cum.ravel()
        # where each symbol's slots start, all tables on one axis (table t at t << PROB_BITS):
        # the symbol of a slot is the last whose start is not above it (a symbol of frequency
        # 0 starts where the next one does, so it is never the last); no per-slot table
        self.starts = ((np.arange(freq.shape[0])[:, None] << PROB_BITS) + cum).ravel()

    def _advance(self, lanes, f, start, x):
        x = f * (x >> PROB_BITS) + (x & _MASK) - start
        need = np.flatnonzero(x < RANS_LOW)
        if need.size:
            if self.ptr + need.size > len(self.words):
                raise ValueError("delta16 payload ends before its last symbol")
            x[need] = (x[need] << 16) | self.words[self.ptr:self.ptr + need.size]
            self.ptr += need.size
        self.x[lanes] = x

    def number(self, lanes, tables):
        """Decode one number (a token and its raw pieces) in each of ``lanes``."""
        x = self.x[lanes]
        at = np.searchsorted(self.starts, (tables << PROB_BITS) + (x & _MASK), side="right") - 1
        tok = at - tables * NTOK
        f = self.freq[at]
        if not f.all():
            raise ValueError("delta16 symbol outside its table")
        self._advance(lanes, f, self.cum[at], x)
        value = _BASE[tok]
        for piece in range(3):
            k = _PIECES[piece][tok]
            some = np.flatnonzero(k)
            if not some.size:
                break
            sub, shift = lanes[some], PROB_BITS - k[some]
            x = self.x[sub]
            bits = (x & _MASK) >> shift
            self._advance(sub, np.int64(1) << shift, bits << shift, x)
            value[some] += bits << (RAW_PIECE * piece)
        return value


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
    order = np.argsort(ctx, kind="stable")
    sclass = cmap[ctx[order]]
    freq = _freqs(codes).reshape(-1, NTOK)
    cum = np.concatenate([np.zeros((len(freq), 1), np.int64), np.cumsum(freq, axis=1)[:, :-1]], 1)
    reader = _Reader(states, words, freq, cum)
    su = np.zeros(n, dtype=np.int32)
    pos, end = bounds[:-1].copy(), bounds[1:]
    active = np.flatnonzero(pos < end)
    for _ in range(steps):
        if not active.size:
            break
        p = pos[active]
        run = reader.number(active, sclass[p].astype(np.int64) * 2)
        hit = p + run
        if np.any(hit > end[active]):
            raise ValueError("delta16 run overshoots its lane")
        event = hit < end[active]
        ev_lanes, ev_pos = active[event], hit[event]
        su[ev_pos] = reader.number(ev_lanes, sclass[ev_pos].astype(np.int64) * 2 + 1) + 1
        pos[active] = np.where(event, hit + 1, hit)
        active = active[pos[active] < end[active]]
    if active.size:
        raise ValueError(f"delta16 payload holds more than its {steps} steps")
    if reader.ptr != len(words) or np.any(reader.x != RANS_LOW):
        raise ValueError("delta16 payload does not end where its symbols do")
    u = np.empty(n, dtype=np.int32)
    u[order] = su
    del su, order, sclass
    keys = _keys(par) + ((u >> 1) ^ -(u & 1))
    if np.any((keys < 0) | (keys > 0xFFFF)):
        raise ValueError("delta16 payload decodes to keys outside 16 bits")
    return _unkeys(keys).view(np.uint8)
