"""Line searches for `LBFGS`, written with `keras.ops` so they run inside a compiled step.

A line search receives `phi(t)`, which returns the loss and the flat gradient at
`x0 + t * direction`, and returns a `LineSearchResult`. Every call of `phi`
costs one loss and gradient evaluation, and the result reports how many ran.
"""

import collections

import keras
from keras import ops

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


def _select(condition, when_true, when_false):
    return keras.tree.map_structure(
        lambda a, b: ops.where(condition, a, b), when_true, when_false
    )


def _evaluate_point(phi, step, direction):
    loss, gradient = phi(step)

    # A non-finite loss or gradient counts as an infinitely high loss: the
    # search then shrinks the step and can never accept the point.
    finite = ops.logical_and(
        ops.isfinite(loss), ops.all(ops.isfinite(gradient))
    )
    loss = ops.where(finite, loss, ops.cast(float("inf"), loss.dtype))
    gradient = ops.where(finite, gradient, ops.zeros_like(gradient))
    slope = ops.sum(gradient * direction)
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
        A scalar step length.
    """
    step_a, loss_a, slope_a = a
    step_b, loss_b, slope_b = b
    d1 = slope_a + slope_b - 3.0 * (loss_a - loss_b) / (step_a - step_b)
    square = d1 * d1 - slope_a * slope_b
    d2 = ops.sign(step_b - step_a) * ops.sqrt(ops.maximum(square, 0.0))
    candidate = step_b - (step_b - step_a) * (slope_b + d2 - d1) / (
        slope_b - slope_a + 2.0 * d2
    )
    usable = ops.logical_and(square >= 0.0, ops.isfinite(candidate))
    midpoint = 0.5 * (lower + upper)
    return ops.where(usable, ops.clip(candidate, lower, upper), midpoint)


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
            phi: function of a scalar step returning `(loss, flat_gradient)`.
            loss: scalar loss at the start point.
            gradient: flat gradient at the start point.
            direction: flat descent direction.
            initial_step: first trial step length.
            max_evaluations: scalar int tensor, the most calls of `phi`.
            tolerance: the search stops when the bracket is shorter than this
                in the max norm of `step * direction`.

        Returns:
            A `LineSearchResult`.
        """
        start = _Point(ops.zeros_like(loss), loss, ops.sum(gradient * direction), gradient)
        bracket = self._bracket(phi, start, direction, initial_step, max_evaluations)
        return self._zoom(phi, start, direction, bracket, max_evaluations, tolerance)

    def _bracket(self, phi, start, direction, initial_step, max_evaluations):
        def sufficient_decrease(point):
            return point.loss <= start.loss + ARMIJO_C1 * point.step * start.slope

        def wolfe(point):
            return ops.abs(point.slope) <= -CURVATURE_C2 * start.slope

        def cond(step, previous, low, high, evaluations, done, bracketed):
            running = ops.logical_not(ops.logical_or(done, bracketed))
            return ops.logical_and(running, evaluations < max_evaluations)

        def body(step, previous, low, high, evaluations, done, bracketed):
            point = _evaluate_point(phi, step, direction)
            evaluations = evaluations + 1

            # Algorithm 3.5: the loss rose, so a minimizer lies between the
            # previous and the current step.
            rose = ops.logical_or(
                ops.logical_not(sufficient_decrease(point)),
                ops.logical_and(evaluations > 1, point.loss >= previous.loss),
            )
            accepted = ops.logical_and(ops.logical_not(rose), wolfe(point))
            # The slope turned non-negative, so a minimizer lies between the
            # current and the previous step, with the current one lower.
            turned = ops.logical_and(
                ops.logical_not(ops.logical_or(rose, accepted)), point.slope >= 0.0
            )

            new_low = _select(rose, previous, point)
            new_high = _select(rose, point, previous)
            low = _select(ops.logical_or(rose, ops.logical_or(turned, accepted)), new_low, low)
            high = _select(ops.logical_or(rose, turned), new_high, high)

            # Neither happened: extrapolate to a longer step.
            gap = point.step - previous.step
            next_step = cubic_minimizer(
                (previous.step, previous.loss, previous.slope),
                (point.step, point.loss, point.slope),
                point.step + 0.01 * gap,
                point.step * 10.0,
            )
            bracketed = ops.logical_or(rose, turned)
            return next_step, point, low, high, evaluations, accepted, bracketed

        initial = (
            ops.cast(initial_step, start.loss.dtype),
            start,
            start,
            start,
            ops.convert_to_tensor(0, "int32"),
            ops.convert_to_tensor(False),
            ops.convert_to_tensor(False),
        )
        _, last, low, high, evaluations, done, bracketed = ops.while_loop(
            cond, body, initial
        )
        # Out of budget while still extrapolating: the last point is the
        # lowest so far, so keep it when it lowered the loss.
        improved = ops.logical_and(
            ops.logical_not(ops.logical_or(done, bracketed)),
            sufficient_decrease(last),
        )
        improved = ops.logical_and(improved, last.step > 0.0)
        low = _select(improved, last, low)
        return low, high, evaluations, done

    def _zoom(self, phi, start, direction, bracket, max_evaluations, tolerance):
        low, high, evaluations, done = bracket
        direction_size = ops.max(ops.abs(direction))

        def cond(low, high, evaluations, done):
            width = ops.abs(high.step - low.step) * direction_size
            running = ops.logical_and(ops.logical_not(done), width > tolerance)
            return ops.logical_and(running, evaluations < max_evaluations)

        def body(low, high, evaluations, done):
            lower = ops.minimum(low.step, high.step)
            upper = ops.maximum(low.step, high.step)
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
            evaluations = evaluations + 1

            # Algorithm 3.6.
            too_high = ops.logical_or(
                point.loss > start.loss + ARMIJO_C1 * point.step * start.slope,
                point.loss >= low.loss,
            )
            accepted = ops.logical_and(
                ops.logical_not(too_high),
                ops.abs(point.slope) <= -CURVATURE_C2 * start.slope,
            )
            flip = ops.logical_and(
                ops.logical_not(too_high),
                point.slope * (high.step - low.step) >= 0.0,
            )
            high = _select(too_high, point, _select(flip, low, high))
            low = _select(too_high, low, point)
            return low, high, evaluations, accepted

        low, high, evaluations, done = ops.while_loop(
            cond, body, (low, high, evaluations, done)
        )
        # Every point that became `low` satisfied sufficient decrease, so any
        # step past the start lowers the loss.
        success = low.step > 0.0
        return LineSearchResult(success, low.step, low.loss, low.gradient, evaluations)


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
        slope = ops.sum(gradient * direction)
        start = _Point(ops.zeros_like(loss), loss, slope, gradient)
        direction_size = ops.max(ops.abs(direction))

        def cond(step, best, evaluations, done):
            running = ops.logical_and(
                ops.logical_not(done), step * direction_size > tolerance
            )
            return ops.logical_and(running, evaluations < max_evaluations)

        def body(step, best, evaluations, done):
            point = _evaluate_point(phi, step, direction)
            accepted = point.loss <= loss + ARMIJO_C1 * step * slope
            best = _select(accepted, point, best)
            return 0.5 * step, best, evaluations + 1, accepted

        initial = (
            ops.cast(initial_step, loss.dtype),
            start,
            ops.convert_to_tensor(0, "int32"),
            ops.convert_to_tensor(False),
        )
        _, best, evaluations, done = ops.while_loop(cond, body, initial)
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
