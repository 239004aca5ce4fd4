"""``jsc-synthetic``: a seeded, physics-shaped stand-in for the JSC data (NOT real physics).

When the real hls4ml jet table cannot be downloaded, the labs still need data with the same
schema and roughly the same *difficulty*. This module draws jets class by class from a
small generative story (vectorised numpy, ~830k rows in a few seconds):

* every jet has a transverse momentum ``pt`` near 1 TeV and a number of hard prongs:
  one for light-quark (q) and gluon (g) jets, two for W and Z jets, three for top jets;
* the groomed mass ``j_mass_mmdt`` (GeV) peaks near the W (80.4), Z (91.2) and top (173)
  masses, with a low-mass tail where grooming loses a prong; q/g masses fall steeply,
  gluons a little heavier than quarks;
* the constituent ``j_multiplicity`` (an integer) is higher for gluons than for quarks
  and highest for tops; ``j_zlogz`` follows it (more constituents, more negative);
* the energy-correlation features follow their definitions from a few shared latents:
  ``C1^(b) = e2^(b)`` grows with ``(m/pt)^b``; the ratios ``C2 = e3/e2^2``,
  ``D2 = e3/e2^3``, ``N2`` and ``M2`` share one "prong-ness" latent, so they are
  correlated and small for two-prong (W/Z) jets, large for one-prong (q/g) jets and in
  between for three-prong (top) jets.

Resolutions are set so the hard pairs stay hard (W vs Z, q vs g) and a linear model is
clearly worse than a small MLP (the mass windows are not linear). ``calibrate()`` measures
this; the numbers are in ``data/README.md``::

    python -m labkit.data --calibrate

Never present results on this data as results about real jets: :attr:`DatasetInfo.label`
marks it SYNTHETIC everywhere.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .. import checks, paths
from .base import CLASS_NAMES, FEATURE_NAMES, DatasetInfo, JSCData, register_dataset
from .prepare import (DEFAULT_SEED, DEFAULT_TEST_FRACTION, DEFAULT_VAL_FRACTION, check_size,
                      load_or_build)

GENERATOR_VERSION = 2
DEFAULT_SIZE = 830_000          # rows in the real OpenML table (hls4ml_lhc_jets_hlf)
DEFAULT_GENERATOR_SEED = 0
# Class shares: the real table is close to balanced (about a fifth each).
CLASS_SHARES = (0.20, 0.20, 0.20, 0.20, 0.20)

W_MASS, Z_MASS, TOP_MASS = 80.4, 91.2, 173.0
G, Q, W, Z, T = range(len(CLASS_NAMES))                   # class indices, CLASS_NAMES order

# Per class (g, q, w, z, t): the knobs of the story above.
_PRONGS = np.array([1, 1, 2, 2, 3])
_MULT_MEAN = np.array([50.0, 30.0, 38.0, 40.0, 66.0])      # mean constituent multiplicity
_PRONG_MEDIAN = np.array([3.2, 2.4, 1.2, 1.25, 2.1])       # median D2^(1) (two-prong: small)
_PRONG_SPREAD = np.array([0.30, 0.32, 0.32, 0.32, 0.38])   # log-normal width of D2^(1)


def _groomed_mass(rng, cls, pt):
    """Groomed (mMDT) jet mass in GeV: resonance peaks for W/Z/top, a falling spectrum for q/g."""
    n = len(cls)
    u = rng.random(n)
    # QCD-like falling spectrum (also the tail of resonances whose prongs were groomed away).
    qcd_median = np.where(cls == G, 38.0, 26.0)
    m = qcd_median * np.exp(0.65 * rng.standard_normal(n)) * pt / 1000.0
    w = (cls == W) & (u < 0.86)
    m[w] = rng.normal(W_MASS, 7.0, w.sum())
    z = (cls == Z) & (u < 0.86)
    m[z] = rng.normal(Z_MASS, 7.5, z.sum())
    t_full = (cls == T) & (u < 0.75)
    m[t_full] = rng.normal(TOP_MASS, 16.0, t_full.sum())
    t_w = (cls == T) & (u >= 0.75) & (u < 0.88)         # the b quark fell outside the jet
    m[t_w] = rng.normal(W_MASS + 5.0, 12.0, t_w.sum())
    # Grooming sometimes removes everything but a single hard core.
    core = rng.random(n) < np.where((cls == G) | (cls == Q), 0.10, 0.04)
    m[core] = rng.exponential(4.0, core.sum())
    return np.maximum(m, 0.0)


def generate(size: int = DEFAULT_SIZE, seed: int = DEFAULT_GENERATOR_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``size`` synthetic jets: features ``(size, 16)`` float64 in :data:`FEATURE_NAMES`
    order and physical units, labels ``(size,)`` int64 indices into :data:`CLASS_NAMES`."""
    size = check_size(size)
    rng = np.random.default_rng(seed)
    cls = rng.choice(len(CLASS_NAMES), size=size, p=CLASS_SHARES)
    pt = rng.normal(1000.0, 120.0, size).clip(600.0, 1600.0)        # GeV; latent, not a feature
    prongs = _PRONGS[cls]

    mass = _groomed_mass(rng, cls, pt)
    r = np.maximum(mass, 0.5) / pt                                    # m / pt, ~0.08 for a W
    # the draws below are in a fixed order (the seed's data depend on it): each helper draws its own
    mult, n_eff, zlogz = _multiplicity(rng, cls, mass, prongs)
    c1_b0, c1_b1, c1_b2 = _two_point(rng, r, mult, n_eff)
    shapes = _prong_shapes(rng, cls, c1_b1, c1_b2)

    columns = {
        "j_zlogz": zlogz,
        "j_c1_b0_mmdt": c1_b0, "j_c1_b1_mmdt": c1_b1, "j_c1_b2_mmdt": c1_b2,
        **shapes,
        "j_mass_mmdt": mass,
        "j_multiplicity": mult.astype(np.float64),
    }
    x = np.column_stack([columns[name] for name in FEATURE_NAMES])
    return x, cls.astype(np.int64)


def _multiplicity(rng, cls, mass, prongs):
    """Constituent count (gamma-Poisson, overdispersed, rising a little with mass), the
    effective number of constituents and zlogz = sum z log z ~ -log(effective number)."""
    size = len(cls)
    mult_mean = _MULT_MEAN[cls] * (1.0 + 0.15 * np.tanh((mass - 60.0) / 60.0))
    mult = rng.poisson(rng.gamma(9.0, mult_mean / 9.0)) + 1
    n_eff = np.maximum(mult ** 0.62 * np.exp(0.25 * rng.standard_normal(size)) * (0.8 + 0.2 * prongs), 1.0)
    zlogz = -np.log(n_eff) - 0.05 * rng.random(size)
    return mult, n_eff, zlogz


def _two_point(rng, r, mult, n_eff):
    """Two-point functions e2^(beta) = C1^(beta): beta=0 measures how evenly energy is shared,
    beta=1 and 2 scale with the opening angle, i.e. with (m/pt) and (m/pt)^2.
    e2^(0) = sum_{i<j} z_i z_j = (1 - sum z_i^2) / 2, and sum z_i^2 ~ 1 / n_eff lies in [1/mult, 1]."""
    size = len(r)
    sum_z2 = np.clip(np.exp(0.25 * rng.standard_normal(size)) / n_eff, 1.0 / mult, 1.0)
    c1_b0 = 0.5 * (1.0 - sum_z2)
    c1_b1 = 0.9 * r * np.exp(0.20 * rng.standard_normal(size))
    c1_b2 = 1.1 * r ** 2 * np.exp(0.25 * rng.standard_normal(size))
    return c1_b0, c1_b1, c1_b2


def _prong_shapes(rng, cls, c1_b1, c1_b2) -> dict:
    """The three-point shapes (D2, C2, N2, M2) from one shared "prong-ness" latent:
    D2^(1) ~ e3 / e2^3, small for two-prong jets."""
    size = len(cls)
    d2_b1 = _PRONG_MEDIAN[cls] * np.exp(_PRONG_SPREAD[cls] * rng.standard_normal(size))
    prongness = np.log(d2_b1)
    d2_b2 = d2_b1 ** 1.15 * np.exp(0.15 + 0.25 * rng.standard_normal(size))
    d2_a1_b1 = 0.55 * d2_b1 ** 0.9 * np.exp(0.20 * rng.standard_normal(size))
    d2_a1_b2 = 0.60 * d2_b2 ** 0.9 * np.exp(0.20 * rng.standard_normal(size))
    n2_b1 = 0.11 * np.exp(0.55 * prongness + 0.18 * rng.standard_normal(size))
    n2_b2 = 0.09 * np.exp(0.60 * prongness + 0.22 * rng.standard_normal(size))
    m2_b1 = 0.04 * np.exp(0.30 * prongness + 0.35 * rng.standard_normal(size)) * (1 + 3 * c1_b1)
    m2_b2 = 0.02 * np.exp(0.30 * prongness + 0.40 * rng.standard_normal(size)) * (1 + 3 * c1_b2)
    return {"j_c2_b1_mmdt": d2_b1 * c1_b1, "j_c2_b2_mmdt": d2_b2 * c1_b2,  # C2 = e3/e2^2 = D2 * e2
            "j_d2_b1_mmdt": d2_b1, "j_d2_b2_mmdt": d2_b2,
            "j_d2_a1_b1_mmdt": d2_a1_b1, "j_d2_a1_b2_mmdt": d2_a1_b2,
            "j_m2_b1_mmdt": m2_b1, "j_m2_b2_mmdt": m2_b2,
            "j_n2_b1_mmdt": n2_b1, "j_n2_b2_mmdt": n2_b2}


def synthetic_frame(size: int = DEFAULT_SIZE, seed: int = DEFAULT_GENERATOR_SEED) -> pd.DataFrame:
    """The synthetic jets as a table: 16 feature columns plus ``label`` (a class name)."""
    x, y = generate(size, seed)
    frame = pd.DataFrame(x, columns=list(FEATURE_NAMES))
    frame["label"] = pd.Categorical.from_codes(y, categories=list(CLASS_NAMES))
    return frame


@register_dataset("jsc-synthetic")
def load_synthetic(size: int = DEFAULT_SIZE, generator_seed: int = DEFAULT_GENERATOR_SEED, *,
                   seed: int = DEFAULT_SEED, val_fraction: float = DEFAULT_VAL_FRACTION,
                   test_fraction: float = DEFAULT_TEST_FRACTION, data_dir=None,
                   progress: bool = True, with_payload: bool = False) -> JSCData:
    """The synthetic stand-in, preprocessed exactly like the real data and cached in ``data/``.

    ``size`` rows are drawn with ``generator_seed``; ``seed`` picks the train/val/test split.
    ``with_payload=True`` returns ``(data, unscaled payload)`` (see ``prepare.load_or_build``).
    """
    # No more rows than the real table it stands in for (10**10 would try to allocate ~75 GiB).
    size = check_size(size, DEFAULT_SIZE, "the size of the JSC table jsc-synthetic stands in for")
    settings = {"dataset": "jsc-synthetic", "size": size,
                "generator_seed": checks.seed("generator_seed", generator_seed), "generator_version": GENERATOR_VERSION,
                "seed": checks.seed("seed", seed), "val_fraction": checks.proportion("val_fraction", val_fraction),
                "test_fraction": checks.proportion("test_fraction", test_fraction)}
    info = DatasetInfo("jsc-synthetic", synthetic=True, source=f"labkit.data.synthetic v{GENERATOR_VERSION}")
    manifest = {"dataset": "jsc-synthetic", "synthetic": True, "source": info.source,
                "checksum": None, "generator_version": GENERATOR_VERSION,
                "generator_seed": settings["generator_seed"], "seed": settings["seed"]}

    def build():
        start = time.perf_counter()
        x, y = generate(size, generator_seed)
        manifest["checksum"] = "sha256:" + hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest()
        if progress:
            print(f"[labkit] generated {len(y):,} SYNTHETIC jets in {time.perf_counter() - start:.1f} s "
                  f"(jsc-synthetic v{GENERATOR_VERSION}, generator_seed={generator_seed})")
        return x, y

    return load_or_build(Path(data_dir) if data_dir else paths.data_dir(), "jsc-synthetic",
                         settings, build, info, manifest, with_payload=with_payload)


# --- the real file formats, written from synthetic jets (for tests and offline rehearsal) ---------

def write_source_files(folder, size: int = 20_000, seed: int = DEFAULT_GENERATOR_SEED, *,
                       base_url: str | None = None) -> dict:
    """Write synthetic jets in both real source formats into ``folder``.

    Returns ``{"arff", "json", "hdf5"}`` paths: the OpenML ARFF, an OpenML-style JSON
    description pointing at it (at ``base_url`` + file name when served over HTTP), and the
    hls4ml HDF5 file. The files say they are labkit-written stand-ins; never pass them off as real.
    """
    from .formats import md5_file, openml_description, write_arff, write_hdf5
    from .jsc import ARFF_FILE, HDF5_FILE

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    x, y = generate(size, seed)
    arff, hdf5, desc = folder / ARFF_FILE, folder / HDF5_FILE, folder / "openml-42468.json"
    write_arff(arff, x, y)
    write_hdf5(hdf5, x, y)
    url = f"{base_url.rstrip('/')}/{ARFF_FILE}" if base_url else arff.resolve().as_uri()
    desc.write_text(json.dumps(openml_description(url, md5_file(arff)), indent=2))
    return {"arff": arff, "json": desc, "hdf5": hdf5}


# --- calibration: is the stand-in as hard as the real task, in the right ways? ---------------------

def _standardised_split(size: int, seed: int):
    x, y = generate(size, seed)
    perm = np.random.RandomState(42).permutation(len(y))
    n_test = len(y) // 5
    test, train = perm[:n_test], perm[n_test:]
    mean, std = x[train].mean(0), x[train].std(0)
    xs = torch.tensor((x - mean) / std, dtype=torch.float32)
    ys = torch.from_numpy(y)
    return xs[train], ys[train], xs[test], ys[test]


def _accuracy(model, x, y) -> float:
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def logistic_regression_accuracy(x_train, y_train, x_test, y_test, iterations: int = 200) -> float:
    """Test accuracy of multinomial logistic regression (full-batch L-BFGS, to convergence)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(x_train.shape[1], int(y_train.max()) + 1)
    opt = torch.optim.LBFGS(model.parameters(), max_iter=iterations, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x_train), y_train)
        loss.backward()
        return loss

    opt.step(closure)
    return _accuracy(model, x_test, y_test)


def mlp_accuracy(name: str, x_train, y_train, x_test, y_test, *, epochs: int = 3,
                 batch_size: int = 256, lr: float = 1e-3, seed: int = 0) -> float:
    """Test accuracy of zoo model ``name`` after a plain Adam loop (no Lightning)."""
    from ..models import get_model

    torch.manual_seed(seed)
    model = get_model(name)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(y_train), generator=g)
        for i in range(0, len(perm), batch_size):
            b = perm[i:i + batch_size]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x_train[b]), y_train[b]).backward()
            opt.step()
    return _accuracy(model, x_test, y_test)


def calibrate(size: int = 150_000, seed: int = DEFAULT_GENERATOR_SEED, epochs: int = 3,
              models=("jsc-tiny", "jsc-custom", "jsc-s")) -> pd.DataFrame:
    """Test accuracies on ``size`` synthetic jets (80/20 split): logistic regression, and each
    zoo model trained the same way (Adam lr 1e-3, batch 256, ``epochs`` epochs)."""
    x_train, y_train, x_test, y_test = _standardised_split(size, seed)
    rows = [{"model": "logistic regression (L-BFGS)",
             "test acc": logistic_regression_accuracy(x_train, y_train, x_test, y_test)}]
    for name in tqdm(models, desc="calibrate", leave=False):
        rows.append({"model": f"{name} (Adam 1e-3, batch 256, {epochs} epochs)",
                     "test acc": mlp_accuracy(name, x_train, y_train, x_test, y_test, epochs=epochs)})
    return pd.DataFrame(rows).set_index("model")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m labkit.data",
                                     description="The jsc-synthetic stand-in: calibrate it or write it out.")
    parser.add_argument("--calibrate", action="store_true", help="measure linear vs MLP accuracy")
    parser.add_argument("--write", metavar="DIR", help="write ARFF + JSON + HDF5 copies into DIR")
    parser.add_argument("--size", type=int, default=None, help="rows (calibrate: 150000, write: 20000)")
    parser.add_argument("--seed", type=int, default=DEFAULT_GENERATOR_SEED, help="generator seed")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs for --calibrate")
    args = parser.parse_args(argv)
    if not (args.calibrate or args.write):
        parser.error("nothing to do: give --calibrate and/or --write DIR")
    if args.write:
        for kind, path in write_source_files(args.write, args.size or 20_000, args.seed).items():
            print(f"{kind:5s} {path}")
    if args.calibrate:
        start = time.perf_counter()
        table = calibrate(args.size or 150_000, args.seed, args.epochs)
        print(f"jsc-synthetic v{GENERATOR_VERSION}, {args.size or 150_000} rows, generator seed "
              f"{args.seed} ({time.perf_counter() - start:.0f} s):")
        print(table.to_markdown(floatfmt=".4f"))
