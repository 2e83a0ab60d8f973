"""fedquad's TSV/CSV reader against `datasets.load_dataset("csv")` on the benchmark files.

    .venv/bin/python benchmarks/data_readers.py [--data-root ../shared/data] [--json]

For SST-2 train, RTE train and MRPC dev: rows and texts that differ from fedquad's reading, with
`load_dataset`'s defaults and with the options that make it read the GLUE files verbatim
(`quoting=3`, `keep_default_na=False`); then how a small CSV of texts that look like missing
values or numbers is typed; the files `load_dataset` writes into its cache folder per load; and
the import and read times. docs/design.md ("Reading data files") quotes the output.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from fedquad.datasets import load_tsv, resolve_data_root

FILES = (("sst2", "train.tsv", "sentence"), ("rte", "train.tsv", "sentence1"), ("mrpc", "dev.tsv", "#1 String"))
VERBATIM = {"quoting": 3, "keep_default_na": False}


def _read(load_dataset, path: str, cache: str, **options):
    try:
        return load_dataset("csv", data_files=path, split="train", cache_dir=cache, **options), None
    except Exception as exc:  # what a user would see: report it, go on
        cause = exc.__cause__ or exc
        return None, f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1]}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=None)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = p.parse_args()
    root = resolve_data_root(args.data_root)
    start = time.perf_counter()
    import datasets
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL + 1)  # errors are reported in the table
    out = {"import_datasets_s": time.perf_counter() - start, "files": {}}
    for task, name, column in FILES:
        path = os.path.join(root, task, name)
        start = time.perf_counter()
        ours = load_tsv(path)
        row = {"rows": len(ours), "fedquad_s": time.perf_counter() - start}
        for label, options in (("defaults", {}), ("verbatim", VERBATIM)):
            with tempfile.TemporaryDirectory() as cache:
                start = time.perf_counter()
                table, error = _read(datasets.load_dataset, path, cache, delimiter="\t", **options)
                row[f"{label}_s"] = time.perf_counter() - start
                row[f"{label}_cache_files"] = sum(len(f) for _, _, f in os.walk(cache))
            row[label] = error or sum(a != b for a, b in zip(table[column], ours.texts))
        out["files"][f"{task}/{name}"] = row
    with tempfile.TemporaryDirectory() as cache:
        path = os.path.join(cache, "texts.csv")
        with open(path, "w") as f:
            f.write("text,label\nNA,1\n007,0\nnull,1\n,0\n")
        for label, options in (("defaults", {}), ("keep_default_na=False", {"keep_default_na": False})):
            table, error = _read(datasets.load_dataset, path, os.path.join(cache, label), **options)
            out[f"texts_csv_{label}"] = error or {"texts": table["text"][:], "type": str(table.features["text"])}
    if args.json:
        json.dump(out, sys.stdout, indent=2, default=str)
        print()
        return
    print(f"import datasets: {out['import_datasets_s']:.2f} s")
    for key, row in out["files"].items():
        print(f"{key} ({row['rows']} rows): texts differing from fedquad's with load_dataset defaults: "
              f"{row['defaults']}; with quoting=3, keep_default_na=False: {row['verbatim']}; cache files per load: "
              f"{row['defaults_cache_files']}; read s: fedquad {row['fedquad_s']:.2f}, load_dataset "
              f"{row['verbatim_s']:.2f}")
    for label in ("defaults", "keep_default_na=False"):
        print(f"texts.csv ['NA', '007', 'null', ''] with {label}: {out[f'texts_csv_{label}']}")


if __name__ == "__main__":
    main()
