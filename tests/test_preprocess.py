"""Intensity preprocessing: windows, percentile/min-max normalisation, Intensity specs, RGB."""

import numpy as np
import pytest

from fewsam_jax.preprocess import WINDOWS, Intensity, minmax_normalise, percentile_normalise, to_rgb, window


def test_window_known_values():
    hu = np.array([-1000, -160, -60, 40, 140, 240, 3000], dtype=np.int16)
    out = window(hu, *WINDOWS["soft_tissue"])
    assert out.dtype == np.float32 and out.shape == hu.shape
    np.testing.assert_allclose(out, [0, 0, 0.25, 0.5, 0.75, 1, 1], atol=1e-7)
    np.testing.assert_allclose(window(np.array([-1350.0, -600.0, 150.0]), *WINDOWS["lung"]), [0, 0.5, 1])


@pytest.mark.parametrize("level,width", [(40, 0), (40, -10), (np.nan, 400)])
def test_window_rejects_bad_parameters(level, width):
    with pytest.raises(ValueError, match="positive width"):
        window(np.zeros(3), level, width)


def test_window_presets_are_standard():
    assert WINDOWS["soft_tissue"] == (40, 400) and WINDOWS["lung"] == (-600, 1500)
    assert WINDOWS["bone"] == (400, 1800) and WINDOWS["brain"] == (40, 80)
    assert {"liver", "mediastinum"} <= set(WINDOWS)
    assert all(w > 0 for _, w in WINDOWS.values())


def test_percentile_normalise_is_per_volume():
    vol = np.zeros((4, 4, 2), np.float32)
    vol[..., 1] = 100.0  # per-slice normalisation would make both slices constant (all 0)
    out = percentile_normalise(vol, 0, 100)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[..., 0], 0)
    np.testing.assert_array_equal(out[..., 1], 1)


def test_percentile_normalise_clips_outliers():
    a = np.arange(1001, dtype=np.float64)  # 0.5th / 99.5th percentiles: 5 and 995
    a[-1] = 1e9
    out = percentile_normalise(a)
    lo, hi = np.percentile(a, [0.5, 99.5])
    np.testing.assert_allclose(out[500], (500 - lo) / (hi - lo), rtol=1e-6)
    assert out[0] == 0 and out[-1] == 1 and out.min() == 0 and out.max() == 1


def test_constant_inputs_and_bad_percentiles():
    np.testing.assert_array_equal(percentile_normalise(np.full((2, 3), 7.0)), 0)
    np.testing.assert_array_equal(minmax_normalise(np.full((2, 3), 7)), 0)
    for low, high in [(50, 50), (-1, 99), (1, 101)]:
        with pytest.raises(ValueError, match="0 <= low < high <= 100"):
            percentile_normalise(np.zeros(3), low, high)


def test_minmax():
    np.testing.assert_allclose(minmax_normalise(np.array([-2, 0, 6])), [0, 0.25, 1])


@pytest.mark.parametrize(
    "spec,expected,key",
    [
        ("soft_tissue", Intensity("window", 40, 400), "window:40.0,400.0"),
        (" Lung ", Intensity("window", level=-600, width=1500), "window:-600.0,1500.0"),
        ("window:40,400", Intensity("window", 40.0, 400.0), "window:40.0,400.0"),
        ("window: 35.5 , 120", Intensity("window", 35.5, 120), "window:35.5,120.0"),
        ("percentile", Intensity("percentile"), "percentile:0.5,99.5"),
        ("percentile:1,99", Intensity("percentile", low=1, high=99), "percentile:1.0,99.0"),
        ("minmax", Intensity("minmax"), "minmax"),
    ],
)
def test_parse_and_key(spec, expected, key):
    parsed = Intensity.parse(spec)
    assert parsed == expected and hash(parsed) == hash(expected)
    assert parsed.key() == key
    assert Intensity.parse(parsed.key()) == parsed


@pytest.mark.parametrize(
    "spec,match",
    [
        ("soft-tissue", "unknown intensity spec 'soft-tissue'.*soft_tissue"),
        ("window", "'window' takes 2 numbers"),
        ("window:40", "'window' takes 2 numbers"),
        ("window:a,b", "non-numeric parameters in 'window:a,b'"),
        ("window:40,0", "window width must be positive"),
        ("percentile:99,1", "0 <= low < high <= 100"),
        ("percentile:1", "'percentile' takes 0 or 2 numbers"),
        ("minmax:0,1", "'minmax' takes 0 numbers"),
        ("window:nan,400", "level must be a finite number"),
    ],
)
def test_parse_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        Intensity.parse(spec)


def test_constructor_errors():
    with pytest.raises(ValueError, match="unknown mode 'gamma'"):
        Intensity("gamma")
    with pytest.raises(ValueError, match="mode 'window' takes level, width; got level=None"):
        Intensity("window")
    with pytest.raises(ValueError, match="mode 'minmax' takes no parameters; got low=0.5"):
        Intensity("minmax", low=0.5)


def test_apply_matches_functions():
    rng = np.random.default_rng(0)
    vol = rng.normal(0, 300, size=(6, 7, 5)).astype(np.float32)
    np.testing.assert_array_equal(Intensity.parse("liver").apply(vol), window(vol, 30, 150))
    np.testing.assert_array_equal(Intensity.parse("percentile:2,98").apply(vol), percentile_normalise(vol, 2, 98))
    np.testing.assert_array_equal(Intensity.parse("minmax").apply(vol), minmax_normalise(vol))


def test_to_rgb():
    rgb = to_rgb(np.array([[0.0, 0.5], [1.0, 2.0]], np.float32))
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 0], [[0, 128], [255, 255]])
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
    u8 = np.arange(6, dtype=np.uint8).reshape(2, 3)
    np.testing.assert_array_equal(to_rgb(u8)[..., 1], u8)
    with pytest.raises(ValueError, match=r"expected a 2D \(H, W\) slice, got shape \(2, 2, 3\)"):
        to_rgb(rgb)
    with pytest.raises(ValueError, match="got dtype int64"):
        to_rgb(np.zeros((2, 2), np.int64))


def test_coerce_takes_an_intensity_or_a_spec():
    window = Intensity.parse("soft_tissue")
    assert Intensity.coerce(window) is window
    assert Intensity.coerce("window:40,400") == window
    with pytest.raises(ValueError, match="unknown intensity spec"):
        Intensity.coerce("nonsense")
