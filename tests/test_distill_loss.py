"""Hand-made cases for the DINO-style view-distillation loss (train/distill.py).

The loss is the mean over (teacher view i, student view v != i) pairs of the batch-mean
cross-entropy H(p, q) = -sum_k p_k log q_k with p = softmax((t - centre) / teacher_temp)
and q = softmax(s / student_temp). Expected values are worked out with math.exp/math.log.
"""

from __future__ import annotations

import math

import pytest
import torch

from silc_eval.train.distill import ViewDistillationLoss


def softmax(logits: list[float], temp: float = 1.0) -> list[float]:
    exps = [math.exp(x / temp) for x in logits]
    total = sum(exps)
    return [e / total for e in exps]


def log_softmax(logits: list[float], temp: float = 1.0) -> list[float]:
    scaled = [x / temp for x in logits]
    top = max(scaled)
    norm = top + math.log(sum(math.exp(x - top) for x in scaled))
    return [x - norm for x in scaled]


def cross_entropy(p: list[float], log_q: list[float]) -> float:
    return -sum(pk * lq for pk, lq in zip(p, log_q))


def entropy(p: list[float]) -> float:
    return -sum(pk * math.log(pk) for pk in p if pk > 0)


def make_loss(out_dim: int, teacher_temp: float, student_temp: float, momentum: float = 0.9) -> ViewDistillationLoss:
    # teacher_temp_start = teacher_temp and no warm-up: a fixed teacher temperature at every step.
    return ViewDistillationLoss(out_dim, teacher_temp=teacher_temp, teacher_temp_start=teacher_temp,
                                teacher_temp_warmup_steps=0, student_temp=student_temp, center_momentum=momentum)


# ----------------------------------------------------------------------------- (i) student = teacher

def test_student_matching_a_near_one_hot_teacher_gives_near_zero_loss():
    # Teacher: 50 on one class, 0 elsewhere, teacher_temp 1 -> p is one-hot up to e^-50.
    # Student logits = student_temp * teacher logits, so log_softmax(s / student_temp) = log p exactly:
    # the loss is H(p, p) = entropy(p), which is ~0 only because p is (nearly) one-hot.
    teacher_rows = [[50.0, 0.0, 0.0, 0.0], [0.0, 0.0, 50.0, 0.0], [0.0, 50.0, 0.0, 0.0]]
    student_temp = 0.1
    loss_fn = make_loss(4, teacher_temp=1.0, student_temp=student_temp)
    teacher = torch.tensor(teacher_rows)
    student = teacher * student_temp
    loss = loss_fn([student.clone(), student.clone()], [teacher], step=0)  # one teacher view: pair (0, 1) only
    expected = sum(entropy(softmax(row)) for row in teacher_rows) / len(teacher_rows)
    assert expected < 1e-18
    assert 0 <= loss.item() < 1e-6


def test_student_matching_a_soft_teacher_gives_the_teacher_entropy_not_zero():
    # The same construction with a soft teacher: the minimum of H(p, q) over q is entropy(p) > 0.
    row = [1.0, 0.0, -0.5, 0.25]
    loss_fn = make_loss(4, teacher_temp=1.0, student_temp=0.1)
    teacher = torch.tensor([row])
    loss = loss_fn([teacher * 0.1, teacher * 0.1], [teacher], step=0)
    assert loss.item() == pytest.approx(entropy(softmax(row)), abs=1e-5)
    assert loss.item() > 1.0
    # Any other student distribution costs more (Gibbs' inequality).
    worse = loss_fn([teacher * 0.1, torch.tensor([[0.0, 0.1, 0.0, 0.0]])], [teacher], step=0)
    assert worse.item() > loss.item() + 0.05


# ----------------------------------------------------------------------------- (ii) analytic values

def test_two_class_single_pair_matches_the_hand_computed_cross_entropy():
    # p = softmax([1, 0] / 0.5) = (e^2, 1) / (e^2 + 1)
    # log q = log_softmax([0.3, -0.2] / 0.1) = [3, -2] - log(e^3 + e^-2)
    loss_fn = make_loss(2, teacher_temp=0.5, student_temp=0.1)
    teacher = torch.tensor([[1.0, 0.0]])
    student_other = torch.tensor([[0.3, -0.2]])
    loss = loss_fn([torch.zeros(1, 2), student_other], [teacher], step=0)
    p1, p2 = math.exp(2) / (math.exp(2) + 1), 1 / (math.exp(2) + 1)
    norm = math.log(math.exp(3) + math.exp(-2))
    expected = -(p1 * (3 - norm) + p2 * (-2 - norm))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(0.60273, abs=1e-4)  # the number itself, as a sanity check of the algebra


def test_pairs_skip_the_same_view_and_average_over_views_and_batch():
    teacher_temp, student_temp = 0.5, 0.2
    teachers = [[[1.0, -1.0], [0.2, 0.4]], [[-0.3, 0.6], [0.0, 2.0]]]  # 2 global views x 2 samples
    students = [[[0.5, 0.1], [-0.4, 0.3]], [[0.0, 0.9], [1.2, -0.6]], [[0.7, 0.7], [-1.0, 0.2]]]  # 2 global + 1 local
    loss_fn = make_loss(2, teacher_temp, student_temp)
    loss = loss_fn([torch.tensor(s) for s in students], [torch.tensor(t) for t in teachers], step=0)
    pair_losses = []
    for i, teacher_view in enumerate(teachers):
        for v, student_view in enumerate(students):
            if v == i:
                continue
            per_sample = [cross_entropy(softmax(t, teacher_temp), log_softmax(s, student_temp))
                          for t, s in zip(teacher_view, student_view)]
            pair_losses.append(sum(per_sample) / len(per_sample))
    assert len(pair_losses) == 4  # (0,1), (0,2), (1,0), (1,2)
    assert loss.item() == pytest.approx(sum(pair_losses) / 4, rel=1e-5)
    # Student view 0 is skipped for teacher 0 but still a student for teacher 1: perturbing it moves the loss.
    perturbed = [torch.tensor(s) for s in students]
    perturbed[0] = perturbed[0] + torch.tensor([[1.0, -1.0], [0.0, 0.0]])
    assert abs(loss_fn(perturbed, [torch.tensor(t) for t in teachers], step=0).item() - loss.item()) > 1e-3


def test_teacher_temperature_warms_up_linearly():
    loss_fn = ViewDistillationLoss(2, teacher_temp=0.07, teacher_temp_start=0.04, teacher_temp_warmup_steps=30)
    assert loss_fn.teacher_temperature(0) == pytest.approx(0.04)
    assert loss_fn.teacher_temperature(15) == pytest.approx(0.055)
    assert loss_fn.teacher_temperature(30) == pytest.approx(0.07)
    assert loss_fn.teacher_temperature(1000) == pytest.approx(0.07)


# ----------------------------------------------------------------------------- (iii) gradients

def test_gradients_reach_the_student_and_never_the_teacher():
    torch.manual_seed(0)
    loss_fn = make_loss(5, teacher_temp=0.07, student_temp=0.1)
    teacher = [torch.randn(3, 5, requires_grad=True), torch.randn(3, 5, requires_grad=True)]
    student = [torch.randn(3, 5, requires_grad=True) for _ in range(4)]
    loss = loss_fn(student, teacher, step=0)
    loss.backward()
    for t in teacher:
        assert t.grad is None
    for s in student:
        assert s.grad is not None and s.grad.abs().sum() > 0
    assert loss_fn.center.grad is None and not loss_fn.center.requires_grad


# ----------------------------------------------------------------------------- (iv) centring

def test_a_centre_equal_to_the_teacher_logits_gives_uniform_targets():
    row = [2.0, -1.0, 0.5]
    student_row = [0.4, 0.1, -0.3]
    student_temp = 0.1
    loss_fn = make_loss(3, teacher_temp=0.04, student_temp=student_temp)
    loss_fn.center.copy_(torch.tensor([row]))
    loss = loss_fn([torch.zeros(1, 3), torch.tensor([student_row])], [torch.tensor([row])], step=0)
    uniform = cross_entropy([1 / 3] * 3, log_softmax(student_row, student_temp))
    assert loss.item() == pytest.approx(uniform, rel=1e-5)
    # Without the centre the sharp teacher (temp 0.04) is almost one-hot on class 0: a different value.
    loss_fn.center.zero_()
    uncentred = loss_fn([torch.zeros(1, 3), torch.tensor([student_row])], [torch.tensor([row])], step=0)
    assert uncentred.item() == pytest.approx(-log_softmax(student_row, student_temp)[0], rel=1e-4)
    assert abs(uncentred.item() - uniform) > 0.5


def test_centre_is_subtracted_per_class_before_sharpening():
    row, centre, teacher_temp, student_temp = [1.0, 0.0, 0.5], [0.8, -0.3, 0.1], 0.5, 0.2
    student_row = [0.2, -0.1, 0.3]
    loss_fn = make_loss(3, teacher_temp=teacher_temp, student_temp=student_temp)
    loss_fn.center.copy_(torch.tensor([centre]))
    loss = loss_fn([torch.zeros(1, 3), torch.tensor([student_row])], [torch.tensor([row])], step=0)
    target = softmax([t - c for t, c in zip(row, centre)], teacher_temp)
    assert loss.item() == pytest.approx(cross_entropy(target, log_softmax(student_row, student_temp)), rel=1e-5)
    # A centre shifted by a constant on every class gives the same targets (softmax is shift-invariant).
    loss_fn.center.add_(7.0)
    shifted = loss_fn([torch.zeros(1, 3), torch.tensor([student_row])], [torch.tensor([row])], step=0)
    assert shifted.item() == pytest.approx(loss.item(), rel=1e-5)


# ----------------------------------------------------------------------------- (v) centre update

def teacher_views() -> list[torch.Tensor]:
    return [torch.tensor([[1.0, 2.0, 3.0], [3.0, 0.0, -1.0]]), torch.tensor([[0.0, 4.0, 1.0], [-4.0, 2.0, 1.0]])]


def test_update_center_with_momentum_zero_is_the_batch_mean_over_all_teacher_views():
    loss_fn = make_loss(3, teacher_temp=0.07, student_temp=0.1, momentum=0.0)
    loss_fn.center.copy_(torch.tensor([[9.0, 9.0, 9.0]]))
    loss_fn.update_center(teacher_views())
    assert torch.allclose(loss_fn.center, torch.tensor([[0.0, 2.0, 1.0]]))  # mean of the 4 rows
    assert loss_fn.center.shape == (1, 3)


def test_update_center_with_momentum_one_keeps_the_old_centre():
    loss_fn = make_loss(3, teacher_temp=0.07, student_temp=0.1, momentum=1.0)
    old = torch.tensor([[0.5, -0.25, 2.0]])
    loss_fn.center.copy_(old)
    loss_fn.update_center(teacher_views())
    assert torch.equal(loss_fn.center, old)


def test_update_center_mixes_old_centre_and_batch_mean_by_momentum():
    loss_fn = make_loss(3, teacher_temp=0.07, student_temp=0.1, momentum=0.9)
    loss_fn.center.copy_(torch.tensor([[1.0, 1.0, 1.0]]))
    loss_fn.update_center(teacher_views())
    assert torch.allclose(loss_fn.center, torch.tensor([[0.9, 0.9 + 0.2, 0.9 + 0.1]]))
