"""numba kernels that interpret a compiled network program (`neurons.plan`) over whole epochs.

A program is rows of int op codes with offsets into one flat parameter buffer, one flat
activation workspace and one flat gradient workspace; `train_epoch` runs every minibatch of an
epoch (forward, loss, backward, clipping, optimizer step) in one call and `forward_rows` runs
inference. The slow, obvious twin is the tape path of `neurons.graph` (tests compare the two).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# op codes (column OP of a program row)
DENSE, ACT, MERGE, SCALE = 1, 2, 3, 4
# program row columns
OP, OUT_D, OUT_G, OUT_W, IN_D, IN_G, IN_W, W_OFF, B_OFF, ACT_CODE, Z_D, MODE, M_START, M_COUNT = (
    range(14)
)
N_COLS = 14
# activation codes
ACTS = {"linear": 0, "sigmoid": 1, "tanh": 2, "relu": 3, "leaky_relu": 4, "elu": 5, "softmax": 6}
# merge codes (overwrite never reaches a kernel: the plan aliases the last input)
MERGE_CODES = {"add": 0, "subtract": 1, "multiply": 2, "mean": 3}
# objective codes
OBJECTIVES = {"softmax_ce": 1, "sigmoid_bce": 2, "mse": 3, "mae": 4, "ae": 5}
# optimizer codes; hyper-parameters hp[0] = lr, hp[1] = weight_decay, then per optimizer
SGD, SGDM, ADAM, RMSPROP = 1, 2, 3, 4
# statuses returned by train_epoch
OK, BAD_LOSS, BAD_GRAD = 0, 1, 2


@njit(cache=True, error_model="numpy")
def _act_fwd(code, prm, W, zo, ao, nb, w):
    n_el = nb * w
    if code == 0:
        if zo != ao:
            for e in range(n_el):
                W[ao + e] = W[zo + e]
    elif code == 1:
        for e in range(n_el):
            z = W[zo + e]
            if z >= 0:
                W[ao + e] = 1.0 / (1.0 + math.exp(-z))
            else:
                ez = math.exp(z)
                W[ao + e] = ez / (1.0 + ez)
    elif code == 2:
        for e in range(n_el):
            W[ao + e] = np.tanh(W[zo + e])
    elif code == 3:
        for e in range(n_el):
            z = W[zo + e]
            W[ao + e] = z if z > 0 else z * 0  # NaN stays NaN, like z * (z > 0)
    elif code == 4:
        for e in range(n_el):
            z = W[zo + e]
            W[ao + e] = z if z > 0 else z * prm
    elif code == 5:
        for e in range(n_el):
            z = W[zo + e]
            W[ao + e] = z if z > 0 else prm * math.expm1(min(z, 0.0))
    else:  # softmax over each row
        for n in range(nb):
            r = n * w
            m = W[zo + r]
            for j in range(1, w):
                m = max(m, W[zo + r + j])
            s = 0.0
            for j in range(w):
                e_ = math.exp(W[zo + r + j] - m)
                W[ao + r + j] = e_
                s += e_
            for j in range(w):
                W[ao + r + j] = W[ao + r + j] / s


@njit(cache=True, error_model="numpy")
def _act_bwd(code, prm, W, zo, ao, D, go, T, nb, w):
    """T[:nb*w] = d loss / d z from the gradient of the activation output at D[go:]."""
    n_el = nb * w
    if code == 0:
        for e in range(n_el):
            T[e] = D[go + e]
    elif code == 1:
        for e in range(n_el):
            a = W[ao + e]
            T[e] = D[go + e] * a * (1 - a)
    elif code == 2:
        for e in range(n_el):
            a = W[ao + e]
            T[e] = D[go + e] * (1 - a * a)
    elif code == 3:
        for e in range(n_el):
            d = D[go + e]
            T[e] = d if W[zo + e] > 0 else d * 0
    elif code == 4:
        for e in range(n_el):
            d = D[go + e]
            T[e] = d if W[zo + e] > 0 else d * prm
    elif code == 5:
        for e in range(n_el):
            d = D[go + e]
            T[e] = d if W[zo + e] > 0 else d * (W[ao + e] + prm)
    else:
        for n in range(nb):
            r = n * w
            s = 0.0
            for j in range(w):
                s += D[go + r + j] * W[ao + r + j]
            for j in range(w):
                T[r + j] = W[ao + r + j] * (D[go + r + j] - s)


@njit(cache=True, error_model="numpy", fastmath={"reassoc"})
def _dot(A, ao, B, bo, n):
    """sum_j A[ao + j] * B[bo + j], vectorised (reassociation only: NaN and Inf propagate)."""
    s = A[ao] * B[bo]
    for j in range(1, n):
        s += A[ao + j] * B[bo + j]
    return s


@njit(cache=True, error_model="numpy")
def _forward(prog, fargs, margs, P, W, bmax, nb):
    for k in range(prog.shape[0]):
        op = prog[k, OP]
        ow = prog[k, OUT_W]
        ao = prog[k, OUT_D] * bmax
        if op == DENSE:
            iw = prog[k, IN_W]
            xo = prog[k, IN_D] * bmax
            zo = prog[k, Z_D] * bmax
            wo = prog[k, W_OFF]
            bo = prog[k, B_OFF]
            for n in range(nb):
                yo = zo + n * ow
                for j in range(ow):
                    W[yo + j] = 0
                for i in range(iw):
                    xi = W[xo + n * iw + i]
                    r = wo + i * ow
                    for j in range(ow):
                        W[yo + j] += xi * P[r + j]
                if bo >= 0:
                    for j in range(ow):
                        W[yo + j] += P[bo + j]
            _act_fwd(prog[k, ACT_CODE], fargs[k, 1], W, zo, ao, nb, ow)
        elif op == ACT:
            _act_fwd(prog[k, ACT_CODE], fargs[k, 1], W, prog[k, IN_D] * bmax, ao, nb, ow)
        elif op == MERGE:
            mode = prog[k, MODE]
            s0 = prog[k, M_START]
            cnt = prog[k, M_COUNT]
            n_el = nb * ow
            first = margs[s0, 0] * bmax
            for e in range(n_el):
                W[ao + e] = W[first + e]
            if mode == 1:  # subtract: x0 - (x1 + x2 + ...)
                r1 = margs[s0 + 1, 0] * bmax
                for e in range(n_el):
                    acc = W[r1 + e]
                    for q in range(s0 + 2, s0 + cnt):
                        acc = acc + W[margs[q, 0] * bmax + e]
                    W[ao + e] = W[first + e] - acc
            else:
                for q in range(s0 + 1, s0 + cnt):
                    ro = margs[q, 0] * bmax
                    if mode == 2:
                        for e in range(n_el):
                            W[ao + e] = W[ao + e] * W[ro + e]
                    else:
                        for e in range(n_el):
                            W[ao + e] = W[ao + e] + W[ro + e]
                if mode == 3:
                    for e in range(n_el):
                        W[ao + e] = W[ao + e] / cnt
        # SCALE: the forward value is aliased; only its gradient differs


@njit(cache=True, error_model="numpy")
def _backward(prog, fargs, margs, P, G, W, D, T, bmax, nb):
    for k in range(prog.shape[0] - 1, -1, -1):
        op = prog[k, OP]
        ow = prog[k, OUT_W]
        ao = prog[k, OUT_D] * bmax
        go = prog[k, OUT_G] * bmax
        ig = prog[k, IN_G]
        if op == DENSE:
            iw = prog[k, IN_W]
            xo = prog[k, IN_D] * bmax
            zo = prog[k, Z_D] * bmax
            wo = prog[k, W_OFF]
            bo = prog[k, B_OFF]
            gs = fargs[k, 0]
            _act_bwd(prog[k, ACT_CODE], fargs[k, 1], W, zo, ao, D, go, T, nb, ow)
            for n in range(nb):
                to = n * ow
                for i in range(iw):
                    xi = W[xo + n * iw + i]
                    r = wo + i * ow
                    if gs == 1.0:
                        for j in range(ow):
                            G[r + j] += xi * T[to + j]
                    else:
                        for j in range(ow):
                            G[r + j] += gs * (xi * T[to + j])
                if bo >= 0:
                    for j in range(ow):
                        G[bo + j] += T[to + j] if gs == 1.0 else gs * T[to + j]
            if ig >= 0:
                gi = ig * bmax
                for n in range(nb):
                    to = n * ow
                    for i in range(iw):
                        D[gi + n * iw + i] += _dot(T, to, P, wo + i * ow, ow)
        elif op == ACT:
            if ig >= 0:
                _act_bwd(
                    prog[k, ACT_CODE], fargs[k, 1], W, prog[k, IN_D] * bmax, ao, D, go, T, nb, ow
                )
                gi = ig * bmax
                for e in range(nb * ow):
                    D[gi + e] += T[e]
        elif op == SCALE:
            if ig >= 0:
                gi = ig * bmax
                s = fargs[k, 0]
                for e in range(nb * ow):
                    D[gi + e] += D[go + e] * s
        elif op == MERGE:
            mode = prog[k, MODE]
            s0 = prog[k, M_START]
            cnt = prog[k, M_COUNT]
            n_el = nb * ow
            for q in range(s0, s0 + cnt):
                tg = margs[q, 1]
                if tg < 0:
                    continue
                tg = tg * bmax
                if mode == 0:
                    for e in range(n_el):
                        D[tg + e] += D[go + e]
                elif mode == 1:
                    if q == s0:
                        for e in range(n_el):
                            D[tg + e] += D[go + e]
                    else:
                        for e in range(n_el):
                            D[tg + e] -= D[go + e]
                elif mode == 3:
                    for e in range(n_el):
                        D[tg + e] += D[go + e] / cnt
                else:  # multiply: g * the product of the other inputs
                    for e in range(n_el):
                        pr = D[go + e] * 0 + 1
                        for q2 in range(s0, s0 + cnt):
                            if q2 != q:
                                pr = pr * W[margs[q2, 0] * bmax + e]
                        D[tg + e] += D[go + e] * pr


@njit(cache=True, error_model="numpy")
def _loss(obj, W, oo, D, og, Y, rows, nb, K):
    """Batch-mean loss of the output at W[oo:]; writes its gradient to D[og:]."""
    total = 0.0
    for n in range(nb):
        yo = rows[n] * K
        r = n * K
        ln = 0.0
        if obj == 1:
            m = W[oo + r]
            for j in range(1, K):
                m = max(m, W[oo + r + j])
            s = 0.0
            for j in range(K):
                s += math.exp(W[oo + r + j] - m)
            lse = m + math.log(s)
            ysum = 0.0
            for j in range(K):
                ysum += Y[yo + j]
            for j in range(K):
                lsm = W[oo + r + j] - lse
                ln -= Y[yo + j] * lsm
                D[og + r + j] = (math.exp(lsm) * ysum - Y[yo + j]) / nb
        elif obj == 2:
            for j in range(K):
                z = W[oo + r + j]
                y = Y[yo + j]
                e = math.exp(-abs(z))
                ln += max(z, 0.0) - z * y + math.log1p(e)
                sg = 1.0 / (1.0 + e) if z >= 0 else e / (1.0 + e)
                D[og + r + j] = (sg - y) / (nb * K)
            ln /= K
        else:
            for j in range(K):
                d = W[oo + r + j] - Y[yo + j]
                if obj == 3:
                    ln += d * d
                    D[og + r + j] = d * (2.0 / (nb * K))
                elif obj == 4:
                    ln += abs(d)
                    D[og + r + j] = np.sign(d) / (nb * K)
                else:
                    ln += abs(d)
                    D[og + r + j] = np.sign(d) / nb
            if obj != 5:
                ln /= K
        total += ln
    return total / nb


@njit(cache=True, error_model="numpy")
def _flush(x, tiny):
    """0 for a subnormal x: a decayed optimizer buffer that small moves no parameter, and
    subnormal arithmetic costs ~100x (dead units' buffers decay into that range)."""
    return x if abs(x) >= tiny else x * 0


@njit(cache=True, error_model="numpy")
def _opt_step(code, hp, P, G, S1, S2, S3, t, have, cs):
    """One optimizer update of the flat parameters from the flat gradients (torch formulas).

    Scalars are rounded to the parameters' dtype first (`cs`), as numpy does with Python
    floats; decaying state buffers flush subnormals to 0 (`_flush`; cs[13] = smallest normal).
    """
    n = P.shape[0]
    cs[0] = hp[0]  # lr
    cs[1] = hp[1]  # weight decay
    lr = cs[0]
    wd = cs[1]
    tiny = cs[13]
    use_wd = hp[1] != 0
    if code == SGD:
        for i in range(n):
            g = G[i] + wd * P[i] if use_wd else G[i]
            P[i] -= lr * g
    elif code == SGDM:
        cs[2] = hp[2]
        cs[3] = 1 - hp[3]
        mom = cs[2]
        damp1 = cs[3]
        nesterov = hp[4] != 0
        for i in range(n):
            g = G[i] + wd * P[i] if use_wd else G[i]
            if hp[2] != 0:
                b = _flush(S1[i] * mom + damp1 * g, tiny) if have else g
                S1[i] = b
                g = g + mom * b if nesterov else b
            P[i] -= lr * g
    elif code == ADAM:
        b1 = hp[2]
        b2 = hp[3]
        cs[2] = 1 - b1
        cs[3] = b2
        cs[4] = 1 - b2
        cs[5] = math.sqrt(1 - b2**t)
        cs[6] = hp[4]  # eps
        cs[7] = -hp[0] / (1 - b1**t)
        cs[8] = 1 - hp[0] * hp[1]
        one_b1, c_b2, one_b2, bc2, eps, step, decay = (
            cs[2],
            cs[3],
            cs[4],
            cs[5],
            cs[6],
            cs[7],
            cs[8],
        )
        decoupled = hp[5] != 0
        l2 = use_wd and not decoupled
        if use_wd and decoupled:
            for i in range(n):
                P[i] = P[i] * decay
        if hp[6] != 0:  # amsgrad
            for i in range(n):
                g = G[i] + wd * P[i] if l2 else G[i]
                m = _flush(S1[i] + one_b1 * (g - S1[i]), tiny)
                v = _flush(S2[i] * c_b2 + one_b2 * g * g, tiny)
                S1[i] = m
                S2[i] = v
                v = max(S3[i], v)
                S3[i] = v
                P[i] += step * (m / (np.sqrt(v) / bc2 + eps))
        else:
            for i in range(n):
                g = G[i] + wd * P[i] if l2 else G[i]
                m = _flush(S1[i] + one_b1 * (g - S1[i]), tiny)
                v = _flush(S2[i] * c_b2 + one_b2 * g * g, tiny)
                S1[i] = m
                S2[i] = v
                P[i] += step * (m / (np.sqrt(v) / bc2 + eps))
    else:  # RMSPROP
        cs[2] = hp[2]
        cs[3] = 1 - hp[2]
        cs[4] = hp[3]  # eps
        cs[5] = hp[4]  # momentum
        cs[6] = -hp[0]
        a, one_a, eps, mom, neg_lr = cs[2], cs[3], cs[4], cs[5], cs[6]
        centered = hp[5] != 0
        use_mom = hp[4] > 0
        for i in range(n):
            g = G[i] + wd * P[i] if use_wd else G[i]
            sq = _flush(S1[i] * a + one_a * g * g, tiny)
            S1[i] = sq
            if centered:
                ga = _flush(S3[i] + one_a * (g - S3[i]), tiny)
                S3[i] = ga
                avg = np.sqrt(max(sq - ga * ga, 0)) + eps
            else:
                avg = np.sqrt(sq) + eps
            if use_mom:
                b = _flush(S2[i] * mom + g / avg, tiny)
                S2[i] = b
                P[i] -= lr * b
            else:
                P[i] += neg_lr * (g / avg)


@njit(cache=True, error_model="numpy")
def _argmax(A, o, K):
    best = 0
    for j in range(1, K):
        if A[o + j] > A[o + best]:
            best = j
    return best


@njit(cache=True, error_model="numpy")
def train_epoch(
    prog,
    fargs,
    margs,
    io,
    P,
    G,
    S1,
    S2,
    S3,
    X,
    Y,
    order,
    bs,
    bmax,
    W,
    D,
    T,
    clip,
    opt_code,
    hp,
    t0,
    have,
    cs,
    losses,
):
    """Every minibatch of one epoch; returns (status, batch index, hits, steps taken).

    io = [input width, output data slot, output grad slot, output width, objective code,
    classification]; clip = [clip_value, clip_norm] (NaN: off). Stops before the optimizer
    step of a batch whose loss (status 1) or gradient (status 2) is not finite.
    """
    in_w, oo, og, K, obj, classify = io[0], io[1] * bmax, io[2] * bmax, io[3], io[4], io[5]
    n = order.shape[0]
    n_batches = (n + bs - 1) // bs
    hits = 0
    t = t0
    rows = np.empty(bmax, np.int64)
    for b in range(n_batches):
        start = b * bs
        nb = min(bs, n - start)
        for r in range(nb):
            rows[r] = order[start + r]
            src = rows[r] * in_w
            dst = r * in_w
            for i in range(in_w):
                W[dst + i] = X[src + i]
        _forward(prog, fargs, margs, P, W, bmax, nb)
        D[:] = 0
        cs[14] = _loss(obj, W, oo, D, og, Y, rows, nb, K)  # rounded to the dtype, like numpy
        loss = float(cs[14])
        losses[b] = loss
        if not math.isfinite(loss):
            return BAD_LOSS, b, hits, b
        if not math.isnan(clip[0]):
            for e in range(nb * K):
                D[og + e] = min(max(D[og + e], -clip[0]), clip[0])
        G[:] = 0
        _backward(prog, fargs, margs, P, G, W, D, T, bmax, nb)
        for i in range(G.shape[0]):
            if not math.isfinite(G[i]):
                return BAD_GRAD, b, hits, b
        if not math.isnan(clip[1]):
            sq = 0.0
            for i in range(G.shape[0]):
                sq += float(G[i]) * float(G[i])
            total = math.sqrt(sq)
            coef = clip[1] / (total + 1e-6)
            if math.isfinite(total) and coef < 1:
                cs[15] = coef
                for i in range(G.shape[0]):
                    G[i] *= cs[15]
        t += 1
        _opt_step(opt_code, hp, P, G, S1, S2, S3, t, have, cs)
        have = True
        if classify:
            for r in range(nb):
                if _argmax(W, oo + r * K, K) == _argmax(Y, rows[r] * K, K):
                    hits += 1
    return OK, n_batches, hits, n_batches


@njit(cache=True, error_model="numpy")
def forward_rows(prog, fargs, margs, io, P, X, out, bmax, W):
    """Inference over every row of X (flat, rows of io[0]) in chunks of bmax; fills out."""
    in_w, oo, K = io[0], io[1] * bmax, io[3]
    n = X.shape[0] // in_w
    for start in range(0, n, bmax):
        nb = min(bmax, n - start)
        for e in range(nb * in_w):
            W[e] = X[start * in_w + e]
        _forward(prog, fargs, margs, P, W, bmax, nb)
        for e in range(nb * K):
            out[start * K + e] = W[oo + e]
