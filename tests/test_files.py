"""Small file helpers: large writes go out in pieces, at the position or at an offset."""

import os

from modelgit import _files


def test_write_all_writes_everything_in_pieces_of_at_most_write_piece(tmp_path, monkeypatch):
    data = os.urandom(3 * _files.WRITE_PIECE + 1234)
    sizes, real_write, real_pwrite = [], os.write, os.pwrite

    def write(fd, piece):
        sizes.append(len(piece))
        return real_write(fd, piece[:len(piece) // 2 or 1])  # a short write: the rest follows

    def pwrite(fd, piece, offset):
        sizes.append(len(piece))
        return real_pwrite(fd, piece, offset)

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "pwrite", pwrite)
    path = tmp_path / "f.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        _files.write_all(fd, b"head", piece_size=_files.WRITE_PIECE)
        _files.write_all(fd, data, piece_size=_files.WRITE_PIECE)
        _files.write_all(fd, data[:10], offset=2, piece_size=_files.WRITE_PIECE)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"he" + data[:10] + (b"head" + data)[12:]
    assert max(sizes) <= _files.WRITE_PIECE
