"""jsc-synthetic: seeded, same schema as the real table, physics-shaped, and calibrated so the
lab's conclusions (linear < small MLP; jsc-custom > jsc-tiny) hold on it."""

from __future__ import annotations

import numpy as np
import pytest

from labkit.data import CLASS_NAMES, FEATURE_NAMES, load_dataset
from labkit.data.formats import read_table
from labkit.data.synthetic import (G, Q, T, TOP_MASS, W, W_MASS, Z, Z_MASS, _standardised_split, generate,
                                   logistic_regression_accuracy, main, mlp_accuracy,
                                   synthetic_frame, write_source_files)


@pytest.fixture(scope="module")
def jets():
    return generate(60_000, seed=11)


def col(x, name):
    return x[:, FEATURE_NAMES.index(name)]


def test_same_seed_same_jets_other_seed_other_jets(tmp_path):
    a, b, c = generate(5000, 1), generate(5000, 1), generate(5000, 2)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    d1 = load_dataset("jsc-synthetic", size=5000, data_dir=tmp_path / "one", progress=False)
    d2 = load_dataset("jsc-synthetic", size=5000, data_dir=tmp_path / "two", progress=False)
    assert d1.manifest["checksum"] == d2.manifest["checksum"]
    assert np.array_equal(d1.x_test.numpy(), d2.x_test.numpy())


def test_schema_units_and_balance(jets):
    x, y = jets
    assert x.shape == (60_000, 16) and x.dtype == np.float64 and y.dtype == np.int64
    assert np.isfinite(x).all()
    shares = np.bincount(y, minlength=5) / len(y)
    assert np.all(np.abs(shares - 0.2) < 0.01), shares
    mult = col(x, "j_multiplicity")
    assert (mult >= 1).all() and np.array_equal(mult, np.round(mult))
    assert (col(x, "j_mass_mmdt") >= 0).all() and np.median(col(x, "j_mass_mmdt")) < 200
    assert (col(x, "j_zlogz") < 0).all()
    c1_b0 = col(x, "j_c1_b0_mmdt")          # (1 - sum z^2) / 2 lies in [0, 0.5)
    assert ((c1_b0 >= 0) & (c1_b0 < 0.5)).all()
    for name in FEATURE_NAMES[2:14]:                       # energy-correlation functions are positive
        assert (col(x, name) > 0).all(), name
    frame = synthetic_frame(2000, seed=3)
    assert list(frame.columns) == [*FEATURE_NAMES, "label"]
    assert list(frame["label"].cat.categories) == list(CLASS_NAMES)


def test_mass_peaks_at_w_z_top_and_falls_for_qcd(jets):
    x, y = jets
    mass = col(x, "j_mass_mmdt")
    med = [np.median(mass[y == k]) for k in range(5)]
    assert abs(med[W] - W_MASS) < 6 and abs(med[Z] - Z_MASS) < 6 and abs(med[T] - TOP_MASS) < 15
    assert med[Q] < med[G] < 50 < med[W] < med[Z] < med[T]
    # W vs Z overlaps: many W jets sit in the Z window and vice versa.
    in_z_window = (mass > Z_MASS - 5) & (mass < Z_MASS + 5)
    assert 0.1 < in_z_window[y == W].mean() < in_z_window[y == Z].mean()
    # QCD falls: fewer q/g jets at 80-100 GeV than at 20-40 GeV.
    qcd = mass[y <= Q]
    assert ((qcd > 80) & (qcd < 100)).sum() < 0.5 * ((qcd > 20) & (qcd < 40)).sum()


def test_gluons_have_more_constituents_than_quarks_with_overlap(jets):
    x, y = jets
    mult = col(x, "j_multiplicity")
    assert mult[y == G].mean() > mult[y == Q].mean() + 10
    assert mult[y == T].mean() > mult[y == G].mean()
    # but the distributions overlap: q vs g stays hard
    cut = np.median(mult[(y == G) | (y == Q)])
    assert (mult[y == Q] > cut).mean() > 0.15
    # more constituents, more negative zlogz
    assert np.corrcoef(np.log(mult), col(x, "j_zlogz"))[0, 1] < -0.5


def test_energy_correlation_ratios_separate_prongs_and_correlate(jets):
    x, y = jets
    d2 = col(x, "j_d2_b1_mmdt")
    one, two, three = np.median(d2[y <= Q]), np.median(d2[(y == W) | (y == Z)]), np.median(d2[y == T])
    assert two < three < one                       # two-prong jets have the smallest D2
    n2 = col(x, "j_n2_b1_mmdt")
    assert np.median(n2[(y == W) | (y == Z)]) < np.median(n2[y <= Q])
    assert np.corrcoef(np.log(d2), np.log(n2))[0, 1] > 0.6
    assert np.corrcoef(np.log(d2), np.log(col(x, "j_d2_b2_mmdt")))[0, 1] > 0.6
    # C1^(2) = e2^(2) grows like (m/pt)^2: strongly correlated with the mass
    assert np.corrcoef(np.log(col(x, "j_c1_b2_mmdt")), np.log(col(x, "j_mass_mmdt") + 1))[0, 1] > 0.8


def test_calibration_linear_model_stays_below_075():
    split = _standardised_split(30_000, seed=0)
    acc = logistic_regression_accuracy(*split)
    assert 0.55 < acc <= 0.75, acc


def test_calibration_jsc_custom_clearly_beats_jsc_tiny():
    split = _standardised_split(40_000, seed=0)
    tiny = mlp_accuracy("jsc-tiny", *split, epochs=3)
    custom = mlp_accuracy("jsc-custom", *split, epochs=3)
    assert custom - tiny > 0.04, (tiny, custom)


def test_written_source_files_round_trip(tmp_path):
    files = write_source_files(tmp_path, size=3000, seed=4)
    x, y = generate(3000, 4)
    for kind in ("arff", "hdf5"):
        x2, y2 = read_table(files[kind])
        assert np.array_equal(y2, y) and np.allclose(x2, x, rtol=1e-6), kind
    assert "NOT real data" in files["arff"].read_text().splitlines()[0]


def test_synthetic_is_labelled_synthetic_everywhere(tmp_path):
    data = load_dataset("jsc-synthetic", size=3000, data_dir=tmp_path, progress=False)
    assert data.info.synthetic and "SYNTHETIC" in data.info.label
    assert data.manifest["synthetic"] is True and data.manifest["generator_version"] >= 2


def test_cli_writes_files_and_rejects_no_action(tmp_path, capsys):
    main(["--write", str(tmp_path), "--size", "2000"])
    out = capsys.readouterr().out
    assert "arff" in out and (tmp_path / "hls4ml_lhc_jets_hlf.arff").exists()
    with pytest.raises(SystemExit):
        main([])
