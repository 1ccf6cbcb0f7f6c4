"""GGN grouping: a pairwise-affinity map → ranked, class-agnostic candidate masks (docs/ggn.md#32-grouping, docs/ggn.md#33-pseudo-gt).

A gPb-owt-ucm-like pipeline on the single affinity channel A (1 = same object, 0 = boundary):
watershed superpixels seeded at local maxima of A, an orientation-aware local boundary on the
watershed lines, spectral globalisation of that boundary, a region adjacency graph, the full
greedy merge tree, a border filter, ranking by "mean A on the contour band − mean A inside", and
NMS computed on superpixel sets. Defaults are upstream's extraction config (`pa_extract.py`), not
the defaults of upstream's function signatures.

Everything per pixel is vectorised; per-candidate quantities (band and interior sums, border
overlap, IoU) are sums over subtrees of the merge tree (candidates are its nodes, so any two are
nested or disjoint), so no candidate is ever rasterised except the ``top_n`` returned.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy import sparse
from scipy.sparse.linalg import LinearOperator, eigsh, splu
from skimage.feature import peak_local_max
from skimage.segmentation import find_boundaries, watershed

__all__ = ["Candidate", "Grouping", "GroupingParams", "build_grouping", "group_affinity", "gt_iou", "select_pseudo"]

RANK_METHODS = ("boundary_minus_interior", "boundary", "ncut")


@dataclass(frozen=True)
class GroupingParams:
    """Grouping knobs; defaults = upstream `configs/pairwise_affinity/pa_extract.py`."""

    edge_thresh: float = 0.0  # seeds only where A > edge_thresh · max(A)
    join_thresh: float = 1.0  # merge while the smallest edge weight is below this (1.0: full tree)
    rank_method: str = "boundary_minus_interior"  # upstream rank_method 3 ("boundary": 0, "ncut": 4)
    nms_thresh: float = 0.2  # drop a candidate whose IoU with a kept one exceeds this (≤0: off)
    use_orientation: bool = True
    globalization: float = 0.5  # weight of the spectral boundary (0: off)
    n_eigenvectors: int = 16  # eigenpairs nearest 0, the first (constant) one dropped
    gamma: float = 0.12  # pixel affinity W = exp(−boundary / gamma)
    # Solve the eigenproblem on a grid coarser by this factor (block max of the local boundary) and
    # repeat the globalised boundary back to full size: ~6× faster at 640×480. 1 = full grid (upstream).
    spectral_downsample: int = 2
    border_filter_thresh: float = 0.9  # drop if thresh · |inner contour| < #mask pixels on the frame (≤0: off)
    min_component_size: int = 0  # minimum candidate area in pixels
    seed_footprint: int = 20  # side of the square peak_local_max footprint
    top_n: int = 20

    def __post_init__(self) -> None:
        if self.rank_method not in RANK_METHODS:
            raise ValueError(f"GroupingParams.rank_method={self.rank_method!r}; use one of {RANK_METHODS}")
        if self.seed_footprint < 1 or self.top_n < 1:
            raise ValueError(
                f"GroupingParams: seed_footprint={self.seed_footprint} and top_n={self.top_n} must be ≥ 1"
            )
        if self.spectral_downsample < 1:
            raise ValueError(f"GroupingParams.spectral_downsample={self.spectral_downsample} must be ≥ 1")
        if self.globalization and self.n_eigenvectors < 2:
            raise ValueError(f"GroupingParams.n_eigenvectors={self.n_eigenvectors} must be ≥ 2 (the first is dropped)")


@dataclass
class Candidate:
    """One candidate mask. ``score`` = 1 − ranking score (higher is better); ``rank`` is 0-based."""

    mask: np.ndarray  # bool [H, W]
    score: float
    rank: int
    bbox: list[float]  # [x, y, w, h] in pixels
    area: int


@dataclass
class Grouping:
    """Every candidate of one affinity map that passes the filters, best PA score first, before NMS.

    Candidates are merge-tree nodes (``nodes``); ``score`` is the PA confidence (1 − ranking score) and
    ``boxes`` the tight pixel box ``[x0, y0, x1, y1)`` of each (``x1 − x0`` = the mask's width). Small
    enough to return from a worker process: the masks are rasterised only for the kept candidates.
    """

    labels: np.ndarray  # int [H, W] superpixels 1..K
    tree: _Tree
    area: np.ndarray  # [N+1] pixel count of each tree node
    nodes: np.ndarray  # [C] candidate node ids
    score: np.ndarray  # [C] PA confidence, non-increasing
    boxes: np.ndarray  # [C, 4] float64

    def __len__(self) -> int:
        return len(self.nodes)

    def select(self, params: GroupingParams = GroupingParams(), scores: np.ndarray | None = None) -> list[Candidate]:
        """The first ``params.top_n`` candidates after NMS, ranked by ``scores`` [C] (higher first; ties keep
        the PA order) or, without them, by the PA score. A candidate's ``score`` is the one it was ranked by."""
        if scores is None:
            scores = self.score
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != self.score.shape or not np.isfinite(scores).all():
            raise ValueError(f"Grouping.select: scores must be {len(self)} finite numbers, got shape {scores.shape}")
        order = np.argsort(-scores, kind="stable")
        kept = _nms(self.tree, self.area, self.nodes[order], params.nms_thresh, params.top_n)
        index = {int(node): int(i) for i, node in zip(order.tolist(), self.nodes[order].tolist())}
        n_sp = int(self.labels.max())
        out = []
        for rank, node in enumerate(kept):
            lut = np.zeros(n_sp + 1, dtype=bool)
            lut[self.tree.leaves[self.tree.lo[node]:self.tree.hi[node]]] = True
            x0, y0, x1, y1 = self.boxes[index[node]].tolist()
            out.append(Candidate(lut[self.labels], float(scores[index[node]]), rank, [x0, y0, x1 - x0, y1 - y0],
                                 int(self.area[node])))
        return out


def group_affinity(affinity: np.ndarray, params: GroupingParams = GroupingParams()) -> list[Candidate]:
    """Ranked candidate masks from one affinity map ``affinity`` [H, W] in [0, 1] (best first), ranked by
    the PA score: :func:`build_grouping` then :meth:`Grouping.select`.

    Returns at most ``params.top_n`` candidates; an empty list when the map yields fewer than two
    superpixels (upstream: "less than 2 markers").
    """
    grouping = build_grouping(affinity, params)
    return grouping.select(params) if grouping is not None else []


def build_grouping(affinity: np.ndarray, params: GroupingParams = GroupingParams()) -> Grouping | None:
    """Every filtered candidate of ``affinity`` [H, W] in [0, 1] with its PA score and box (docs/ggn.md#32-grouping,
    steps 1–9), or None when the map yields fewer than two superpixels."""
    a = np.asarray(affinity, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 2 or a.shape[1] < 2:
        raise ValueError(f"group_affinity: affinity must be a 2-D map of at least 2×2 pixels, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("group_affinity: affinity contains NaN or inf; pass sigmoid probabilities in [0, 1]")
    labels = superpixels(a, params)
    n_sp = int(labels.max())
    if n_sp < 2:
        return None
    boundary = final_boundary(a, labels, params)
    pairs, weights = _rag_boundary(labels, boundary)
    tree = _merge_tree(n_sp, pairs, weights, params.join_thresh)
    node_stats = _candidate_stats(labels, a, tree)
    stats = {k: v[tree.order] for k, v in node_stats.items()}  # candidates in upstream order
    keep = stats["area"] >= params.min_component_size
    if params.border_filter_thresh > 0:
        keep &= ~(params.border_filter_thresh * stats["inner_count"] < stats["frame_count"])
    score = _ranking_score(stats, params.rank_method)
    cand = np.flatnonzero(keep)
    cand = cand[np.argsort(score[cand], kind="stable")]
    nodes = tree.order[cand]
    return Grouping(labels, tree, node_stats["area"], nodes, 1.0 - score[cand], _node_boxes(labels, tree)[nodes])


def superpixels(a: np.ndarray, params: GroupingParams = GroupingParams()) -> np.ndarray:
    """Marker watershed of −A (8-connected) seeded at connected local maxima: int labels 1..K [H, W]."""
    fp = np.ones((params.seed_footprint, params.seed_footprint), dtype=bool)
    peaks = peak_local_max(a, footprint=fp)
    seeds = np.zeros(a.shape, dtype=bool)
    seeds[tuple(peaks.T)] = True
    markers, _ = ndi.label(seeds)
    markers[a <= params.edge_thresh * a.max()] = 0  # upstream masks after labelling
    if not markers.any():
        return np.zeros(a.shape, dtype=np.int64)
    labels = watershed(-a, markers, connectivity=2)
    return np.unique(labels, return_inverse=True)[1].reshape(a.shape).astype(np.int64) + 1


def final_boundary(a: np.ndarray, labels: np.ndarray, params: GroupingParams = GroupingParams()) -> np.ndarray:
    """Boundary strength [H, W] in [0, 1]: (1−g)·local + g·global with g = ``params.globalization``."""
    if params.use_orientation:
        ws = find_boundaries(labels)
        align = np.abs(np.cos(_orientation(ws.astype(np.float64)) - _orientation(1.0 - a)))
        local = align * ws * (1.0 - a)
    else:
        local = 1.0 - a
    g = params.globalization
    if not g:
        return local
    d = params.spectral_downsample
    h, w = local.shape
    if d > 1 and min(h, w) >= 4 * d:
        hp, wp = -(-h // d) * d, -(-w // d) * d
        coarse = np.pad(local, ((0, hp - h), (0, wp - w)), mode="edge").reshape(hp // d, d, wp // d, d).max(axis=(1, 3))
        glob = spectral_boundary(coarse, params.n_eigenvectors, params.gamma)
        glob = np.repeat(np.repeat(glob, d, axis=0), d, axis=1)[:h, :w]
    else:
        glob = spectral_boundary(local, params.n_eigenvectors, params.gamma)
    peak = glob.max()
    if peak > 0:
        glob = glob / peak
    return (1.0 - g) * local + g * glob


def _orientation(edge: np.ndarray) -> np.ndarray:
    """Edge orientation in [0, π): 9×9 triangle smoothing, [−1,2,−1] second differences, diagonal flip."""
    tri = 5.0 - np.abs(np.arange(9) - 4.0)
    tri /= tri.sum()
    s = ndi.correlate1d(ndi.correlate1d(edge, tri, axis=0, mode="constant"), tri, axis=1, mode="constant")
    d2 = np.array([-1.0, 2.0, -1.0])
    dy = ndi.correlate1d(s, d2, axis=1, mode="constant")  # upstream's naming: "Dy" differences along x
    dx = ndi.correlate1d(s, d2, axis=0, mode="constant")
    diag = ndi.correlate(s, np.array([[1.0, 0, -1], [0, 0, 0], [-1, 0, 1]]), mode="constant") > 0
    dy = np.where(diag, -dy, dy)
    return np.mod(np.arctan2(dy, dx), np.pi)


def spectral_boundary(boundary: np.ndarray, n_vectors: int = 16, gamma: float = 0.12, tol: float = 1e-4) -> np.ndarray:
    """Globalised boundary [H, W] (unnormalised) from the generalised eigenvectors of a 4-neighbour graph.

    W_pq = min(exp(−b_p/γ), exp(−b_q/γ)) plus a unit self-loop, D = diag(row sums); solves
    (D−W)v = λDv for the ``n_vectors`` eigenpairs nearest 0 (shift-invert), drops the first,
    min-max normalises each vector, divides by √λ, takes the max absolute difference to the
    4 neighbours, sums over vectors and raises to 1/√2. ``tol``: ARPACK's relative eigenvalue
    tolerance (1e-4 changes the result by ~1e-6 and needs ~⅔ of the solves of machine precision).
    """
    h, w = boundary.shape
    n = h * w
    k = min(n_vectors, n - 1)
    aff = np.exp(-boundary / gamma)
    hor = np.minimum(aff[:, 1:], aff[:, :-1]).ravel()
    ver = np.minimum(aff[1:], aff[:-1]).ravel()
    idx = np.arange(n).reshape(h, w)
    rows = np.concatenate([idx[:, :-1].ravel(), idx[:-1].ravel()])
    cols = np.concatenate([idx[:, 1:].ravel(), idx[1:].ravel()])
    vals = np.concatenate([hor, ver])
    deg = 1.0 + np.bincount(rows, vals, n) + np.bincount(cols, vals, n)
    # Symmetric normalised form: (D−W)v = λDv ⇔ D^-½(D−W)D^-½ u = λu, v = D^-½u (same λ).
    dis = 1.0 / np.sqrt(deg)
    off = -vals * dis[rows] * dis[cols]
    lap = sparse.coo_matrix(
        (np.concatenate([(deg - 1.0) * dis * dis, off, off]),
         (np.concatenate([np.arange(n), rows, cols]), np.concatenate([np.arange(n), cols, rows]))),
        shape=(n, n),
    ).tocsc()
    # Shift-invert about a tiny negative σ keeps the factorised matrix positive definite (the
    # Laplacian is singular); a symmetric fill-reducing ordering factorises ~1.5× faster than COLAMD.
    sigma = -1e-8
    lu = splu((lap - sigma * sparse.eye(n, format="csc")).tocsc(), permc_spec="MMD_AT_PLUS_A",
              diag_pivot_thresh=0.0, options={"SymmetricMode": True})
    op = LinearOperator((n, n), matvec=lu.solve, dtype=np.float64)
    lam, u = eigsh(lap, k=k, sigma=sigma, which="LM", OPinv=op, v0=np.full(n, 1.0 / np.sqrt(n)),
                    tol=tol)
    order = np.argsort(lam)
    lam, vec = lam[order][1:], (u[:, order] * dis[:, None])[:, 1:]
    lo, hi = vec.min(axis=0), vec.max(axis=0)
    vec = (vec - lo) / np.where(hi > lo, hi - lo, 1.0) / np.sqrt(np.maximum(lam, 1e-12))
    vec = vec.reshape(h, w, -1)
    g = np.zeros_like(vec)
    dv = np.abs(vec[1:] - vec[:-1])
    dh = np.abs(vec[:, 1:] - vec[:, :-1])
    g[1:] = np.maximum(g[1:], dv)
    g[:-1] = np.maximum(g[:-1], dv)
    g[:, 1:] = np.maximum(g[:, 1:], dh)
    g[:, :-1] = np.maximum(g[:, :-1], dh)
    return np.power(g.sum(axis=2), 1.0 / np.sqrt(2.0))


def _rag_boundary(labels: np.ndarray, boundary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected RAG: adjacent label pairs [E, 2] (small, large) and mean boundary on their border [E].

    As upstream (`pa_lib/rag.py`): a pixel adds to pair (erosion, label) and (label, dilation).
    """
    fp = np.ones((3, 3), dtype=bool)
    ero = ndi.grey_erosion(labels, footprint=fp)
    dil = ndi.grey_dilation(labels, footprint=fp)
    b0, b1 = ero != labels, dil != labels
    small = np.concatenate([ero[b0], labels[b1]])
    large = np.concatenate([labels[b0], dil[b1]])
    vals = np.concatenate([boundary[b0], boundary[b1]])
    key = small * (int(labels.max()) + 1) + large
    uniq, inv = np.unique(key, return_inverse=True)
    mean = np.bincount(inv, vals) / np.bincount(inv)
    k = int(labels.max()) + 1
    return np.stack([uniq // k, uniq % k], axis=1), mean


@dataclass
class _Tree:
    """Merge forest over superpixels 1..K; node ids K+1.. are merges (a parent's id exceeds its children's)."""

    children: np.ndarray  # [N+1, 2] the two merged nodes of each merge node (0 for leaves)
    order: np.ndarray  # [C] node ids in upstream's candidate order
    leaves: np.ndarray  # [K] superpixel labels in depth-first order
    lo: np.ndarray  # [N+1] each node's leaves are leaves[lo:hi]
    hi: np.ndarray
    sep: np.ndarray  # [K−1] lowest common ancestor of consecutive depth-first leaves (N+1 between trees)


def _merge_tree(n_sp: int, pairs: np.ndarray, weights: np.ndarray, join_thresh: float) -> _Tree:
    """Greedy merge of the smallest-weight adjacent pair while < ``join_thresh``.

    A merged node's weight to a neighbour is the mean of the two old weights (or the one that exists).
    Candidate order as upstream: nodes as they were removed by merges (second, then first of each
    pair), then the nodes still alive.
    """
    adj: dict[int, dict[int, float]] = {i: {} for i in range(1, n_sp + 1)}
    heap = []
    for (u, v), w in zip(pairs.tolist(), weights.tolist()):
        adj[u][v] = w
        adj[v][u] = w
        heap.append((w, u, v))
    heapq.heapify(heap)
    children: list[tuple[int, int]] = []
    removed: list[int] = []
    next_id = n_sp + 1
    while heap and heap[0][0] < join_thresh:
        _, u, v = heapq.heappop(heap)
        if u not in adj or v not in adj:  # stale entry: one end was merged already
            continue
        new = next_id
        next_id += 1
        nu, nv = adj.pop(u), adj.pop(v)
        nbrs = {}
        for n in (nu.keys() | nv.keys()) - {u, v}:
            w = (nu[n] + nv[n]) / 2.0 if n in nu and n in nv else nu[n] if n in nu else nv[n]
            nbrs[n] = w
            adj[n].pop(u, None)
            adj[n].pop(v, None)
            adj[n][new] = w
        adj[new] = nbrs
        for n in sorted(nbrs):
            heapq.heappush(heap, (nbrs[n], new, n))
        children.append((u, v))
        removed += [v, u]
    roots = sorted(adj)
    kids = np.zeros((next_id, 2), dtype=np.int64)
    if children:
        kids[n_sp + 1:] = children
    # depth-first leaf order (first child first) and each node's leaf range
    leaves: list[int] = []
    stack = roots[::-1]
    while stack:
        node = stack.pop()
        if node <= n_sp:
            leaves.append(node)
        else:
            stack += [int(kids[node, 1]), int(kids[node, 0])]
    leaf_arr = np.asarray(leaves, dtype=np.int64)
    lo = np.zeros(next_id, dtype=np.int64)
    hi = np.zeros(next_id, dtype=np.int64)
    lo[leaf_arr] = np.arange(n_sp)
    hi[leaf_arr] = lo[leaf_arr] + 1
    sep = np.full(max(n_sp - 1, 0), next_id, dtype=np.int64)
    for node, (u, v) in enumerate(children, start=n_sp + 1):
        lo[node], hi[node] = min(lo[u], lo[v]), max(hi[u], hi[v])
        sep[hi[u] - 1] = node
    order = np.asarray(removed + roots, dtype=np.int64)
    return _Tree(kids, order, leaf_arr, lo, hi, sep)


def _subtree_sums(tree: _Tree, values: np.ndarray) -> np.ndarray:
    """Sum of ``values`` [N+1, q] over each node's subtree (itself included) → [N+1, q]."""
    out = values.copy()
    n_sp = len(tree.leaves)
    for node in range(n_sp + 1, len(out)):
        u, v = tree.children[node]
        out[node] += out[u] + out[v]
    return out


def _range_max(values: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """max(values[i:j]) elementwise for index arrays with i < j (sparse table, O(n log n) once)."""
    table = [values]
    while (1 << len(table)) <= len(values):
        prev, half = table[-1], 1 << (len(table) - 1)
        table.append(np.maximum(prev[: len(prev) - half], prev[half:]))
    level = np.floor(np.log2(j - i)).astype(np.int64)
    out = np.empty(len(i), dtype=values.dtype)
    for lev in np.unique(level).tolist():
        sel = level == lev
        t = table[lev]
        out[sel] = np.maximum(t[i[sel]], t[j[sel] - (1 << lev)])
    return out


def _candidate_stats(labels: np.ndarray, a: np.ndarray, tree: _Tree) -> dict[str, np.ndarray]:
    """Per-node sums for ranking and filters [N+1] (index = tree node id), in O(pixels + N log N).

    The 'thick' contour band of a candidate S (skimage ``find_boundaries``, 4-connectivity,
    reflected at the frame) holds pixels whose closed 4-neighbourhood has labels both in and out of
    S; only pixels whose neighbourhood spans ≥2 labels can be on any band, so they are grouped by
    (own label, neighbourhood label set L). A tree node holds some of L iff it is an ancestor of one
    of L's leaves and all of L iff it is an ancestor of their lowest common ancestor, so a group's
    band indicator over nodes is a sum of ±1 point marks (its leaves; the LCAs of depth-first
    consecutive leaves; the LCA of all) summed over each subtree; 'inner' (own label in S) likewise.
    """
    n_sp = len(tree.leaves)
    n_nodes = len(tree.lo)
    p = np.pad(labels, 1, mode="edge")
    nb = np.stack([labels, p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]], axis=-1).reshape(-1, 5)
    on = (nb != nb[:, :1]).any(axis=1)
    sets = np.sort(nb[on], axis=1)
    sets[:, 1:][sets[:, 1:] == sets[:, :-1]] = 0  # keep each distinct label once (0 = padding)
    key = np.concatenate([nb[on, :1], sets], axis=1)
    groups, inv, cnt = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    asum = np.bincount(inv.ravel(), a.ravel()[on], len(groups))
    own, sets = groups[:, 0], groups[:, 1:]
    valid = sets > 0
    pos = np.zeros(n_sp + 1, dtype=np.int64)
    pos[tree.leaves] = np.arange(n_sp)
    big = n_sp + 1
    dfs = np.sort(np.where(valid, pos[sets], big), axis=1)  # depth-first positions, padding last
    m = valid.sum(axis=1)
    lca_all = _range_max(tree.sep, dfs[:, 0], dfs[np.arange(len(dfs)), m - 1])
    pair = dfs[:, 1:] < big
    lca_pair = _range_max(tree.sep, dfs[:, :-1][pair], dfs[:, 1:][pair])
    pair_row = np.nonzero(pair)[0]
    leaf_row = np.nonzero(valid)[0]
    flat = labels.ravel()
    total = n_nodes + 1  # + the virtual root joining the trees of a forest (dropped)

    def marks(idx: np.ndarray, w: np.ndarray) -> np.ndarray:
        return np.bincount(idx, w, total)[:n_nodes]

    cols = []
    for w in (cnt.astype(np.float64), asum):
        cols.append(marks(sets[valid], w[leaf_row]) - marks(lca_pair, w[pair_row]) - marks(lca_all, w))  # band
        cols.append(marks(own, w) - marks(lca_all, w))  # inner
    frame = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    cols += [marks(flat, np.ones(flat.size)), marks(flat, a.ravel()), marks(frame, np.ones(frame.size))]
    s = _subtree_sums(tree, np.stack(cols, axis=1))
    names = ("band_count", "inner_count", "band_sum", "inner_sum", "area", "mask_sum", "frame_count")
    return {k: s[:, i] for i, k in enumerate(names)}


def _ranking_score(s: dict[str, np.ndarray], method: str) -> np.ndarray:
    """Ranking score per candidate, lower is better (upstream `compute_ranking_score`)."""
    interior_count = s["area"] - s["inner_count"]
    interior_sum = s["mask_sum"] - s["inner_sum"]
    with np.errstate(divide="ignore", invalid="ignore"):
        band_mean = s["band_sum"] / s["band_count"]
        if method == "boundary":
            return np.where(s["band_count"] > 0, band_mean, np.nan)
        if method == "ncut":
            return s["band_sum"] / (interior_sum + s["band_sum"])
        score = band_mean - interior_sum / interior_count
    return np.where((s["band_count"] == 0) | (interior_count == 0), 100.0, score)


def _nms(tree: _Tree, area: np.ndarray, ranked: np.ndarray, thresh: float, top_n: int) -> list[int]:
    """Greedy NMS over ranked node ids; stops after ``top_n`` kept.

    Two tree nodes are nested or disjoint, so IoU = smaller area / larger area if nested, else 0.
    """
    if thresh <= 0:
        return ranked[:top_n].tolist()
    kept: list[int] = []
    for c in ranked.tolist():
        if kept:
            k = np.asarray(kept)
            nested = ((tree.lo[k] <= tree.lo[c]) & (tree.hi[c] <= tree.hi[k])) | (
                (tree.lo[c] <= tree.lo[k]) & (tree.hi[k] <= tree.hi[c]))
            iou = np.minimum(area[k], area[c]) / np.maximum(area[k], area[c])
            if (nested & (iou > thresh)).any():
                continue
        kept.append(c)
        if len(kept) == top_n:
            break
    return kept


def _node_boxes(labels: np.ndarray, tree: _Tree) -> np.ndarray:
    """Tight box ``[x0, y0, x1, y1)`` of every tree node [N+1, 4]: its superpixels' boxes, merged up the tree."""
    boxes = np.zeros((len(tree.lo), 4))
    for label, sl in enumerate(ndi.find_objects(labels), start=1):
        boxes[label] = sl[1].start, sl[0].start, sl[1].stop, sl[0].stop
    n_sp = len(tree.leaves)
    for node in range(n_sp + 1, len(boxes)):
        u, v = tree.children[node]
        boxes[node, :2] = np.minimum(boxes[u, :2], boxes[v, :2])
        boxes[node, 2:] = np.maximum(boxes[u, 2:], boxes[v, 2:])
    return boxes


def gt_iou(candidate_masks: np.ndarray | Sequence[np.ndarray], seen_gt_masks: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """Max mask IoU of each candidate [C, H, W] with the seen-class GT masks [G, H, W] → [C] (0 if G = 0)."""
    cand = np.asarray(candidate_masks, dtype=bool)
    gt = np.asarray(seen_gt_masks, dtype=bool)
    if len(cand) == 0:
        return np.zeros(0)
    if len(gt) == 0:
        return np.zeros(len(cand))
    if cand.shape[1:] != gt.shape[1:]:
        raise ValueError(f"gt_iou: candidate masks {cand.shape[1:]} and GT masks {gt.shape[1:]} differ in size")
    c = cand.reshape(len(cand), -1).astype(np.float32)
    g = gt.reshape(len(gt), -1).astype(np.float32)
    inter = c @ g.T
    union = c.sum(1)[:, None] + g.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0).max(axis=1).astype(np.float64)


def select_pseudo(
    candidates: Sequence[Candidate],
    gt_ious: Sequence[float] | np.ndarray,
    top_k: int = 3,
    gt_iou_thresh: float = 0.5,
    score_thresh: float | None = None,
) -> list[Candidate]:
    """Pseudo GT for one image (docs/ggn.md#33-pseudo-gt): drop gt_iou ≥ thresh (and score < score_thresh), first top_k by rank."""
    ious = np.asarray(gt_ious, dtype=np.float64)
    if len(ious) != len(candidates):
        raise ValueError(f"select_pseudo: {len(candidates)} candidates but {len(ious)} gt_ious")
    keep = [
        (c.rank, i) for i, c in enumerate(candidates)
        if ious[i] < gt_iou_thresh and (score_thresh is None or c.score >= score_thresh)
    ]
    return [candidates[i] for _, i in sorted(keep)[:top_k]]
