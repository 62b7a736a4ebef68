"""Scripted Push-T expert: push strokes chosen from a fixed grid, evaluated by simulating them in MuJoCo.

Each plan is one human-like stroke: travel around the block to a point behind a chosen contact point (a
collision-free path through a visibility graph of the block's inflated convex corners), then push through the
contact point along a chosen direction for a chosen length, then hold for two steps. A plan is evaluated by rolling
the whole stroke out from the current simulator state (``mujoco.rollout`` on a scratch ``MjData``: the expert uses
privileged state and the simulator itself), so the predicted outcome is the real one. The expert scores candidates
by progress per control step, where progress is the drop of the mean distance between the block's 9 keypoints and
the goal's; strokes that reach coverage >= 0.95 on the way are preferred outright (the episode ends there). A stroke
runs open loop while the block follows its predicted path; when a disturbance (e.g. the collector's DART noise on
the executed actions) moves the block off that path, the expert drops the rest of the stroke and replans.

Candidates: a fixed grid (contact points evenly spaced along the outline x push directions x push lengths scaled to
the remaining error), then a fixed local grid around the best strokes (and small pushes when nothing improves); the
best score wins. The expert is therefore a deterministic function of the simulator state, with fixed travel and push
speeds: demonstrations differ only through their initial states, and a policy imitating them never has to guess
which of several equally good strokes a random draw picked (a seeded random choice among near-best strokes made the
demonstrations several times harder to learn: Push-T success 0.01-0.04 after 37 CPU-minutes, benchmarks/RESULTS.md).
About 2 s of planning per episode on one core.
"""

import math

import mujoco
import mujoco.rollout
import numpy as np

from diffpolicy.envs import pusht_geometry as geom

R_AGENT = 15.0
WORKSPACE = 512.0
CLEAR = 22.0  # centre-to-block clearance kept while travelling (agent radius + margin for the PD lag)
NODE_OFFSET = 28.0  # inflated convex corners sit this far from both adjacent edges
PUSH_BACKOFF = CLEAR + 2.0  # a stroke starts this far behind its contact point
REPLAN_ERROR = 3.0  # replan when the block is this far (mean keypoint distance) from where the stroke predicted
# Convex corners of the T in its body frame and their outward diagonal directions (signs).
CONVEX = np.array([(-60, 0), (60, 0), (60, 30), (15, 120), (-15, 120), (-60, 30)], dtype=np.float64)
CONVEX_DIR = np.array([(-1, -1), (1, -1), (1, 1), (1, 1), (-1, 1), (-1, 1)], dtype=np.float64)
_EDGE_A = geom.OUTLINE
_EDGE_B = np.roll(geom.OUTLINE, -1, axis=0)
_EDGE_LEN = np.linalg.norm(_EDGE_B - _EDGE_A, axis=1)
_EDGE_NORMAL = np.stack([(_EDGE_B - _EDGE_A)[:, 1], -(_EDGE_B - _EDGE_A)[:, 0]], axis=1) / _EDGE_LEN[:, None]
_KP = geom.KEYPOINTS
_SEG_SAMPLES = np.linspace(0.0, 1.0, 40)


def _keypoint_error(poses: np.ndarray, goal_kp: np.ndarray) -> np.ndarray:
    """Mean keypoint distance (...,) between blocks at Push-T poses (..., 3) and the goal keypoints (9, 2)."""
    c, s = np.cos(poses[..., 2:3]), np.sin(poses[..., 2:3])
    kx = c * _KP[:, 0] - s * _KP[:, 1] + poses[..., 0:1]
    ky = s * _KP[:, 0] + c * _KP[:, 1] + poses[..., 1:2]
    return np.hypot(kx - goal_kp[:, 0], ky - goal_kp[:, 1]).mean(-1)


def _clear(a: np.ndarray, b: np.ndarray, pose, clearance: float) -> np.ndarray:
    """Whether segments a -> b ((M, 2) each) keep ``clearance`` from the T at ``pose``; returns (M,) bool."""
    pts = a[:, None, :] + (b - a)[:, None, :] * _SEG_SAMPLES[None, :, None]
    d = geom.distance_to_outline(pts.reshape(-1, 2), *pose).reshape(len(a), -1)
    return d.min(axis=1) >= clearance


class PushTExpert:
    """Grid-search push planner for ``PushTEnv`` (pass ``env.unwrapped``). Call ``reset()`` after ``env.reset``.

    ``seed`` is accepted for the common expert interface and unused: the expert is deterministic.
    """

    travel_speed = 30.0  # units per control step
    push_speed = 14.0

    def __init__(self, env, seed: int | None = None, n_contacts: int = 24, n_top: int = 4):
        del seed
        self.env = env
        self.model = env.model
        self.scratch = mujoco.MjData(env.model)
        self.n_contacts = n_contacts
        self.n_top = n_top
        self.substeps = env.n_substeps
        self.goal_kp = geom.keypoints(*env.goal_pose)
        self.plan_log: list[dict] = []
        self.reset()

    def reset(self) -> None:
        """Forget the current stroke."""
        self.queue: list[np.ndarray] = []
        self.expected = np.zeros((0, 3))  # the block pose the current stroke predicts after each of its steps
        self._last_time = -1.0
        self.plan_log = []

    def act(self, obs=None) -> np.ndarray:
        """Next end-effector target (2,) float32; ``obs`` is unused (the expert reads the simulator)."""
        if self.env.data.time < self._last_time:  # the env was reset without ``reset()``: drop the old stroke
            self.queue = []
        if self.queue and self._off_plan():
            self.queue = []
        if not self.queue:
            self.queue, self.expected = self._plan()
        self._last_time = self.env.data.time
        return self.queue.pop(0).astype(np.float32)

    def _off_plan(self) -> bool:
        """Whether the block has left the pose the plan predicted for now (by > ``REPLAN_ERROR`` mean keypoint
        distance): then the rest of the stroke is stale and the expert replans. Never true without disturbances,
        since the plan was rolled out in the same simulator."""
        done = len(self.expected) - len(self.queue)  # control steps of this stroke executed so far
        if not 0 < done <= len(self.expected):  # at a stroke's start, or a stroke without prediction
            return False
        predicted = self.expected[done - 1]
        return float(_keypoint_error(np.array(self.env.block_pose()), geom.keypoints(*predicted))) > REPLAN_ERROR

    # --------------------------------------------------------------------------------------------- candidates
    def _grid(self, lengths: np.ndarray):
        """Grid strokes: edge index (n,), position along edge (n,), direction angle offset (n,), push length (n,).

        Contact points sit evenly along the outline (by arc length), each pushed inward along the normal and +-0.45 rad.
        """
        arc = (np.arange(self.n_contacts) + 0.5) / self.n_contacts * _EDGE_LEN.sum()
        edge = np.searchsorted(np.cumsum(_EDGE_LEN), arc, side="right")
        t = np.clip((arc - np.concatenate([[0.0], np.cumsum(_EDGE_LEN)])[edge]) / _EDGE_LEN[edge], 0.05, 0.95)
        e, ang, ln = np.meshgrid(np.arange(self.n_contacts), [-0.45, 0.0, 0.45], lengths, indexing="ij")
        return edge[e.ravel()], t[e.ravel()], ang.ravel(), ln.ravel()

    def _refine(self, best):
        """A fixed local grid (t +-0.08, angle +-0.2 rad, length x0.75 / x1.33) around the ``n_top`` best strokes."""
        top = best["order"][: self.n_top]
        top = top[np.isfinite(best["score"][top])]
        edge, t, angle, length = (p[top] for p in best["params"])
        dt, da, dl = np.meshgrid([-0.08, 0.0, 0.08], [-0.2, 0.0, 0.2], [0.75, 1.0, 1.33], indexing="ij")
        keep = ~((dt == 0) & (da == 0) & (dl == 1.0)).ravel()  # the centres are already evaluated
        dt, da, dl = dt.ravel()[keep], da.ravel()[keep], dl.ravel()[keep]
        return (
            np.repeat(edge, len(dt)),
            np.clip(np.repeat(t, len(dt)) + np.tile(dt, len(top)), 0.02, 0.98),
            np.clip(np.repeat(angle, len(da)) + np.tile(da, len(top)), -0.8, 0.8),
            np.clip(np.repeat(length, len(dl)) * np.tile(dl, len(top)), 0.3, 150.0),
        )

    def _strokes(self, pose, edge, t, angle, length):
        """World geometry of strokes: start (n, 2), end (n, 2), direction (n, 2), validity (n,) bool."""
        c, s = math.cos(pose[2]), math.sin(pose[2])
        rot = np.array([[c, -s], [s, c]])
        local = _EDGE_A[edge] + (_EDGE_B[edge] - _EDGE_A[edge]) * t[:, None]
        contact = local @ rot.T + np.array(pose[:2])
        inward = -_EDGE_NORMAL[edge] @ rot.T
        ca, sa = np.cos(angle), np.sin(angle)
        u = np.stack([ca * inward[:, 0] - sa * inward[:, 1], sa * inward[:, 0] + ca * inward[:, 1]], axis=1)
        start = contact - u * PUSH_BACKOFF
        # the agent's centre stops R_AGENT short of contact + u * length, so the block moves by about ``length``
        end = np.clip(contact + u * (length[:, None] - R_AGENT), 0.0, WORKSPACE)
        ok = (start >= 0.0).all(1) & (start <= WORKSPACE).all(1)
        ok &= geom.distance_to_outline(start, *pose) >= CLEAR - 1e-6
        # the agent must reach the contact point along u without first touching another part of the T
        ok &= _clear(start, contact - u * R_AGENT, pose, R_AGENT - 0.5)
        return start, end, u, ok

    # ----------------------------------------------------------------------------------------------- travel
    def _graph(self, agent: np.ndarray, pose):
        """Start node (after backing off the block if needed), corner nodes (6, 2), distances (7,), parents."""
        lead = [agent]
        point, d0 = agent, geom.distance_to_outline(agent[None], *pose)[0]
        for _ in range(10):  # touching or close: back off along the distance gradient before travelling
            if d0 >= CLEAR + 0.5:
                break
            probe = point + np.array([[0.5, 0.0], [0.0, 0.5]])
            grad = geom.distance_to_outline(probe, *pose) - d0
            grad /= max(np.linalg.norm(grad), 1e-9)
            point = np.clip(point + grad * (CLEAR + 1.0 - d0), 0.0, WORKSPACE)
            d0 = geom.distance_to_outline(point[None], *pose)[0]
        if point is not agent:
            lead.append(point)
        c, s = math.cos(pose[2]), math.sin(pose[2])
        rot = np.array([[c, -s], [s, c]])
        corners = (CONVEX + CONVEX_DIR * NODE_OFFSET) @ rot.T + np.array(pose[:2])
        nodes = np.vstack([lead[-1][None], corners])
        i, j = np.triu_indices(len(nodes), 1)
        vis = np.zeros((len(nodes), len(nodes)), bool)
        vis[i, j] = vis[j, i] = _clear(nodes[i], nodes[j], pose, CLEAR)
        w = np.where(vis, np.linalg.norm(nodes[:, None] - nodes[None], axis=-1), np.inf)
        dist = np.full(len(nodes), np.inf)
        dist[0] = 0.0
        parent = np.full(len(nodes), -1)
        done = np.zeros(len(nodes), bool)
        for _ in range(len(nodes)):  # Dijkstra on 7 nodes
            k = int(np.argmin(np.where(done, np.inf, dist)))
            if not np.isfinite(dist[k]):
                break
            done[k] = True
            better = dist[k] + w[k] < dist
            dist[better] = dist[k] + w[k][better]
            parent[better] = k
        return lead, nodes, dist, parent

    def _routes(self, lead, nodes, dist, starts, pose):
        """Shortest travel (n,) from the start node to each stroke start, and the last graph node used (n,)."""
        n = len(starts)
        a = np.repeat(nodes, n, axis=0)
        b = np.tile(starts, (len(nodes), 1))
        vis = _clear(a, b, pose, CLEAR - 2.0).reshape(len(nodes), n)
        total = np.where(vis, dist[:, None] + np.linalg.norm(nodes[:, None] - starts[None], axis=-1), np.inf)
        via = np.argmin(total, axis=0)
        return total[via, np.arange(n)] + np.linalg.norm(lead[-1] - lead[0]), via

    def _controls(self, lead, nodes, parent, via, start, end):
        """Per-control-step targets (k, 2) following lead -> graph nodes -> start at travel speed, then the push."""
        chain, k = [], via
        while k > 0:
            chain.append(nodes[k])
            k = parent[k]
        travel = [*lead, *chain[::-1], start]
        out = _resample(np.array(travel), self.travel_speed)
        push = _resample(np.array([start, end]), self.push_speed)
        return np.vstack([out, push, push[-1:], push[-1:]])

    # ------------------------------------------------------------------------------------------------- plan
    def _plan(self) -> tuple[list[np.ndarray], np.ndarray]:
        """Choose the next stroke from the current simulator state; returns its targets, one (2,) per control step,
        and the block poses (k, 3) it predicts after each step."""
        env = self.env
        pose = env.block_pose()
        agent = env.data.qpos[:2].copy()
        err = float(_keypoint_error(np.array(pose), self.goal_kp))
        lead, nodes, dist, parent = self._graph(agent, pose)
        l_max = float(np.clip(1.2 * err, 8.0, 120.0))
        best = self._evaluate(pose, self._grid(l_max * np.array([0.3, 0.6, 1.0])), lead, nodes, dist, parent, err)
        if best["n_good"] == 0:  # nothing improves: try small pushes
            small = self._evaluate(pose, self._grid(np.array([3.0, 6.0])), lead, nodes, dist, parent, err)
            best = _merge(best, small)
        if np.isfinite(best["score"]).any():
            best = _merge(best, self._evaluate(pose, self._refine(best), lead, nodes, dist, parent, err))
        if not np.isfinite(best["score"]).any():  # boxed in (e.g. between the block and a wall): step aside
            com = np.array(env.data.qpos[2:4])
            heading = agent - com if np.linalg.norm(agent - com) > 1e-6 else WORKSPACE / 2 - agent
            aside = np.clip(agent + 40.0 * heading / max(np.linalg.norm(heading), 1e-9), 0.0, WORKSPACE)
            self.plan_log.append({"err": err, "score": float("nan"), "steps": 3})
            return list(_resample(np.array([agent, aside]), 40.0 / 3)), np.zeros((0, 3))
        k = int(best["order"][0])
        self.plan_log.append({"err": err, "score": float(best["score"][k]), "steps": len(best["controls"][k])})
        return list(best["controls"][k]), best["poses"][k]

    def _evaluate(self, pose, params, lead, nodes, dist, parent, err):
        """Roll out every valid stroke from the current state; returns scores, order and controls per candidate."""
        start, end, u, ok = self._strokes(pose, *params)
        travel, via = self._routes(lead, nodes, dist, start, pose)
        ok &= np.isfinite(travel)
        idx = np.flatnonzero(ok)
        scores = np.full(len(ok), -np.inf)
        controls, predicted = [None] * len(ok), [None] * len(ok)
        if len(idx) == 0:
            return {"score": scores, "order": np.argsort(-scores), "controls": controls, "poses": predicted,
                    "params": params, "n_good": 0}
        ctrl_list = [self._controls(lead, nodes, parent, via[i], start[i], end[i]) for i in idx]
        lens = np.array([len(c) for c in ctrl_list])
        horizon = int(lens.max())
        ctrl = np.empty((len(idx), horizon, 2))
        for r, c in enumerate(ctrl_list):
            ctrl[r, : len(c)] = c
            ctrl[r, len(c):] = c[-1]
        state0 = np.empty(mujoco.mj_stateSize(self.model, mujoco.mjtState.mjSTATE_FULLPHYSICS))
        mujoco.mj_getState(self.model, self.env.data, state0, mujoco.mjtState.mjSTATE_FULLPHYSICS)
        per_step = np.repeat(ctrl, self.substeps, axis=1)
        states, _ = mujoco.rollout.rollout(self.model, self.scratch, state0[None], per_step)
        q = states[:, self.substeps - 1 :: self.substeps, 1:6]  # qpos after each control step, (n, horizon, 5)
        c, s = np.cos(q[..., 4]), np.sin(q[..., 4])
        poses = np.stack([q[..., 2] + s * geom.COM[1], q[..., 3] - c * geom.COM[1], q[..., 4]], axis=-1)
        kp_err = _keypoint_error(poses, self.goal_kp)  # (n, horizon)
        final = kp_err[np.arange(len(idx)), lens - 1]
        sc = (err - final) / (lens + 2.0)
        good = final < err - 0.3
        for r in range(len(idx)):  # strokes that pass through success end the episode: prefer the earliest
            near = np.flatnonzero(kp_err[r, : lens[r]] < 6.0)
            for step in near:
                if geom.coverage(tuple(poses[r, step]), self.env.goal_pose) >= geom.SUCCESS_COVERAGE:
                    sc[r] = 1e6 / (step + 1.0)
                    good[r] = True
                    ctrl_list[r] = ctrl_list[r][: step + 1]
                    break
        sc = np.where(good, sc, sc - 1e3)  # non-improving strokes only as a last resort
        scores[idx] = sc
        for r, i in enumerate(idx):
            controls[i] = ctrl_list[r]
            predicted[i] = poses[r, : len(ctrl_list[r])]
        return {"score": scores, "order": np.argsort(-scores), "controls": controls, "poses": predicted,
                "params": params, "n_good": int(good.sum())}


def _merge(a: dict, b: dict) -> dict:
    """Union of two candidate evaluations (see ``PushTExpert._evaluate``)."""
    score = np.concatenate([a["score"], b["score"]])
    params = tuple(np.concatenate(pair) for pair in zip(a["params"], b["params"]))
    return {"score": score, "order": np.argsort(-score), "controls": a["controls"] + b["controls"],
            "poses": a["poses"] + b["poses"], "params": params, "n_good": a["n_good"] + b["n_good"]}


def _resample(poly: np.ndarray, speed: float) -> np.ndarray:
    """Points (k, 2) every ~``speed`` units along polyline ``poly`` (m, 2), after its first vertex, ending at its last."""
    seg = np.linalg.norm(np.diff(poly, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    total = cum[-1]
    n = max(1, int(math.ceil(total / speed)))
    s = np.linspace(0.0, total, n + 1)[1:]
    x = np.interp(s, cum, poly[:, 0])
    y = np.interp(s, cum, poly[:, 1])
    return np.stack([x, y], axis=1)
