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
(OP, OUT_D, OUT_G, OUT_W, IN_D, IN_G, IN_W, W_OFF, B_OFF, ACT_CODE, Z_D, MODE, M_START, M_COUNT,
 TW_OFF, A_D) = range(16)  # fmt: skip
N_COLS = 16
# TW_OFF: NormNet dense (x @ tan(W)) / n_in: offset of tan(W) and of (1 + tan^2) / n_in in the
# kernels' TW buffer (-1: plain dense); A_D: slot of the activation before the output scale
# (fargs[k, 2]; A_D == OUT_D when there is none)
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


# The helpers take array views (not offsets) so every index is a provably non-negative loop
# counter: numba then drops its negative-index wraparound and LLVM vectorises the loops.


@njit(cache=True, error_model="numpy")
def _act_fwd(code, prm, z, a, nb, w, same):
    """a = act(z) over nb rows of w values; `same`: z and a are one buffer (linear)."""
    n_el = nb * w
    if code == 0:
        if not same:
            for e in range(n_el):
                a[e] = z[e]
    elif code == 1:
        for e in range(n_el):
            v = z[e]
            if v >= 0:
                a[e] = 1.0 / (1.0 + math.exp(-v))
            else:
                ev = math.exp(v)
                a[e] = ev / (1.0 + ev)
    elif code == 2:
        for e in range(n_el):
            a[e] = np.tanh(z[e])
    elif code == 3:
        for e in range(n_el):
            v = z[e]
            a[e] = v if v > 0 else v - v  # 0 in the dtype; NaN and -inf give NaN like z * (z > 0)
    elif code == 4:
        for e in range(n_el):
            v = z[e]
            a[e] = v if v > 0 else v * prm
    elif code == 5:
        for e in range(n_el):
            v = z[e]
            a[e] = v if v > 0 else prm * math.expm1(min(v, 0.0))
    else:  # softmax over each row
        for n in range(nb):
            r = n * w
            m = z[r]
            for j in range(1, w):
                m = max(m, z[r + j])
            s = 0.0
            for j in range(w):
                ev = math.exp(z[r + j] - m)
                a[r + j] = ev
                s += ev
            for j in range(w):
                a[r + j] = a[r + j] / s


@njit(cache=True, error_model="numpy")
def _act_bwd(code, prm, z, a, d, t, nb, w):
    """t = d loss / d z from d = d loss / d a (nb rows of w values)."""
    n_el = nb * w
    if code == 0:
        for e in range(n_el):
            t[e] = d[e]
    elif code == 1:
        for e in range(n_el):
            t[e] = d[e] * a[e] * (1 - a[e])
    elif code == 2:
        for e in range(n_el):
            t[e] = d[e] * (1 - a[e] * a[e])
    elif code == 3:
        for e in range(n_el):
            t[e] = d[e] if z[e] > 0 else d[e] - d[e]
    elif code == 4:
        for e in range(n_el):
            t[e] = d[e] if z[e] > 0 else d[e] * prm
    elif code == 5:
        for e in range(n_el):
            t[e] = d[e] if z[e] > 0 else d[e] * (a[e] + prm)
    else:
        for n in range(nb):
            r = n * w
            s = 0.0
            for j in range(w):
                s += d[r + j] * a[r + j]
            for j in range(w):
                t[r + j] = a[r + j] * (d[r + j] - s)


@njit(cache=True, error_model="numpy", fastmath={"reassoc"})
def _dot(x, y):
    """sum_j x[j] * y[j], vectorised (reassociation only: NaN and Inf still propagate)."""
    s = x[0] * y[0]
    for j in range(1, x.shape[0]):
        s += x[j] * y[j]
    return s


@njit(cache=True, error_model="numpy", inline="always")
def _axpy(y, a, x):
    """y += a * x."""
    for j in range(y.shape[0]):
        y[j] += a * x[j]


@njit(cache=True, error_model="numpy", inline="always")
def _add(y, x):
    """y += x."""
    for j in range(y.shape[0]):
        y[j] += x[j]


@njit(cache=True, error_model="numpy")
def _forward(prog, fargs, margs, P, W, TW, cs, bmax, nb):
    for k in range(prog.shape[0]):
        op = prog[k, OP]
        ow = prog[k, OUT_W]
        ao = prog[k, OUT_D] * bmax
        if op == DENSE:
            iw = prog[k, IN_W]
            xo = prog[k, IN_D] * bmax
            zo = prog[k, Z_D] * bmax
            ad = prog[k, A_D] * bmax
            wo = prog[k, W_OFF]
            bo = prog[k, B_OFF]
            to = prog[k, TW_OFF]
            m = iw * ow
            if to >= 0:  # NormNet: the weights are tan(W), the sum is divided by n_in
                wts = TW[to : to + m]
                fac = TW[to + m : to + 2 * m]
                for e in range(m):
                    v = math.tan(P[wo + e])
                    wts[e] = v
                    fac[e] = (1 + v * v) / iw
            else:
                wts = P[wo : wo + m]
            for n in range(nb):
                y = W[zo + n * ow : zo + (n + 1) * ow]
                x = W[xo + n * iw : xo + (n + 1) * iw]
                y[:] = 0
                for i in range(iw):
                    _axpy(y, x[i], wts[i * ow : (i + 1) * ow])
                if to >= 0:
                    for j in range(ow):
                        y[j] = y[j] / iw
                if bo >= 0:
                    _add(y, P[bo : bo + ow])
            n_el = nb * ow
            _act_fwd(
                prog[k, ACT_CODE],
                fargs[k, 1],
                W[zo : zo + n_el],
                W[ad : ad + n_el],
                nb,
                ow,
                zo == ad,
            )
            if ad != ao:
                cs[11] = fargs[k, 2]  # the output scale in the dtype
                for e in range(n_el):
                    W[ao + e] = W[ad + e] * cs[11]
        elif op == ACT:
            xo = prog[k, IN_D] * bmax
            n_el = nb * ow
            _act_fwd(
                prog[k, ACT_CODE],
                fargs[k, 1],
                W[xo : xo + n_el],
                W[ao : ao + n_el],
                nb,
                ow,
                False,
            )
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
def _backward(prog, fargs, margs, P, G, W, D, T, TW, bmax, nb, cs):
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
            n_el = nb * ow
            ad = prog[k, A_D] * bmax
            to = prog[k, TW_OFF]
            m = iw * ow
            d = D[go : go + n_el]
            if ad != ao:  # the gradient w.r.t. the activation before the output scale
                cs[11] = fargs[k, 2]
                for e in range(n_el):
                    T[e] = d[e] * cs[11]
                d = T[:n_el]  # _act_bwd reads then writes each element: in place is safe
            _act_bwd(
                prog[k, ACT_CODE],
                fargs[k, 1],
                W[zo : zo + n_el],
                W[ad : ad + n_el],
                d,
                T,
                nb,
                ow,
            )
            cs[12] = gs  # the gradient scale in the dtype
            gsd = cs[12]
            wts = TW[to : to + m] if to >= 0 else P[wo : wo + m]
            for n in range(nb):
                t = T[n * ow : (n + 1) * ow]
                x = W[xo + n * iw : xo + (n + 1) * iw]
                for i in range(iw):
                    a = x[i] if gs == 1.0 else gsd * x[i]
                    g = G[wo + i * ow : wo + (i + 1) * ow]
                    if to >= 0:  # d tan(w) / dw / n_in
                        f = TW[to + m + i * ow : to + m + (i + 1) * ow]
                        for j in range(ow):
                            g[j] += a * t[j] * f[j]
                    else:
                        _axpy(g, a, t)
                if bo >= 0:
                    if gs == 1.0:
                        _add(G[bo : bo + ow], t)
                    else:
                        _axpy(G[bo : bo + ow], gsd, t)
            if ig >= 0:
                gi = ig * bmax
                for n in range(nb):
                    t = T[n * ow : (n + 1) * ow]
                    dx = D[gi + n * iw : gi + (n + 1) * iw]
                    for i in range(iw):
                        s_ = _dot(t, wts[i * ow : (i + 1) * ow])
                        dx[i] += s_ / iw if to >= 0 else s_
        elif op == ACT:
            if ig >= 0:
                xo = prog[k, IN_D] * bmax
                n_el = nb * ow
                _act_bwd(
                    prog[k, ACT_CODE],
                    fargs[k, 1],
                    W[xo : xo + n_el],
                    W[ao : ao + n_el],
                    D[go : go + n_el],
                    T,
                    nb,
                    ow,
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
                        pr = 1.0
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


@njit(cache=True, error_model="numpy", inline="always")
def _flush(x, tiny):
    """0 for a subnormal x: a decayed optimizer buffer that small moves no parameter, and
    subnormal arithmetic costs ~100x (dead units' buffers decay into that range)."""
    return x if not abs(x) < tiny else tiny - tiny  # NaN is kept


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
    TW,
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
        _forward(prog, fargs, margs, P, W, TW, cs, bmax, nb)
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
        _backward(prog, fargs, margs, P, G, W, D, T, TW, bmax, nb, cs)
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
def forward_rows(prog, fargs, margs, io, P, X, out, bmax, W, TW, cs):
    """Inference over every row of X (flat, rows of io[0]) in chunks of bmax; fills out."""
    in_w, oo, K = io[0], io[1] * bmax, io[3]
    n = X.shape[0] // in_w
    for start in range(0, n, bmax):
        nb = min(bmax, n - start)
        for e in range(nb * in_w):
            W[e] = X[start * in_w + e]
        _forward(prog, fargs, margs, P, W, TW, cs, bmax, nb)
        for e in range(nb * K):
            out[start * K + e] = W[oo + e]
