"""What any model-file loader reads before it deserialises anything: the first bytes, and
the magic numbers that tell a zip, an HDF5 file, a NumPy array, a pickle or text apart.

Shared by `torch_files` and `keras_files`, so that a file of the other framework (an HDF5
`.h5` handed to the PyTorch loader, a pickle handed to the Keras one) gets the same one-line
answer from both."""

from __future__ import annotations

from pathlib import Path

from auditor.errors import UsageFailure

SNIFF_BYTES = 512
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header; an empty archive
NUMPY_MAGIC = b"\x93NUMPY"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
TRUST_HINT = "pass --trust to load it anyway, only if you trust where the file came from"


def read_head(path: Path) -> tuple[int, bytes]:
    """(size in bytes, the first SNIFF_BYTES); one line and exit 2 when the file is missing
    or unreadable. A directory is the caller's business."""
    if not path.exists():
        raise UsageFailure(f"{path}: no such file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            return size, fh.read(SNIFF_BYTES)
    except OSError as exc:
        raise UsageFailure(f"{path}: cannot read ({exc.strerror or exc})") from None


def is_pickle(head: bytes) -> bool:
    """A pickle stream of protocol 2-5 (what torch.save's legacy format and pickle.dump write)."""
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def looks_like_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
