"""File manifests (`kind: manifest`): a pool, or any split, listed file by file.

`root` is a `.parquet` or `.csv` (`.tsv`) file with a `path` column and an optional `label` (int,
-1/empty = unknown) or `class` (name) column. Paths are relative to the manifest's folder, or
absolute; ids are the paths exactly as written. Manifest paths are only ever *read*: ids go into
label/selection tables as strings and are never joined to an output folder. Read with pyarrow.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from .sources import FileSource, Source, register_source

__all__ = ["ManifestSource", "read_manifest"]


@dataclass(eq=False)
class ManifestSource(FileSource):
    """Image files listed in a manifest; `root` is the manifest's folder, `ids` the paths as written
    (absolute paths stay absolute: `root / "/abs/x.png"` is `/abs/x.png`). Read-only by design."""
    manifest: str = ""

    def _hash_rows(self, h, rows: np.ndarray | None, content=None) -> None:
        super()._hash_rows(h, rows, content)
        h.update(self.manifest.encode())


def _read_table(path: Path):
    import pyarrow as pa
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq
            names = pq.read_schema(path).names
            cols = [c for c in ("path", "label", "class") if c in names]
            if "path" not in cols:
                raise UserError(f"manifest {path}: no 'path' column (found {names[:8]})")
            return pq.read_table(path, columns=cols)
        if suffix in (".csv", ".tsv", ".txt"):
            import pyarrow.csv as pcsv
            types = {"path": pa.string(), "class": pa.string(), "label": pa.int64()}
            parse = pcsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
            conv = pcsv.ConvertOptions(column_types=types, strings_can_be_null=False)
            return pcsv.read_csv(path, parse_options=parse, convert_options=conv)
    except (pa.ArrowInvalid, OSError) as e:
        raise UserError(f"manifest {path}: cannot read it ({str(e).splitlines()[0][:160]})") from None
    raise UserError(f"manifest {path}: expected a .parquet or .csv file")


@register_source("manifest")
def read_manifest(root: str, split: str, in_chans: int) -> Source:
    path = Path(root)
    if not path.is_file():
        raise UserError(f"manifest not found: {path} (a .parquet or .csv file with a 'path' column)")
    table = _read_table(path)
    if "path" not in table.column_names:
        raise UserError(f"manifest {path}: no 'path' column (found {table.column_names[:8]})")
    col = table.column("path")
    if col.null_count:
        raise UserError(f"manifest {path}: {col.null_count} rows have no path")
    ids = [str(p) for p in col.to_pylist()]
    empty = next((r for r, p in enumerate(ids) if not p.strip()), None)
    if empty is not None:
        raise UserError(f"manifest {path}: row {empty + 1} has an empty path")
    if len(set(ids)) != len(ids):
        seen, dup = set(), None
        for p in ids:
            if p in seen:
                dup = p
                break
            seen.add(p)
        raise UserError(f"manifest {path}: path '{dup}' is listed more than once (ids must be unique)")
    n = len(ids)
    classes = None
    if "label" in table.column_names:
        lab = table.column("label")
        import pyarrow.compute as pc
        try:
            lab = pc.cast(lab, "int64")
        except Exception:  # noqa: BLE001 - pyarrow raises several types for bad casts
            raise UserError(f"manifest {path}: column 'label' must hold integers (-1 or empty = unknown)") from None
        labels = np.asarray(lab.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
        known = labels[labels >= 0]
        if known.size:
            classes = [str(c) for c in range(int(known.max()) + 1)]
    elif "class" in table.column_names:
        names = [("" if c is None else str(c)) for c in table.column("class").to_pylist()]
        classes = sorted({c for c in names if c})
        lookup = {c: i for i, c in enumerate(classes)}
        labels = np.asarray([lookup.get(c, -1) for c in names], dtype=np.int64)
        classes = classes or None
    else:
        labels = np.full(n, -1, dtype=np.int64)
    if n == 0:
        raise UserError(f"manifest {path}: no rows")
    return ManifestSource(path.stem, ids, labels, classes, in_chans, root=path.parent.resolve(),
                          manifest=str(path))
