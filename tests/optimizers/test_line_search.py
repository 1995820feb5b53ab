import numpy as np
import pytest

from keras_cost.optimizers import line_search


def one_dimensional(function):
    """Return `phi` for `function` of a scalar, with a length-1 gradient."""

    def phi(step):
        loss, slope = function(float(step))
        return loss, np.array([slope], "float64")

    return phi


def run_search(search, function, initial_step, max_evaluations=25):
    phi = one_dimensional(function)
    loss, gradient = phi(0.0)
    direction = np.ones((1,), "float64")
    return search.search(phi, loss, gradient, direction, initial_step, max_evaluations, 1e-12)


def parabola(t):
    return (t - 3.0) ** 2, 2.0 * (t - 3.0)


def test_get_unknown_name():
    with pytest.raises(ValueError, match="line_search='newton'"):
        line_search.get("newton")


def test_get_backtracking():
    assert isinstance(line_search.get("backtracking"), line_search.Backtracking)


def test_cubic_minimizer_exact_on_quadratic():
    # f(t) = (t - 2)^2 at t = 0 and t = 3; a cubic through these is the parabola.
    step = line_search.cubic_minimizer((0.0, 4.0, -4.0), (3.0, 1.0, 2.0), 0.0, 3.0)
    assert float(step) == pytest.approx(2.0)


def test_cubic_minimizer_clips_to_bounds():
    step = line_search.cubic_minimizer((0.0, 4.0, -4.0), (3.0, 1.0, 2.0), 2.5, 3.0)
    assert float(step) == pytest.approx(2.5)


def test_cubic_minimizer_infinite_loss_bisects():
    step = line_search.cubic_minimizer((0.0, 4.0, -4.0), (3.0, float("inf"), 0.0), 1.0, 2.0)
    assert float(step) == pytest.approx(1.5)


def test_strong_wolfe_conditions_hold():
    result = run_search(line_search.StrongWolfe(), parabola, initial_step=0.1)

    step = float(result.step)
    loss, slope = parabola(step)
    assert bool(result.success)
    assert loss <= 9.0 + 1e-4 * step * -6.0
    assert abs(slope) <= 0.9 * 6.0


def test_strong_wolfe_extrapolates_tenfold():
    # The trial 0.1 descends steeply, so the next trial is the cap 10 * 0.1,
    # whose slope -4 already meets the curvature condition |slope| <= 5.4.
    result = run_search(line_search.StrongWolfe(), parabola, initial_step=0.1)

    assert float(result.step) == pytest.approx(1.0)
    assert int(result.evaluations) == 2


def test_strong_wolfe_zooms_long_step():
    result = run_search(line_search.StrongWolfe(), parabola, initial_step=100.0)

    step = float(result.step)
    assert bool(result.success)
    assert 0.0 < step < 6.0


def test_strong_wolfe_avoids_nan_region():
    def cliff(t):
        loss, slope = parabola(t)
        return (float("nan") if t > 1.0 else loss), slope

    result = run_search(line_search.StrongWolfe(), cliff, initial_step=5.0)

    assert bool(result.success)
    assert 0.0 < float(result.step) <= 1.0
    assert np.isfinite(float(result.loss))


def test_strong_wolfe_fails_without_decrease():
    def rising(t):
        return t * t + t, 2.0 * t + 1.0

    # The direction +1 ascends, so no step lowers the loss.
    result = run_search(line_search.StrongWolfe(), rising, initial_step=1.0, max_evaluations=6)

    assert not bool(result.success)
    assert float(result.step) == 0.0
    assert int(result.evaluations) == 6


def test_backtracking_halves_until_armijo():
    def bowl(t):
        return (t - 1.0) ** 2, 2.0 * (t - 1.0)

    result = run_search(line_search.Backtracking(), bowl, initial_step=8.0)

    assert bool(result.success)
    assert float(result.step) == 1.0
    assert int(result.evaluations) == 4
