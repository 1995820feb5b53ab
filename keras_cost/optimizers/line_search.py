"""Line searches for `LBFGS`, in NumPy on the host.

A line search receives `phi(t)`, which returns the loss and the flat gradient at
`x0 + t * direction` as a float and a NumPy vector, and returns a
`LineSearchResult`. Every call of `phi` costs one loss and gradient
evaluation of the model, and the result reports how many ran. The searches
run on the host, like the rest of the L-BFGS iteration, because their work
is a few scalar decisions per trial that a compiled graph would only slow
down (see `train_step.py`).
"""

import collections
import math

import numpy as np

# Sufficient decrease and curvature constants of the Wolfe conditions, the
# values Nocedal and Wright recommend for quasi-Newton methods (section 3.1).
ARMIJO_C1 = 1e-4
CURVATURE_C2 = 0.9

LineSearchResult = collections.namedtuple(
    "LineSearchResult", ["success", "step", "loss", "gradient", "evaluations"]
)

# One evaluated trial point: step length, loss, directional derivative and
# flat gradient.
_Point = collections.namedtuple("_Point", ["step", "loss", "slope", "gradient"])


def _evaluate_point(phi, step, direction):
    loss, gradient = phi(step)
    loss = float(loss)
    gradient = np.asarray(gradient)

    # A non-finite loss or gradient counts as an infinitely high loss: the
    # search then shrinks the step and can never accept the point.
    if not (math.isfinite(loss) and np.all(np.isfinite(gradient))):
        loss = math.inf
        gradient = np.zeros_like(gradient)
    slope = float(np.dot(gradient, direction))
    return _Point(step, loss, slope, gradient)


def cubic_minimizer(a, b, lower, upper):
    """Return the minimizer of the cubic that interpolates two points.

    The cubic matches the loss and the slope at `a` and `b` (Nocedal and
    Wright, equation 3.59). The result is clipped to `[lower, upper]`, and the
    midpoint of the bounds is returned when the cubic has no real minimizer or
    a loss is infinite.

    Args:
        a: `(step, loss, slope)` of the first point.
        b: `(step, loss, slope)` of the second point.
        lower: smallest step to return.
        upper: largest step to return.

    Returns:
        A float step length.
    """
    step_a, loss_a, slope_a = (float(value) for value in a)
    step_b, loss_b, slope_b = (float(value) for value in b)
    lower, upper = float(lower), float(upper)
    midpoint = 0.5 * (lower + upper)
    # Python floats give inf or nan for infinite losses instead of raising,
    # and both mean that no cubic fits. Equal steps raise ZeroDivisionError.
    try:
        d1 = slope_a + slope_b - 3.0 * (loss_a - loss_b) / (step_a - step_b)
        square = d1 * d1 - slope_a * slope_b
        if not square >= 0.0:
            return midpoint
        d2 = math.copysign(math.sqrt(square), step_b - step_a)
        candidate = step_b - (step_b - step_a) * (slope_b + d2 - d1) / (
            slope_b - slope_a + 2.0 * d2
        )
    except ZeroDivisionError:
        return midpoint
    if not math.isfinite(candidate):
        return midpoint
    return min(max(candidate, lower), upper)


class StrongWolfe:
    """Line search that returns a step meeting the strong Wolfe conditions.

    The search first brackets an interval that contains acceptable steps
    (Nocedal and Wright, algorithm 3.5), extrapolating with cubic
    interpolation, and then shrinks the bracket with safeguarded cubic
    interpolation (algorithm 3.6, "zoom"). A step `t` is accepted when

        f(x + t d) <= f(x) + c1 t g'd  and  |g(x + t d)'d| <= c2 |g'd|

    with `c1 = 1e-4` and `c2 = 0.9`.

    When the evaluation budget runs out or the bracket shrinks below the
    tolerance, the lowest point found that satisfies sufficient decrease is
    returned with `success=True`, because it still lowers the loss. Without
    such a point the result has `success=False` and `step=0`.

    References:
        Nocedal, J. and Wright, S. J. (2006). Numerical Optimization, 2nd
        edition, Springer. Algorithms 3.5 and 3.6, equation 3.59.
    """

    name = "strong_wolfe"

    def search(
        self, phi, loss, gradient, direction, initial_step, max_evaluations, tolerance
    ):
        """Search along `direction` from the point with `loss` and `gradient`.

        Args:
            phi: function of a float step returning `(loss, flat_gradient)`.
            loss: float, the loss at the start point.
            gradient: flat NumPy gradient at the start point.
            direction: flat NumPy descent direction.
            initial_step: float, the first trial step length.
            max_evaluations: int, the most calls of `phi`.
            tolerance: the search stops when the bracket is shorter than this
                in the max norm of `step * direction`.

        Returns:
            A `LineSearchResult`.
        """
        direction = np.asarray(direction)
        gradient = np.asarray(gradient)
        start = _Point(0.0, float(loss), float(np.dot(gradient, direction)), gradient)
        max_evaluations = int(max_evaluations)
        low, high, evaluations, done = self._bracket(
            phi, start, direction, float(initial_step), max_evaluations
        )
        return self._zoom(
            phi, start, direction, low, high, evaluations, done, max_evaluations, float(tolerance)
        )

    @staticmethod
    def _bracket(phi, start, direction, step, max_evaluations):
        def sufficient_decrease(point):
            return point.loss <= start.loss + ARMIJO_C1 * point.step * start.slope

        previous = low = high = start
        evaluations = 0
        done = bracketed = False
        while not (done or bracketed) and evaluations < max_evaluations:
            point = _evaluate_point(phi, step, direction)
            evaluations += 1

            # Algorithm 3.5: the loss rose, so a minimizer lies between the
            # previous and the current step.
            rose = not sufficient_decrease(point) or (
                evaluations > 1 and point.loss >= previous.loss
            )
            done = not rose and abs(point.slope) <= -CURVATURE_C2 * start.slope
            # The slope turned non-negative, so a minimizer lies between the
            # current and the previous step, with the current one lower.
            turned = not (rose or done) and point.slope >= 0.0
            if rose:
                low, high = previous, point
            elif turned:
                low, high = point, previous
            elif done:
                low = point
            bracketed = rose or turned

            # Neither happened: extrapolate to a longer step.
            gap = point.step - previous.step
            step = cubic_minimizer(
                (previous.step, previous.loss, previous.slope),
                (point.step, point.loss, point.slope),
                point.step + 0.01 * gap,
                point.step * 10.0,
            )
            previous = point

        # Out of budget while still extrapolating: the last point is the
        # lowest so far, so keep it when it lowered the loss.
        if not (done or bracketed) and previous.step > 0.0 and sufficient_decrease(previous):
            low = previous
        return low, high, evaluations, done

    @staticmethod
    def _zoom(phi, start, direction, low, high, evaluations, done, max_evaluations, tolerance):
        direction_size = float(np.max(np.abs(direction)))
        while (
            not done
            and abs(high.step - low.step) * direction_size > tolerance
            and evaluations < max_evaluations
        ):
            lower = min(low.step, high.step)
            upper = max(low.step, high.step)
            # Keep trials away from the ends of the bracket so that it shrinks
            # by at least a tenth each time.
            margin = 0.1 * (upper - lower)
            step = cubic_minimizer(
                (low.step, low.loss, low.slope),
                (high.step, high.loss, high.slope),
                lower + margin,
                upper - margin,
            )
            point = _evaluate_point(phi, step, direction)
            evaluations += 1

            # Algorithm 3.6.
            too_high = (
                point.loss > start.loss + ARMIJO_C1 * point.step * start.slope
                or point.loss >= low.loss
            )
            if too_high:
                high = point
            else:
                done = abs(point.slope) <= -CURVATURE_C2 * start.slope
                if point.slope * (high.step - low.step) >= 0.0:
                    high = low
                low = point

        # Every point that became `low` satisfied sufficient decrease, so any
        # step past the start lowers the loss.
        return LineSearchResult(low.step > 0.0, low.step, low.loss, low.gradient, evaluations)


class Backtracking:
    """Line search that halves the step until the Armijo condition holds.

    A step `t` is accepted when `f(x + t d) <= f(x) + c1 t g'd` with
    `c1 = 1e-4` (Nocedal and Wright, algorithm 3.1). It never lengthens the
    first trial step, so it suits problems where `learning_rate` is already a
    good step, and it needs no curvature information.

    References:
        Nocedal, J. and Wright, S. J. (2006). Numerical Optimization, 2nd
        edition, Springer. Algorithm 3.1.
    """

    name = "backtracking"

    def search(
        self, phi, loss, gradient, direction, initial_step, max_evaluations, tolerance
    ):
        """Search along `direction`; the arguments are those of `StrongWolfe.search`."""
        direction = np.asarray(direction)
        gradient = np.asarray(gradient)
        loss = float(loss)
        slope = float(np.dot(gradient, direction))
        direction_size = float(np.max(np.abs(direction)))
        step = float(initial_step)
        best = _Point(0.0, loss, slope, gradient)
        evaluations = 0
        done = False
        while not done and step * direction_size > tolerance and evaluations < int(max_evaluations):
            point = _evaluate_point(phi, step, direction)
            evaluations += 1
            done = point.loss <= loss + ARMIJO_C1 * step * slope
            if done:
                best = point
            step *= 0.5
        return LineSearchResult(done, best.step, best.loss, best.gradient, evaluations)


_LINE_SEARCHES = {cls.name: cls for cls in (StrongWolfe, Backtracking)}
def get(name):
    """Return a line search instance by name.

    Args:
        name: `"strong_wolfe"` or `"backtracking"`.

    Returns:
        A `StrongWolfe` or `Backtracking` instance.

    Raises:
        ValueError: if `name` is not a known line search.

    Example:

    >>> from keras_cost.optimizers import line_search
    >>> type(line_search.get("strong_wolfe")).__name__
    'StrongWolfe'
    """
    if name not in _LINE_SEARCHES:
        raise ValueError(
            f"Unknown line search. Expected one of {sorted(_LINE_SEARCHES)}. "
            f"Received: line_search={name!r}"
        )
    return _LINE_SEARCHES[name]()
