"""Samples held on the host as stored, read a batch of rows at a time.

`Rows` stands where a float32 array of samples [N, *sample_shape] would: `len`, `shape`, slicing
and integer indexing (`x[a:b]`, `x[idx]`, `np.take(x, idx, axis=0)`) return float32 values, the
8-bit ones read as value / 255, with the run's scaling applied. It keeps the samples as they are
stored:

- 8-bit data stay uint8 (a quarter of float32's memory). `Rows.stored()` is the same rows as
  stored: what goes to the device, where the model reads uint8 as value / 255 (gmvc/core/inputs.py).
- An `.npy` file, or an uncompressed `.npz` member, above `LAZY_ABOVE_BYTES` is not loaded: its
  rows are read from the file when asked for (positioned reads, `os.preadv`), so the process holds
  only the rows in use, whatever N is. A memory map would do the same but keep every page it has
  touched in the process's resident memory.

Whole-data statistics (`min`, `max`, `bounds`, `chunks`) read CHUNK_BYTES at a time. A source
(NpyFile, _ArraySource, a folder's or a tfds set's images) has `shape`, `dtype`, `nbytes`, `len`
and `read(rows)`, and may have a faster `read_range(start, stop)`.
"""
import os
import pathlib
import weakref
import zipfile

import numpy as np

from gmvc.core.inputs import host_values
from gmvc.errors import DataError

LAZY_ABOVE_BYTES = 256 * 2 ** 20     # arrays stored in files above this are read on demand
CHUNK_BYTES = 64 * 2 ** 20           # a whole-data pass reads this much at a time


class NpyFile:
    """The array of an .npy file (or of an uncompressed member of an .npz) read by rows from the
    file, without loading or mapping it."""

    def __init__(self, path, member=None):
        self.path, self.member = pathlib.Path(path), member
        start, end = 0, os.path.getsize(self.path)
        if member is not None:
            with zipfile.ZipFile(self.path) as z:
                info = z.getinfo(member + ".npy")
                if info.compress_type != zipfile.ZIP_STORED:
                    raise ValueError("compressed member")
            with open(self.path, "rb") as f:        # the local header: 30 bytes + name + extra
                f.seek(info.header_offset)
                head = f.read(30)
                start = info.header_offset + 30 + int.from_bytes(head[26:28], "little") + \
                    int.from_bytes(head[28:30], "little")
            end = start + info.file_size
        with open(self.path, "rb") as f:
            f.seek(start)
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"npy format {version}")
            header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = header(f)
            self.offset = f.tell()
        if (fortran and len(shape) > 1) or len(shape) < 1:
            raise ValueError("Fortran order or no rows")
        if dtype.hasobject:
            raise DataError(f"data file {str(self.path)!r} holds Python objects, not numbers: pickles are never "
                            f"loaded")
        self.shape, self.dtype = tuple(shape), dtype
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        if self.offset + self.row_bytes * shape[0] > end:
            raise DataError(f"data file {str(self.path)!r} is truncated: its header promises {shape} of {dtype}")
        self.fd = os.open(self.path, os.O_RDONLY)
        weakref.finalize(self, os.close, self.fd)

    def __reduce__(self):
        raise TypeError("an NpyFile holds an open file; it is not copied or pickled")

    @property
    def nbytes(self):
        return self.row_bytes * self.shape[0]

    def __len__(self):
        return self.shape[0]

    def read(self, rows):
        """The stored rows `rows` (sorted or not, repeats allowed) as a new array."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        out = np.empty((len(rows),) + self.shape[1:], self.dtype)
        if not len(rows):
            return out
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        if np.all(order == np.arange(len(rows))) and srt[-1] - srt[0] == len(rows) - 1:
            return self.read_range(int(srt[0]), int(srt[-1]) + 1)       # one run, in order
        flat = out.reshape(len(rows), -1).view(np.uint8).reshape(len(rows), self.row_bytes)
        # runs of consecutive rows are one read each
        breaks = np.flatnonzero(np.diff(srt) != 1) + 1
        for run in np.split(np.arange(len(srt)), breaks):     # a repeated row starts a new run
            block = np.empty((len(run), self.row_bytes), np.uint8)
            self._read_into(block, int(srt[run[0]]))
            flat[order[run]] = block
        return out

    def read_range(self, start, stop):
        out = np.empty((max(0, stop - start),) + self.shape[1:], self.dtype)
        self._read_into(out, start)
        return out

    def _read_into(self, out, first):
        """Fill `out` (contiguous) with the bytes of the rows from `first`, in reads of at most
        1 GiB (one pread returns at most about 2 GiB)."""
        if out.size == 0:
            return
        view, done, at = memoryview(out).cast("B"), 0, self.offset + first * self.row_bytes
        while done < len(view):
            got = os.preadv(self.fd, [view[done:done + 2 ** 30]], at + done)
            if got == 0:
                rows = len(view) // max(1, self.row_bytes)
                raise DataError(f"data file {str(self.path)!r}: rows {first}..{first + rows - 1} could not be read "
                                f"(the file changed or is truncated)")
            done += got


class _ArraySource:
    """An in-memory array with NpyFile's reading interface."""

    def __init__(self, a):
        self.a, self.shape, self.dtype = a, a.shape, a.dtype
        self.nbytes = a.nbytes

    def __len__(self):
        return len(self.a)

    def read(self, rows):
        return self.a[np.asarray(rows, np.int64).reshape(-1)]

    def read_range(self, start, stop):
        return self.a[start:stop]


class Rows:
    """Samples as stored, read as float32 values (see the module docstring)."""

    def __init__(self, source, sample_shape=None, index=None, transform=None, stored=False):
        self.source = _ArraySource(source) if isinstance(source, np.ndarray) else source
        self.sample_shape = tuple(self.source.shape[1:] if sample_shape is None else sample_shape)
        self.index, self.transform, self.is_stored = index, transform, stored
        self._bounds = None

    # -- views ---------------------------------------------------------------------------------
    def _replace(self, **kw):
        args = dict(source=self.source, sample_shape=self.sample_shape, index=self.index, transform=self.transform,
                    stored=self.is_stored)
        args.update(kw)
        return Rows(**args)

    def reshape_samples(self, sample_shape):
        return self._replace(sample_shape=tuple(sample_shape))

    def subset(self, index):
        """The rows `index` (an integer array) as a view."""
        index = np.asarray(index, np.int64)
        return self._replace(index=index if self.index is None else self.index[index])

    def head(self, n):
        return self if n >= len(self) else self.subset(np.arange(n))

    def with_transform(self, fn):
        """Values passed through fn (float32 -> float32, row-wise) when read."""
        return self._replace(transform=fn)

    def stored(self):
        """The same rows read as stored (uint8 stays uint8) where no transform applies; else self."""
        if self.transform is None and self.source.dtype == np.uint8:
            return self._replace(stored=True)
        return self

    # -- the array interface -------------------------------------------------------------------
    @property
    def dtype(self):
        return np.dtype(np.uint8) if self.is_stored else np.dtype(np.float32)

    @property
    def shape(self):
        return (len(self),) + self.sample_shape

    @property
    def ndim(self):
        return 1 + len(self.sample_shape)

    @property
    def nbytes(self):
        return len(self) * int(np.prod(self.sample_shape, dtype=np.int64)) * self.dtype.itemsize

    def __len__(self):
        return len(self.source) if self.index is None else len(self.index)

    def _read(self, rows):
        if self.index is not None:
            rows = self.index[rows]
        return self._finish(self.source.read(rows), len(rows))

    def _read_range(self, start, stop):
        if self.index is not None or not hasattr(self.source, "read_range"):
            return self._read(np.arange(start, stop))
        return self._finish(self.source.read_range(start, stop), max(0, stop - start))

    def _finish(self, raw, n):
        raw = raw.reshape((n,) + self.sample_shape)
        if self.is_stored:
            return raw
        x = host_values(raw).astype(np.float32, copy=False)
        return x if self.transform is None else self.transform(x)

    def __getitem__(self, key):
        rest, lead = (), 1                  # lead: the axes the row index gives the result
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        n = len(self)
        if key is Ellipsis:
            key, rest = slice(None), (Ellipsis,) + rest
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            out = self._read_range(start, stop) if step == 1 else self._read(np.arange(start, stop, step))
        elif isinstance(key, (int, np.integer)):
            i = int(key) + n if key < 0 else int(key)
            if not 0 <= i < n:
                raise IndexError(f"row {key} out of range for {n} rows")
            out = self._read(np.asarray([i]))[0]
            return out[rest] if rest else out
        else:
            key = np.asarray(key)
            if key.dtype == bool:
                if key.shape != (n,):
                    raise IndexError(f"a boolean index of shape {key.shape} for {n} rows")
                key = np.flatnonzero(key)
            key = key.astype(np.int64)
            if key.size and (key.min() < -n or key.max() >= n):
                raise IndexError(f"rows out of range for {n} rows")
            key = np.where(key < 0, key + n, key)
            out = self._read(key.reshape(-1)).reshape(key.shape + self.sample_shape)
            lead = key.ndim
        return out[(slice(None),) * lead + rest] if rest else out

    def take(self, indices, axis=0, out=None, mode="raise"):
        if axis != 0 or out is not None:
            raise NotImplementedError("Rows.take reads rows (axis 0) only")
        return self[np.asarray(indices)]

    def __array__(self, dtype=None, copy=None):
        a = self[:]
        return a if dtype is None else a.astype(dtype)

    # numpy's whole-array methods, on every row read into memory
    def reshape(self, *shape):
        return np.asarray(self).reshape(*shape)

    def astype(self, dtype, **kw):
        return np.asarray(self).astype(dtype, **kw)

    def mean(self, *a, **kw):
        return np.asarray(self).mean(*a, **kw)

    def std(self, *a, **kw):
        return np.asarray(self).std(*a, **kw)

    def chunks(self):
        """(start, values) over the rows, CHUNK_BYTES at a time."""
        step = max(1, CHUNK_BYTES // max(1, int(np.prod(self.sample_shape, dtype=np.int64)) * 4))
        for start in range(0, len(self), step):
            yield start, self[start:start + step]

    def min(self):
        return min(float(c.min()) for _, c in self.chunks())

    def max(self):
        return max(float(c.max()) for _, c in self.chunks())

    def bounds(self):
        """(low, high) the values lie in: [0, 1] for 8-bit data read as value / 255 (nothing is
        read); else the smallest and largest value, in one pass (kept for the next call)."""
        if self.source.dtype == np.uint8 and self.transform is None:
            return 0.0, 1.0
        if self._bounds is None:
            parts = [(float(c.min()), float(c.max())) for _, c in self.chunks()]
            self._bounds = (min(p[0] for p in parts), max(p[1] for p in parts))
        return self._bounds

    def __repr__(self):
        where = f"file {str(self.source.path)!r}" if isinstance(self.source, NpyFile) else "memory"
        return f"Rows({list(self.shape)}, stored as {self.source.dtype} in {where})"


def chunks(x):
    """(start, values) over the rows of x: Rows by chunks, an array as one chunk."""
    return x.chunks() if isinstance(x, Rows) else [(0, x)]


def stored(x):
    """x's rows as stored (Rows.stored), or the array x."""
    return x.stored() if isinstance(x, Rows) else x


def open_lazy(path):
    """Rows reading the array of `path` (an .npy, or the member x of an .npz, told apart by
    their first bytes) from the file, or None where it is small (then it is loaded),
    compressed, in Fortran order, or not an array file (then np.load says what it is)."""
    with open(path, "rb") as f:
        magic = f.read(6)
    member = None if magic == b"\x93NUMPY" else "x" if magic.startswith(b"PK") else False
    if member is False:
        return None
    try:
        f = NpyFile(path, member)
    except DataError:
        raise
    except (ValueError, KeyError, OSError, zipfile.BadZipFile):
        return None
    return Rows(f) if f.nbytes > LAZY_ABOVE_BYTES else None
