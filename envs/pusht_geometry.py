"""Geometry of the Push-T block: shape, keypoints, pose conversions and the exact coverage of the goal.

All lengths are in the original Push-T units (the 512 x 512 workspace of gym-pusht / Diffusion Policy; the MuJoCo
model uses the same numbers, one unit = one MuJoCo length unit). A block pose is ``(x, y, theta)`` in the Push-T
convention: ``(x, y)`` is the origin of the T's body frame (the middle of the top edge of the bar), ``theta`` its
rotation. In that body frame the bar spans ``[-60, 60] x [0, 30]`` and the stem ``[-15, 15] x [30, 120]`` (scale 30,
length 4 as in the original ``add_tee``). The centre of mass sits at ``(0, 45)`` (mean of the two rectangle
centroids, as in the original), which is where MuJoCo's joints act.

Coverage is computed exactly: each T is the union of two interior-disjoint rectangles, so the intersection area of
two Ts is the sum of four convex rectangle-rectangle intersections (Sutherland-Hodgman clipping + shoelace), in
pure Python floats because numpy's per-call overhead dominates at this size (~10 us per call on this machine).
"""

import math

import numpy as np

# Rectangles of the T in its body frame: (centre x, centre y, half width, half height).
BAR = (0.0, 15.0, 60.0, 15.0)
STEM = (0.0, 75.0, 15.0, 45.0)
RECTS = (BAR, STEM)
COM = (0.0, 45.0)
AREA = 4 * (BAR[2] * BAR[3] + STEM[2] * STEM[3])  # 6300
GOAL_POSE = (256.0, 256.0, math.pi / 4)
SUCCESS_COVERAGE = 0.95

# Closed outline of the T, counter-clockwise in a y-up frame, shape (8, 2).
OUTLINE = np.array(
    [(-60, 0), (60, 0), (60, 30), (15, 30), (15, 120), (-15, 120), (-15, 30), (-60, 30)], dtype=np.float64
)
# 9 keypoints, shape (9, 2): the 8 rectangle corners in gym-pusht's ``get_keypoints`` order, then the centre of mass.
KEYPOINTS = np.array(
    [(-60, 30), (60, 30), (60, 0), (-60, 0), (-15, 30), (-15, 120), (15, 120), (15, 30), COM], dtype=np.float64
)


def _rect_corners(rect):
    cx, cy, hx, hy = rect
    return ((cx - hx, cy - hy), (cx + hx, cy - hy), (cx + hx, cy + hy), (cx - hx, cy + hy))


_RECT_CORNERS = tuple(_rect_corners(r) for r in RECTS)
# Axis-aligned boxes (x0, x1, y0, y1) of the rectangles in the body frame.
_RECT_BOXES = tuple((cx - hx, cx + hx, cy - hy, cy + hy) for cx, cy, hx, hy in RECTS)


def com_from_pose(x: float, y: float, theta: float) -> tuple[float, float]:
    """World position of the centre of mass of a block at Push-T pose ``(x, y, theta)``."""
    c, s = math.cos(theta), math.sin(theta)
    return x + c * COM[0] - s * COM[1], y + s * COM[0] + c * COM[1]


def pose_from_com(cx: float, cy: float, theta: float) -> tuple[float, float]:
    """Push-T origin ``(x, y)`` of a block whose centre of mass is at ``(cx, cy)`` with rotation ``theta``."""
    c, s = math.cos(theta), math.sin(theta)
    return cx - (c * COM[0] - s * COM[1]), cy - (s * COM[0] + c * COM[1])


def transform(points: np.ndarray, x: float, y: float, theta: float) -> np.ndarray:
    """Body-frame points ``(N, 2)`` -> world points ``(N, 2)`` for a block at pose ``(x, y, theta)``."""
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    return points @ rot.T + np.array([x, y])


def keypoints(x: float, y: float, theta: float) -> np.ndarray:
    """The 9 keypoints ``(9, 2)`` of a block at pose ``(x, y, theta)``."""
    return transform(KEYPOINTS, x, y, theta)


def _clip_area(poly, x0, x1, y0, y1):
    """Area of convex polygon ``poly`` (list of (x, y)) clipped to the box ``[x0, x1] x [y0, y1]``."""
    # Each pass keeps the part of the polygon on one side of an axis-aligned line (Sutherland-Hodgman).
    for axis, bound, keep_above in ((0, x0, True), (0, x1, False), (1, y0, True), (1, y1, False)):
        out = []
        n = len(poly)
        if n == 0:
            return 0.0
        prev = poly[-1]
        prev_in = (prev[axis] >= bound) if keep_above else (prev[axis] <= bound)
        for cur in poly:
            cur_in = (cur[axis] >= bound) if keep_above else (cur[axis] <= bound)
            if cur_in != prev_in:
                t = (bound - prev[axis]) / (cur[axis] - prev[axis])
                px = prev[0] + t * (cur[0] - prev[0])
                py = prev[1] + t * (cur[1] - prev[1])
                out.append((bound, py) if axis == 0 else (px, bound))
            if cur_in:
                out.append(cur)
            prev, prev_in = cur, cur_in
        poly = out
    if len(poly) < 3:
        return 0.0
    area = 0.0
    px, py = poly[-1]
    for qx, qy in poly:
        area += px * qy - qx * py
        px, py = qx, qy
    return abs(area) * 0.5


def overlap_area(pose_a, pose_b) -> float:
    """Exact area of the intersection of two T blocks at Push-T poses ``pose_a`` and ``pose_b`` (each (x, y, theta))."""
    # Express block a in the body frame of block b, where b's rectangles are axis-aligned boxes.
    xa, ya, ta = pose_a
    xb, yb, tb = pose_b
    cb, sb = math.cos(tb), math.sin(tb)
    dx, dy = xa - xb, ya - yb
    tx, ty = cb * dx + sb * dy, -sb * dx + cb * dy
    c, s = math.cos(ta - tb), math.sin(ta - tb)
    total = 0.0
    for corners in _RECT_CORNERS:
        poly = [(c * u - s * v + tx, s * u + c * v + ty) for u, v in corners]
        xs = [p[0] for p in poly]
        ys = [p[1] for p in poly]
        lo_x, hi_x, lo_y, hi_y = min(xs), max(xs), min(ys), max(ys)
        for x0, x1, y0, y1 in _RECT_BOXES:
            if hi_x <= x0 or lo_x >= x1 or hi_y <= y0 or lo_y >= y1:
                continue  # bounding boxes apart: no overlap, skip the clipping
            total += _clip_area(poly, x0, x1, y0, y1)
    return total


def coverage(pose, goal_pose=GOAL_POSE) -> float:
    """Fraction in [0, 1] of the goal T's area covered by a block at Push-T pose ``pose`` = (x, y, theta)."""
    return min(1.0, overlap_area(pose, goal_pose) / AREA)


def distance_to_outline(points: np.ndarray, x: float, y: float, theta: float) -> np.ndarray:
    """Signed distance ``(N,)`` from world points ``(N, 2)`` to the T at pose ``(x, y, theta)``; negative inside."""
    c, s = math.cos(theta), math.sin(theta)
    d = np.asarray(points, dtype=np.float64) - np.array([x, y])
    local = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]], axis=1)
    best = np.full(len(local), np.inf)
    for x0, x1, y0, y1 in _RECT_BOXES:
        # Signed distance to an axis-aligned box; the union's distance is the min over its parts.
        qx = np.maximum(x0 - local[:, 0], local[:, 0] - x1)
        qy = np.maximum(y0 - local[:, 1], local[:, 1] - y1)
        outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
        inside = np.minimum(np.maximum(qx, qy), 0.0)
        best = np.minimum(best, outside + inside)
    return best
