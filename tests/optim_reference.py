"""PyTorch's optimizers as its documentation states them, written out in numpy (float64): the
references of tests/test_optim.py and tests/test_regularisation.py.

A plain module, not a test file: the test modules import it as ``from optim_reference import ...``
(pytest puts this directory on sys.path, as it has no __init__.py).

For each parameter p with gradient g, one update is, in order:

1. clipping: ``g *= min(1, clip_grad_norm / (N + 1e-6))`` with N the L2 norm of all gradients
   together (``torch.nn.utils.clip_grad_norm_``), then ``g = clip(g, -v, v)``
   (``clip_grad_value_``);
2. penalties from p before the update: ``g += weight_decay * p`` (coupled) or
   ``p *= 1 - lr * weight_decay`` (decoupled: AdamW, ``decoupled_weight_decay``), and
   ``g += l1 * sign(p)``;
3. the optimizer's rule (the algorithm boxes of torch.optim's documentation);
4. max-norm: rows (dim 0) of weights with two or more dimensions, not biases, whose L2 norm
   exceeds max_norm are rescaled to max_norm.
"""

import numpy as np

GROUP_KEYS = ("lr", "weight_decay", "l1", "max_norm")

DEFAULTS = {
    "sgd": dict(momentum=0.0, dampening=0.0, nesterov=False, decoupled_weight_decay=False),
    "adagrad": dict(lr_decay=0.0, initial_accumulator_value=0.0, eps=1e-10),
    "rmsprop": dict(alpha=0.99, eps=1e-8, momentum=0.0, centered=False),
    "adam": dict(betas=(0.9, 0.999), eps=1e-8, amsgrad=False, decoupled_weight_decay=False),
    "adamw": dict(betas=(0.9, 0.999), eps=1e-8, amsgrad=False),
}


class Reference:
    """One optimizer over a list of arrays.

    ``groups``: None (one group of all parameters, with lr, weight_decay, l1 and max_norm as
    given), or a list of dicts, each with ``"members"`` (indices into params) and any of the group
    keys (the others as given). ``rows``: per parameter, whether max-norm applies to it.
    Assigning ``lr``, ``weight_decay``, ``l1`` or ``max_norm`` sets every group; the other
    hyper-parameters are attributes.
    """

    def __init__(self, kind, params, lr, weight_decay=0.0, l1=0.0, max_norm=None, groups=None,
                 rows=None, clip_grad_norm=None, clip_grad_value=None, **hyper):
        unknown = set(hyper) - set(DEFAULTS[kind])
        assert not unknown, f"{kind} takes no {unknown}"
        object.__setattr__(self, "groups", [])
        self.kind = kind
        self.params = [np.array(p, dtype=np.float64) for p in params]
        defaults = dict(lr=lr, weight_decay=weight_decay, l1=l1, max_norm=max_norm)
        specs = groups if groups is not None else [{"members": list(range(len(self.params)))}]
        self.group_of = [None] * len(self.params)
        for g, spec in enumerate(specs):
            self.groups.append({key: spec.get(key, defaults[key]) for key in GROUP_KEYS})
            for i in spec["members"]:
                assert self.group_of[i] is None
                self.group_of[i] = g
        assert None not in self.group_of
        self.rows = rows if rows is not None else [p.ndim >= 2 for p in self.params]
        self.clip_grad_norm, self.clip_grad_value = clip_grad_norm, clip_grad_value
        for key, value in {**DEFAULTS[kind], **hyper}.items():
            setattr(self, key, value)
        self.t = 0
        self.last_grad_norm = None
        self.state = [{} for _ in self.params]
        if kind == "adagrad":
            for i, p in enumerate(self.params):
                self.state[i]["sum"] = np.full_like(p, self.initial_accumulator_value)

    def __setattr__(self, name, value):
        if name in GROUP_KEYS:
            for group in self.groups:
                group[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        if name in GROUP_KEYS and self.__dict__.get("groups"):
            return self.groups[0][name]
        raise AttributeError(name)

    def clipped(self, grads):
        grads = [np.array(g, dtype=np.float64) for g in grads]
        if self.clip_grad_norm is not None:
            norm = float(np.sqrt(sum(np.sum(g * g) for g in grads)))
            self.last_grad_norm = norm
            factor = min(1.0, self.clip_grad_norm / (norm + 1e-6))
            grads = [g * factor for g in grads]
        if self.clip_grad_value is not None:
            grads = [np.clip(g, -self.clip_grad_value, self.clip_grad_value) for g in grads]
        return grads

    def step(self, grads):
        self.t += 1
        t = self.t
        for i, g in enumerate(self.clipped(grads)):
            group = self.groups[self.group_of[i]]
            lr, wd = group["lr"], group["weight_decay"]
            p = self.params[i]
            state = self.state[i]
            decoupled = self.kind == "adamw" or getattr(self, "decoupled_weight_decay", False)
            if decoupled:
                q = p * (1 - lr * wd)
            else:
                q = p
                g = g + wd * p
            if group["l1"]:
                g = g + group["l1"] * np.sign(p)
            if self.kind == "sgd":
                if self.momentum != 0:
                    if "buf" not in state:
                        state["buf"] = g.copy()
                    else:
                        state["buf"] = self.momentum * state["buf"] + (1 - self.dampening) * g
                    g = g + self.momentum * state["buf"] if self.nesterov else state["buf"]
                q = q - lr * g
            elif self.kind == "adagrad":
                clr = lr / (1 + (t - 1) * self.lr_decay)
                state["sum"] = state["sum"] + g * g
                q = q - clr * g / (np.sqrt(state["sum"]) + self.eps)
            elif self.kind == "rmsprop":
                state["v"] = (self.alpha * state.get("v", np.zeros_like(p))
                              + (1 - self.alpha) * g * g)
                v = state["v"]
                if self.centered:
                    state["g_ave"] = (self.alpha * state.get("g_ave", np.zeros_like(p))
                                      + (1 - self.alpha) * g)
                    v = v - state["g_ave"] ** 2
                if self.momentum > 0:
                    state["b"] = (self.momentum * state.get("b", np.zeros_like(p))
                                  + g / (np.sqrt(v) + self.eps))
                    q = q - lr * state["b"]
                else:
                    q = q - lr * g / (np.sqrt(v) + self.eps)
            else:  # adam, adamw
                beta1, beta2 = self.betas
                state["m"] = beta1 * state.get("m", np.zeros_like(p)) + (1 - beta1) * g
                state["v"] = beta2 * state.get("v", np.zeros_like(p)) + (1 - beta2) * g * g
                v = state["v"]
                if self.amsgrad:
                    state["v_max"] = np.maximum(state.get("v_max", np.zeros_like(p)), v)
                    v = state["v_max"]
                m_hat = state["m"] / (1 - beta1 ** t)
                v_hat = v / (1 - beta2 ** t)
                q = q - lr * m_hat / (np.sqrt(v_hat) + self.eps)
            if group["max_norm"] and self.rows[i]:
                q = renorm_rows(q, group["max_norm"])
            self.params[i] = q


def renorm_rows(w, max_norm):
    """w with each row (index along dim 0) of L2 norm above max_norm rescaled to max_norm."""
    flat = w.reshape(w.shape[0], -1)
    norms = np.sqrt(np.sum(flat * flat, axis=1))
    factor = np.where(norms > max_norm, max_norm / np.where(norms > 0, norms, 1), 1.0)
    return (flat * factor[:, None]).reshape(w.shape)


def synthetic_grads(shapes, steps, seed):
    """A fixed sequence of gradients for parameters of these shapes: varied magnitudes, with
    zeros every third step."""
    rng = np.random.default_rng(seed)
    sequence = []
    for t in range(steps):
        grads = []
        for shape in shapes:
            g = rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 2)
            if t % 3 == 0:
                g.reshape(-1)[::5] = 0.0
            grads.append(g)
        sequence.append(grads)
    return sequence


# ------------------------------------------------------------------------------ fastnet models
# Helpers over a fastnet model's parameters (anything with .parameters() giving .data, .grad,
# .shape and .name), shared by the optimizer tests.


def model_grads(model, steps, seed):
    """synthetic_grads for the parameters of `model`."""
    return synthetic_grads([p.shape for p in model.parameters()], steps, seed)


def apply_grads(model, grads):
    """Writes one step's gradients into the model's parameters."""
    for p, g in zip(model.parameters(), grads):
        p.grad[...] = g


def assert_params_close(model, expected, rtol=1e-12, atol=1e-14, what=""):
    for p, e in zip(model.parameters(), expected):
        np.testing.assert_allclose(p.data, e, rtol=rtol, atol=atol, err_msg=f"{what} {p.name}")
