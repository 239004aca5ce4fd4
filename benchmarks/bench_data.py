"""How fast is the data layer? Prints (no assertions):

* jsc-synthetic generation at full size (830k rows);
* the first load (generate + dedupe + split + scale + write the processed cache);
* a reload from the processed cache (the path every later run takes);
* ``JSCData.identity()`` (hashes every tensor; once per train / sweep / compare call);
* with ``--formats``: reading full-size copies in the two real file formats (ARFF, HDF5), and
  the first ``load_dataset("jsc", source=...)`` of each (check + hash + parse once + preprocess).

    python benchmarks/bench_data.py [--size 830000] [--formats]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from labkit.data import load_dataset
from labkit.data.formats import read_arff, read_hdf5
from labkit.data.synthetic import DEFAULT_SIZE, generate, write_source_files


def timed(fn, repeat: int = 1):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE)
    parser.add_argument("--formats", action="store_true", help="also time ARFF/HDF5 parsing (slow to write)")
    args = parser.parse_args()

    _, t_gen = timed(lambda: generate(args.size, 0), repeat=3)
    print(f"generate({args.size:,}) jsc-synthetic rows:            {t_gen:6.2f} s (median of 3)")
    with tempfile.TemporaryDirectory() as tmp:
        data, t_first = timed(lambda: load_dataset("jsc-synthetic", size=args.size, data_dir=tmp, progress=False))
        print(f"first load (generate + preprocess + cache write): {t_first:6.2f} s  splits {data.sizes()}")
        _, t_reload = timed(lambda: load_dataset("jsc-synthetic", size=args.size, data_dir=tmp,
                                                 progress=False), repeat=5)
        print(f"reload from the processed cache:                  {t_reload:6.3f} s (median of 5)")
        _, t_ident = timed(data.identity, repeat=5)
        print(f"JSCData.identity() (sha256 of all splits):        {t_ident:6.3f} s (median of 5)")
        if args.formats:
            files, t_write = timed(lambda: write_source_files(Path(tmp) / "src", size=args.size))
            print(f"write ARFF + JSON + HDF5 copies:                  {t_write:6.2f} s")
            _, t_arff = timed(lambda: read_arff(files["arff"]))
            _, t_h5 = timed(lambda: read_hdf5(files["hdf5"]))
            for kind, t in (("ARFF", t_arff), ("HDF5", t_h5)):
                label = f"read + validate {kind} ({files[kind.lower()].stat().st_size / 1e6:.0f} MB):"
                print(f"{label:50s}{t:6.2f} s")
            for kind in ("arff", "hdf5"):
                _, t = timed(lambda: load_dataset("jsc", source=files[kind], data_dir=Path(tmp) / kind,
                                                  progress=False))
                print(f"{'first load_dataset(jsc) from the ' + kind.upper() + ':':50s}{t:6.2f} s")


if __name__ == "__main__":
    main()
