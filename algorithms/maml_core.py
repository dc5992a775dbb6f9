"""The MAML core: the meta-gradient of second-order or first-order MAML over a meta-batch.

Finn, Abbeel & Levine (2017), ICML, Algorithm 2. For each task i of a meta-batch of T tasks,
adapt theta on the support set with ``steps`` gradient steps (Eq. 1),

    theta'_i = theta - alpha * grad L_support_i(theta),

and return the meta-gradient of the mean query loss ``(1/T) sum_i L_query_i(theta'_i)`` with
respect to theta (Eq. 2). Second order differentiates through the inner loop (Hessian-vector
products); first order (Sec. 5.2) treats the inner gradients as constants.

Everything is a pure function of a parameter dict; one code, five **strategies** that compute the
same numbers (checked against each other and against finite differences in the tests), chosen with
:class:`CoreOptions`:

``per_task``
    A loop over tasks; each task's graph is freed after its gradient, so peak memory is one task.
``chunked``
    The inner loop of ``chunk`` tasks at once, with stacked parameters ``[chunk, ...]`` through
    the backbone's task-batched forward (grouped convolutions for Conv4), so that the small
    support batches become one larger one; then the query pass one task at a time with respect
    to detached adapted parameters, and the query gradients pushed back through the chunk's
    inner loop in one backward pass (the chain rule, split at theta'). Peak memory is one
    chunk's second-order support graph plus one task's query graph.
``batched``
    ``chunked`` with the whole meta-batch as one chunk: the fewest, largest kernels; keeps every
    task's support graph.
``recompute``
    Chunks of tasks with memory bounded whatever the number of inner steps: the chunk's inner
    loop without a second-order graph (keeping each step's input theta_k), the query gradients
    ``dL/dtheta'`` one task at a time, then the inner steps in reverse, each rebuilt with its
    second-order graph and backpropagated alone. Peak memory is the larger of one query graph and
    one chunk's graph of a single inner step.
``vmap``
    Like ``batched`` but the inner loop is ``torch.func.vmap(torch.func.grad(...))`` over the
    single-task forward, for backbones without a task-batched forward.

**Layouts.** Image backbones run on ``contiguous`` or ``channels_last`` images
(:func:`~metabench.algorithms.backbones.channels_last`; every Conv4 operation keeps the layout it
is given). The same function either way; float32 results differ by rounding only.

Batch-norm and max-pool forms: the support pass is differentiated twice (second order), and the
fused ``F.batch_norm`` kernel's double backward is a slow composite, so the second-order support
pass uses :func:`~metabench.algorithms.batch_norm.batch_norm_twice` (fused kernels with a
hand-derived second derivative; faster than batch norm in tensor operations, with fewer bytes
kept per task and inner step: docs/timing.md) and :func:`~metabench.algorithms.max_pool.max_pool_2x2` (keeps the argmax, not the
batch-norm output); the query pass and first-order inner loops are differentiated once, so they
use :func:`~metabench.algorithms.norm_pool.batch_norm_max_pool` (batch norm and max-pool with one
fused backward pass that never builds the full-size pooling gradient).
``vmap`` uses batch norm in tensor operations: under ``vmap``, ``nn.BatchNorm2d`` silently gives
wrong second-order meta-gradients on torch 2.13 (the tests catch the difference).

The defaults were chosen by measurement: :func:`choose_strategy`, :func:`choose_layout`, and the
measurements in docs/timing.md and the committed timing runs.

**Inner learning rates** (:data:`InnerLR`) are one alpha for every parameter or one per parameter
name; a rate of 0 leaves its parameter to the outer loop alone (MAML's ``inner_norm=false``, as
batch norm in Finn et al.'s released code). Every strategy gives the same numbers either way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch.nn import functional as F

from .backbones import (
    LAYOUTS,
    NETWORKS,
    channels_last,
    conv4_forward,
    conv4_tasks_forward,
    default_layout,
    mlp_forward,
    mlp_tasks_forward,
)
from .transductive import forward_in_groups

Params = dict[str, torch.Tensor]
#: alpha: one inner learning rate for every parameter, or one per parameter name (every name of
#: the parameter dict). A parameter whose rate is 0 is left as it is by the inner loop and only
#: meta-learned by the outer loop, as the batch-norm shifts of Finn et al.'s released code are
#: (they are not in its ``weights`` dict, which the inner loop adapts).
InnerLR = float | Mapping[str, float]
STRATEGIES = ("per_task", "chunked", "batched", "recompute", "vmap")


def mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared error of ``outputs`` ``[M, 1]`` against ``targets`` ``[M, 1]`` (squared units)."""
    return F.mse_loss(outputs, targets)


@dataclass(frozen=True)
class Backbone:
    """A network as pure functions, for the core.

    Attributes:
        name: for messages.
        forward: ``forward(params, x, norm) -> outputs`` for one task; ``norm`` is ``"native"``
            (differentiable once), ``"twice"`` (twice differentiable) or ``"tensor_ops"``
            (safe under ``vmap``); ignored by networks without batch norm.
        tasks_forward: ``tasks_forward(stacked_params, xs, norm) -> outputs`` for T tasks at
            once (``[T, M, ...]``), with the same ``norm`` forms; ``None`` if the backbone has
            none.
        loss: ``loss(outputs, targets) -> scalar`` mean over the task's examples.
        images: inputs are images ``[..., C, H, W]`` that may be laid out channels-last.
    """

    name: str
    forward: Callable[..., torch.Tensor]
    tasks_forward: Callable[[Params, torch.Tensor], torch.Tensor] | None
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    images: bool = False


CONV4 = Backbone("conv4", conv4_forward, conv4_tasks_forward, F.cross_entropy, images=True)
MLP_REGRESSION = Backbone("mlp", mlp_forward, mlp_tasks_forward, mse)


def conv4_backbone(network: str = "conv4") -> Backbone:
    """The Conv4 ``network`` (one of :data:`~metabench.algorithms.backbones.NETWORKS`) as a
    :class:`Backbone`: :data:`CONV4` for ``conv4``, else its forwards with the network fixed.

    Raises:
        ValueError: for an unknown network (the learners check the name first, with
            :func:`~metabench.algorithms.backbones.check_network`, which names the fix).
    """
    if network not in NETWORKS:
        raise ValueError(f"unknown network {network!r}: use one of {', '.join(NETWORKS)}")
    if network == "conv4":
        return CONV4
    return Backbone(network, partial(conv4_forward, network=network), partial(conv4_tasks_forward, network=network),
                    F.cross_entropy, images=True)


@dataclass
class MetaGradient:
    """The result of :func:`meta_gradient`.

    Attributes:
        grads: name -> d/dtheta of the mean query loss over the meta-batch (shapes of ``params``).
        losses: the T query losses after adaptation, detached ``[T]``.
        outputs: the T query outputs (logits ``[N*Q, N]`` or predictions), detached.
    """

    grads: Params
    losses: torch.Tensor
    outputs: list[torch.Tensor]


@dataclass(frozen=True)
class CoreOptions:
    """How :func:`meta_gradient` computes the meta-gradient (Finn et al. 2017, Alg. 2).

    Attributes:
        steps: inner gradient steps (>= 0).
        inner_lr: alpha, the inner learning rate (>= 0), one for all parameters or one per
            parameter name (:data:`InnerLR`).
        first_order: drop the second derivatives (first-order MAML, Sec. 5.2).
        strategy: one of :data:`STRATEGIES` (see the module docstring); all give the same
            meta-gradient up to floating-point rounding.
        query_forward: ``f(params, x) -> outputs`` for the query pass, differentiated once;
            ``None``: the backbone's forward with the fused batch norm. Pass a
            ``torch.compile``-d one (:func:`compiled_query_forward`) to fuse it.
        chunk: tasks per chunk of the ``chunked`` and ``recompute`` strategies (``None``:
            :func:`default_chunk`); ignored by the others.
        layout: one of :data:`LAYOUTS`: the images are copied channels-last first for
            ``channels_last`` (image backbones only).
    """

    steps: int
    inner_lr: InnerLR
    first_order: bool = False
    strategy: str = "per_task"
    query_forward: Callable[[Params, torch.Tensor], torch.Tensor] | None = None
    chunk: int | None = None
    layout: str = "contiguous"


#: Images (support and query) one chunk of tasks should hold on CPU for the ``auto`` strategy:
#: about one 5-way 1-shot task with 15 queries per class, the batch at which ``per_task`` was
#: fastest (see :func:`choose_strategy`).
CPU_CHUNK_IMAGES = 80


def cpu_chunk(images_per_task: int) -> int:
    """Tasks per chunk on CPU: as many as hold about :data:`CPU_CHUNK_IMAGES` images, at least 1."""
    return max(1, CPU_CHUNK_IMAGES // max(1, images_per_task))


def choose_strategy(backbone: Backbone, device: torch.device, images_per_task: int | None = None) -> str:
    """The default strategy for tasks of ``images_per_task`` support and query images (``None``:
    the timing benchmark's 5-way 1-shot tasks with 15 queries per class).

    On CUDA: ``recompute`` where the backbone has a task-batched forward, else ``vmap`` (not
    measured yet: no GPU was available). On CPU: ``chunked`` with :func:`cpu_chunk` tasks per
    chunk when at least two tasks fit in a chunk and the backbone takes images and has a
    task-batched forward, else ``per_task`` (the MLP's regression tasks were not measured).

    Why, from measurements on 2 CPU cores (docs/timing.md, "Choosing the strategy"): with about
    80 images per task (15 queries per class) ``per_task`` has the lowest peak memory and was as
    fast as the chunked strategies; with MAML's few training images per task (1 query per class)
    small batches leave the kernels' per-call cost unpaid, and chunks of about 80 images were the
    fastest.
    """
    if device.type != "cpu":
        return "recompute" if backbone.tasks_forward is not None else "vmap"
    if backbone.images and backbone.tasks_forward is not None and images_per_task is not None and cpu_chunk(images_per_task) >= 2:
        return "chunked"
    return "per_task"


def choose_layout(backbone: Backbone, device: torch.device) -> str:
    """The default layout of the core's images: :func:`~metabench.algorithms.backbones.default_layout`
    for the backbone's inputs (channels-last for images on CPU, faster on 2 cores at 1 and 5
    inner steps: docs/timing.md)."""
    return default_layout(backbone.images, device)


def _grad(loss: torch.Tensor, inputs: list[torch.Tensor], create_graph: bool) -> tuple[torch.Tensor, ...]:
    # allow_unused + materialize_grads: parameters that do not affect the loss get zeros.
    return torch.autograd.grad(loss, inputs, create_graph=create_graph, allow_unused=True, materialize_grads=True)


def _rate(inner_lr: InnerLR, name: str) -> float:
    return inner_lr[name] if isinstance(inner_lr, Mapping) else inner_lr


def adapted_names(params: Params, inner_lr: InnerLR) -> list[str]:
    """The names of ``params`` the inner loop steps: those whose rate in ``inner_lr`` is not 0.

    The autograd strategies take only their inner gradients: an autograd gradient with respect to
    a parameter left as it is would be the total derivative through the earlier steps (and a
    third derivative of the second-order batch norm), not the partial one of Finn et al. (2017),
    Eq. 1. (``vmap`` differentiates the single-task loss as a function of all parameters, which
    gives the partial derivatives; it steps only these names.)

    Args:
        params: name -> tensor. inner_lr: :data:`InnerLR`.

    Returns:
        The names, in the order of ``params``; empty when every rate is 0.

    Raises:
        KeyError: if a per-parameter ``inner_lr`` lacks a name of ``params``.
    """
    return [n for n in params if _rate(inner_lr, n) != 0]


def inner_step(params: Params, grads: Mapping[str, torch.Tensor], inner_lr: InnerLR, detach: bool = False) -> Params:
    """One inner gradient step, ``theta - alpha * g`` per parameter (Finn et al. 2017, Eq. 1).

    Args:
        params: name -> tensor (any shape; ``[T, *shape]`` for stacked tasks).
        grads: name -> gradient of the same shape, for the :func:`adapted_names` of ``params``.
        inner_lr: alpha (:data:`InnerLR`); a parameter whose rate is 0 is passed on unchanged
            (the same tensor, no graph node).
        detach: treat the gradients as constants (first order).

    Returns:
        The stepped parameters (a new dict).

    Raises:
        KeyError: if a per-parameter ``inner_lr`` lacks a name of ``params``, or ``grads`` lacks
            an adapted one.
    """
    stepped = {}
    for n, p in params.items():
        rate = _rate(inner_lr, n)
        stepped[n] = p if rate == 0 else p - rate * (grads[n].detach() if detach else grads[n])
    return stepped


def adapt(
    backbone: Backbone,
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    inner_lr: InnerLR,
    create_graph: bool,
) -> Params:
    """The inner loop for one task: ``steps`` plain gradient steps on the support loss (Eq. 1).

    Args:
        backbone: the network.
        params: theta, name -> tensor; each must require grad (or be a function of tensors that do).
        x: support inputs ``[N*K, ...]``; y: support targets ``[N*K]`` or ``[N*K, 1]``.
        steps: inner steps (>= 0). inner_lr: alpha (:data:`InnerLR`).
        create_graph: keep the graph of the inner gradients (second order). The support pass then
            uses the twice-differentiable fused batch norm (``norm="twice"``); without it, the
            native one.

    Returns:
        theta' (a new dict; ``params`` is not modified).

    Raises:
        KeyError: if a per-parameter ``inner_lr`` lacks a name of ``params``.
    """
    names = adapted_names(params, inner_lr)
    if not names:  # every rate 0: nothing to step (autograd.grad takes no empty inputs)
        return params
    norm = "twice" if create_graph else "native"
    for _ in range(steps):
        loss = backbone.loss(backbone.forward(params, x, norm), y)
        grads = _grad(loss, [params[n] for n in names], create_graph)
        params = inner_step(params, dict(zip(names, grads)), inner_lr)
    return params


def adapt_and_predict(
    backbone: Backbone,
    params: Params,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    inner_lr: InnerLR,
    steps: Sequence[int],
    groups: list[torch.Tensor] | None = None,
) -> dict[int, torch.Tensor]:
    """Test-time adaptation (Eq. 1 without a graph) recording the query outputs after each
    number of gradient steps in ``steps`` (Finn et al. 2017, Fig. 3 plots the MSE after 0..10).

    Args:
        params: theta, name -> tensor (detached copies are used; ``params`` is not modified).
        support_x: ``[M, ...]``; support_y: ``[M, ...]``; query_x: ``[Q, ...]``.
        inner_lr: the step size (:data:`InnerLR`). steps: step counts (>= 0), any order.
        groups: the transductive batches the queries are predicted in
            (:func:`~metabench.algorithms.transductive.query_groups`; ``None``: one batch).

    Returns:
        ``{s: outputs [Q, ...]}`` (detached) for every ``s`` in ``steps``.

    Raises:
        ValueError: for a negative step count.
        KeyError: if a per-parameter ``inner_lr`` lacks a name of ``params``.
    """
    wanted = sorted(set(steps))
    if wanted and wanted[0] < 0:
        raise ValueError(f"step counts must be >= 0, got {wanted[0]}")
    fast = {n: p.detach() for n, p in params.items()}
    out: dict[int, torch.Tensor] = {}
    for step in range(wanted[-1] + 1 if wanted else 0):
        if step in wanted:
            with torch.no_grad():
                out[step] = forward_in_groups(lambda x, fast=fast: backbone.forward(fast, x, "native"), query_x, groups)
        if step < wanted[-1]:
            with torch.enable_grad():
                leaves = {n: p.requires_grad_(True) for n, p in fast.items()}
                fast = {n: p.detach() for n, p in adapt(backbone, leaves, support_x, support_y, 1, inner_lr, False).items()}
    return out


def adapt_tasks(
    backbone: Backbone,
    params: Params,
    xs: torch.Tensor,
    ys: torch.Tensor,
    steps: int,
    inner_lr: InnerLR,
    create_graph: bool,
    strategy: str = "batched",
) -> Params:
    """The inner loop for T tasks at once (strategies ``batched`` and ``vmap``).

    Args:
        params: theta, name -> tensor (shared by all tasks).
        xs: support inputs ``[T, N*K, ...]``; ys: support targets ``[T, N*K, ...]``.
        strategy: ``"batched"`` (the backbone's ``tasks_forward``) or ``"vmap"``.

    Returns:
        name -> ``[T, *shape]``, the adapted parameters of each task, differentiable in
        ``params`` (twice if ``create_graph``).

    Raises:
        ValueError: for ``strategy="batched"`` on a backbone without ``tasks_forward``.
        KeyError: if a per-parameter ``inner_lr`` lacks a name of ``params``.
    """
    tasks = xs.shape[0]
    fast = {n: p.unsqueeze(0).expand(tasks, *p.shape) for n, p in params.items()}
    if strategy == "batched":
        if backbone.tasks_forward is None:
            raise ValueError(f"backbone {backbone.name} has no task-batched forward: use strategy per_task or vmap")
        for _ in range(steps):
            fast = _tasks_step(backbone, fast, xs, ys, inner_lr, create_graph)
        return fast
    if strategy != "vmap":
        raise ValueError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")

    def support_loss(p: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return backbone.loss(backbone.forward(p, x, "tensor_ops"), y)

    task_grad = torch.func.vmap(torch.func.grad(support_loss))
    for _ in range(steps):
        grads = task_grad(fast, xs, ys)
        fast = inner_step(fast, grads, inner_lr, detach=not create_graph)
    return fast


def _tasks_step(
    backbone: Backbone, fast: Params, xs: torch.Tensor, ys: torch.Tensor, inner_lr: InnerLR, create_graph: bool
) -> Params:
    """One inner step (Eq. 1) for T tasks at once through the backbone's ``tasks_forward``:
    ``fast`` name -> ``[T, *shape]`` (each requiring grad, or a function of tensors that do) ->
    the stepped parameters, differentiable in ``fast`` twice if ``create_graph``."""
    names = adapted_names(fast, inner_lr)
    if not names:
        return fast
    out = backbone.tasks_forward(fast, xs, "twice" if create_graph else "native")
    # T x the mean over all examples = the sum over tasks of each task's mean loss (tasks have
    # equal sizes), so task t's parameters get exactly the gradient of its own loss.
    loss = backbone.loss(out.flatten(0, 1), ys.flatten(0, 1)) * xs.shape[0]
    grads = _grad(loss, [fast[n] for n in names], create_graph)
    return inner_step(fast, dict(zip(names, grads)), inner_lr, detach=not create_graph)


def _query_gradients(
    backbone: Backbone,
    fast: Params,
    query_x: torch.Tensor,
    query_y: torch.Tensor,
    query_forward: Callable[[Params, torch.Tensor], torch.Tensor],
    scale: float,
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """The query pass of each task on detached adapted parameters, one task at a time.

    Returns ``(grads, losses, outputs)``: name-ordered ``[T, *shape]`` gradients of
    ``scale * L_query_t`` with respect to theta'_t, and each task's detached loss and output.
    """
    names = list(fast)
    per_name: list[list[torch.Tensor]] = [[] for _ in names]
    losses, outputs = [], []
    for t in range(query_x.shape[0]):
        task_params = {n: fast[n][t].detach().requires_grad_(True) for n in names}
        out = query_forward(task_params, query_x[t])
        loss = backbone.loss(out, query_y[t])
        for acc, g in zip(per_name, _grad(loss * scale, list(task_params.values()), False)):
            acc.append(g)
        losses.append(loss.detach())
        outputs.append(out.detach())
    return [torch.stack(g) for g in per_name], losses, outputs


# Memory of one support image kept for one inner step, in query images (default_chunk).
SUPPORT_IMAGE_STEP_COST = 3.3


def default_chunk(support_x: torch.Tensor, query_x: torch.Tensor, steps: int) -> int:
    """Tasks per chunk of the ``chunked`` and ``recompute`` strategies: as many as keep one chunk's
    second-order support graph about the size of one task's query graph, at least 1.

    One support image kept for one inner step costs about as much peak memory as
    ``SUPPORT_IMAGE_STEP_COST`` query images (its saved graph, 1.3 MiB per Omniglot image and
    step, plus the temporaries of its double backward). So, at 5-way 1-shot with 15 queries per
    class: 4 tasks per chunk at 1 inner step, 2 at 2 steps, 1 from 3 steps on (``recompute``
    keeps one step's graph at a time and asks for the 1-step chunk). Measured on 2 CPU cores
    (Conv4, 28 x 28, channels-last, meta-batch 16, peak resident-set growth as ``metabench time``
    measures it, with the argmax-only max-pool and the fused query block): ``chunked`` at 1 step
    85 MiB for chunks of 2 tasks and 104 MiB for 4, at 5 steps 153 MiB for 2 and 233 MiB for 4;
    ``per_task`` 77 and 125 MiB; learn2learn 128 and 153 MiB in the same session.

    Args:
        support_x: ``[T, N*K, ...]``; query_x: ``[T, N*Q, ...]``. steps: inner steps.

    Returns:
        Tasks per chunk, >= 1.
    """
    support, query = support_x.shape[1], query_x.shape[1]
    return max(1, int(query / (SUPPORT_IMAGE_STEP_COST * support * max(steps, 1))))


def meta_gradient(
    backbone: Backbone,
    params: Params,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    query_y: torch.Tensor,
    options: CoreOptions,
) -> MetaGradient:
    """The MAML meta-gradient of a meta-batch (Finn et al. 2017, Alg. 2, lines 5-10).

    Args:
        backbone: the network as pure functions (:data:`CONV4`, :data:`MLP_REGRESSION`).
        params: theta, name -> tensor, each a leaf requiring grad.
        support_x: ``[T, N*K, ...]``; support_y: ``[T, N*K, ...]`` (T tasks of equal shape).
        query_x: ``[T, N*Q, ...]``; query_y: ``[T, N*Q, ...]``.
        options: inner steps, inner learning rate, first or second order, strategy, query
            forward, chunk and layout (:class:`CoreOptions`).

    Returns:
        A :class:`MetaGradient`: the gradient of ``mean_i L_query_i`` for every parameter, the
        per-task query losses and outputs. ``params``' ``.grad`` fields are not touched.

    Raises:
        ValueError: for an unknown strategy or layout; ``chunked``, ``batched`` or
            ``recompute`` on a backbone without ``tasks_forward``; ``channels_last`` on a
            backbone without image inputs; ``chunk < 1`` or ``steps < 0``.
        KeyError: if a per-parameter ``options.inner_lr`` lacks a name of ``params``.
    """
    steps, inner_lr, first_order, strategy = options.steps, options.inner_lr, options.first_order, options.strategy
    chunk, layout = options.chunk, options.layout
    if steps < 0:
        raise ValueError(f"inner steps must be >= 0, got {steps}")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    if strategy in ("chunked", "batched", "recompute") and backbone.tasks_forward is None:
        raise ValueError(f"backbone {backbone.name} has no task-batched forward: use strategy per_task or vmap")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    if layout == "channels_last":
        if not backbone.images:
            raise ValueError(f"backbone {backbone.name} does not take images: use layout contiguous")
        support_x, query_x = channels_last(support_x), channels_last(query_x)
    names = list(params)
    leaves = [params[n] for n in names]
    tasks = support_x.shape[0]
    qf = options.query_forward or partial(backbone.forward, norm="native")
    if strategy == "per_task":
        total = [torch.zeros_like(p) for p in leaves]
        losses, outputs = [], []
        for t in range(tasks):
            fast = adapt(backbone, params, support_x[t], support_y[t], steps, inner_lr, not first_order)
            out = qf(fast, query_x[t])
            loss = backbone.loss(out, query_y[t])
            for acc, g in zip(total, _grad(loss / tasks, leaves, False)):
                acc += g
            losses.append(loss.detach())
            outputs.append(out.detach())
        return MetaGradient(dict(zip(names, total)), torch.stack(losses), outputs)
    if chunk is None:
        # recompute keeps the graph of one inner step at a time.
        chunk = default_chunk(support_x, query_x, 1 if strategy == "recompute" else steps)
    size = tasks if strategy in ("batched", "vmap") else chunk
    if size < 1:
        raise ValueError(f"chunk must be >= 1 task, got {size}")
    spans = [slice(c, min(c + size, tasks)) for c in range(0, tasks, size)]
    if strategy == "recompute":
        return _recompute(backbone, params, support_x, support_y, query_x, query_y, steps, inner_lr, first_order, qf, spans)
    grads = [torch.zeros_like(p) for p in leaves]
    losses, outputs = [], []
    for s in spans:
        fast = adapt_tasks(backbone, params, support_x[s], support_y[s], steps, inner_lr, not first_order,
                           "vmap" if strategy == "vmap" else "batched")
        fast_grads, chunk_losses, chunk_outputs = _query_gradients(backbone, fast, query_x[s], query_y[s], qf, 1.0 / tasks)
        chunk_grads = torch.autograd.grad([fast[n] for n in names], leaves, fast_grads, allow_unused=True, materialize_grads=True)
        for acc, g in zip(grads, chunk_grads):
            acc += g
        losses += chunk_losses
        outputs += chunk_outputs
    return MetaGradient(dict(zip(names, grads)), torch.stack(losses), outputs)


def _recompute(
    backbone: Backbone,
    params: Params,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    query_y: torch.Tensor,
    steps: int,
    inner_lr: InnerLR,
    first_order: bool,
    query_forward: Callable[[Params, torch.Tensor], torch.Tensor],
    spans: list[slice],
) -> MetaGradient:
    """The ``recompute`` strategy: the chain rule split at every inner step, chunk by chunk.

    For the tasks of each chunk (``spans``):

    1. the inner loop without a second-order graph, keeping theta_k (detached, ``[chunk, ...]``)
       for k = 1 .. steps - 1;
    2. the query pass of each task at theta', keeping only ``lambda = dL/dtheta'``;
    3. (second order) the inner steps in reverse, each rebuilt from its theta_k with its
       second-order graph: ``lambda <- lambda - alpha H_k lambda``, the vector-Jacobian product
       of step k (Finn et al. 2017, Eq. 1 differentiated; the reverse sweep of Griewank &
       Walther 2008, Ch. 12, with every step's input stored).

    Peak memory is the larger of one query graph and one chunk's graph of a single inner step
    (plus the stored theta_k, 0.45 MiB per task and step for Conv4), whatever the number of
    steps; the price is the first-order inner loop of step 1.
    """
    names = list(params)
    leaves = [params[n] for n in names]
    tasks = support_x.shape[0]
    grads = [torch.zeros_like(p) for p in leaves]
    losses: list[torch.Tensor] = []
    outputs: list[torch.Tensor] = []
    for s in spans:
        xs, ys = support_x[s], support_y[s]
        size = xs.shape[0]
        fast = {n: p.detach().unsqueeze(0).expand(size, *p.shape) for n, p in params.items()}
        inputs: list[Params | None] = [None] * steps  # theta_k for k >= 1, second order only
        for k in range(steps):
            fast = {n: p.detach().requires_grad_(True) for n, p in fast.items()}
            if k > 0 and not first_order:
                inputs[k] = fast
            fast = _tasks_step(backbone, fast, xs, ys, inner_lr, False)
        lam, chunk_losses, chunk_outputs = _query_gradients(
            backbone, {n: p.detach() for n, p in fast.items()}, query_x[s], query_y[s], query_forward, 1.0 / tasks
        )
        losses += chunk_losses
        outputs += chunk_outputs
        if not first_order:
            for k in range(steps - 1, 0, -1):
                stepped = _tasks_step(backbone, inputs[k], xs, ys, inner_lr, True)
                lam = list(torch.autograd.grad(
                    [stepped[n] for n in names], [inputs[k][n] for n in names], lam, allow_unused=True, materialize_grads=True
                ))
                inputs[k] = None
            if steps > 0:
                expanded = {n: p.unsqueeze(0).expand(size, *p.shape) for n, p in params.items()}
                stepped = _tasks_step(backbone, expanded, xs, ys, inner_lr, True)
                for acc, g in zip(grads, torch.autograd.grad(
                    [stepped[n] for n in names], leaves, lam, allow_unused=True, materialize_grads=True
                )):
                    acc += g
                continue
        # First order, or no inner step: d theta'/d theta is the identity.
        for acc, g in zip(grads, lam):
            acc += g.sum(0)
    return MetaGradient(dict(zip(names, grads)), torch.stack(losses), outputs)


def compiled_query_forward(backbone: Backbone) -> Callable[[Params, torch.Tensor], torch.Tensor]:
    """The backbone's query forward (fused batch norm) under ``torch.compile`` (static shapes).

    Compilation happens on the first call of each new input shape (seconds to a minute on CPU;
    Inductor needs a C++ compiler there). Only the once-differentiated query pass is compiled:
    compiled graphs do not support double backward.
    """
    return torch.compile(partial(backbone.forward, norm="native"), dynamic=False)
