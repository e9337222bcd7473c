"""Budget-aware self-distillation: the EMA momentum from a horizon, the distillation start, and the
diagnostics (teacher entropies and their collapse warning, teacher drift, effective rank) in logs and cards."""

from __future__ import annotations

import math

import pytest
import torch
from test_objectives import SILC, make_batch, make_student
from test_training import SILC_SMALL, tiny_recipe

from silc_eval.core.errors import UserError
from silc_eval.train.diagnostics import (
    effective_rank,
    entropy_warning,
    horizon_from_momentum,
    momentum_from_horizon,
    relative_drift,
    summary_entropies,
    target_entropies,
    target_summary,
)
from silc_eval.train.factory import build_objective
from silc_eval.train.loop import train


def test_momentum_from_horizon_reproduces_dinos_two_anchors_and_inverts():
    assert momentum_from_horizon(256_000, 1024) == pytest.approx(0.996)
    assert momentum_from_horizon(512_000, 256) == pytest.approx(0.9995)
    assert horizon_from_momentum(momentum_from_horizon(2048, 128), 128) == pytest.approx(2048)
    # At the zoo's budget (160 steps of 128) DINO's momentum leaves half the initialisation; a 2k-image
    # horizon leaves almost none.
    assert 0.996 ** 160 > 0.5 and momentum_from_horizon(2048, 128) ** 160 < 1e-4
    with pytest.raises(ValueError, match="more images than one batch"):
        momentum_from_horizon(100, 128)


def test_a_recipe_horizon_sets_the_teacher_momentum_and_conflicts_are_user_errors():
    section = {**SILC, "distill": {**{k: v for k, v in SILC["distill"].items() if k != "ema_momentum"},
                                   "ema_horizon_images": 64}}
    objective = build_objective(section, image_size=32, batch_size=4)
    make_student(objective)
    assert objective.teacher.momentum == pytest.approx(1 - 4 / 64)
    assert objective.card_info()["ema_momentum"] == pytest.approx(1 - 4 / 64)
    with pytest.raises(UserError, match="not both"):
        build_objective({**SILC, "distill": {**SILC["distill"], "ema_horizon_images": 64}}, 32, batch_size=4)
    # a study's `ema_momentum: null` beside a horizon (overriding a recipe that sets the momentum) is the horizon
    nulled = build_objective({**SILC, "distill": {**SILC["distill"], "ema_momentum": None, "ema_horizon_images": 64}},
                             32, batch_size=4)
    assert nulled.card_info()["ema_momentum"] == pytest.approx(1 - 4 / 64)
    with pytest.raises(UserError, match="ema_momentum must be a number"):
        build_objective({**SILC, "distill": {**SILC["distill"], "ema_momentum": None}}, 32, batch_size=4)
    with pytest.raises(UserError, match="needs the batch size"):
        build_objective(section, 32)
    with pytest.raises(UserError, match="start_step must be 0"):
        build_objective({"name": "dino", "views": SILC["views"], "distill": {**SILC["distill"], "start_step": 2}}, 32)


def test_before_the_start_no_distillation_gradient_and_at_the_start_the_teacher_is_the_student():
    objective = build_objective({**SILC, "distill": {**SILC["distill"], "start_step": 3}}, image_size=32)
    student = make_student(objective)
    batch = make_batch(objective)
    teacher_before = objective.teacher.copies["visual"].conv1.weight.clone()
    for step in range(3):
        outputs = student(objective.student_forward, batch)
        losses = objective.losses(outputs, batch, step)
        assert losses["distill"].item() == 0.0
        student.zero_grad(set_to_none=True)
        losses["loss"].backward()
        head = student.extras["distill_head"]
        assert all(p.grad is not None and not p.grad.any() for p in head.parameters())  # used, but zero gradient
        with torch.no_grad():
            student.clip.visual.conv1.weight.add_(0.5)
        objective.after_step(student)
        assert torch.equal(objective.teacher.copies["visual"].conv1.weight, teacher_before)  # no EMA yet
        assert "teacher_entropy" not in objective.diagnostics() and objective.warning() is None
    objective.distill_loss.center.fill_(1.0)
    outputs = student(objective.student_forward, batch)
    losses = objective.losses(outputs, batch, 3)
    for name in ("visual", "head"):
        student_state = objective._tracked(student)[name].state_dict()
        for key, value in objective.teacher.copies[name].state_dict().items():
            assert torch.equal(value, student_state[key]), (name, key)
    assert losses["distill"].item() > 0
    # the temperature warm-up counts from the start; the centre restarted from zero (one update since)
    assert objective.distill_loss.center.abs().max() < 1.0
    student.zero_grad(set_to_none=True)
    losses["loss"].backward()
    assert student.extras["distill_head"].prototypes.grad.abs().sum() > 0
    found = objective.diagnostics()
    assert {"teacher_entropy", "teacher_batch_entropy", "teacher_drift", "embedding_effective_rank"} <= set(found)
    assert found["teacher_drift"] == 0.0


def test_the_collapse_detector_fires_on_planted_collapses_and_not_on_a_healthy_teacher():
    prototypes = 64
    generator = torch.Generator().manual_seed(0)
    collapsed = torch.zeros(32, prototypes)
    collapsed[:, 5] = 1.0  # every sample on one prototype
    uniform = torch.full((32, prototypes), 1.0 / prototypes)
    healthy = torch.softmax(torch.randn(32, prototypes, generator=generator) * 8, dim=-1)  # peaked, diverse
    assert entropy_warning(*target_entropies(collapsed), prototypes).kind == "collapsed targets"
    assert "near uniform" in entropy_warning(*target_entropies(uniform), prototypes).message
    assert entropy_warning(*target_entropies(healthy), prototypes) is None
    # The per-step summary over the views' targets equals the entropies of all targets together.
    assert summary_entropies(target_summary([healthy[:10], healthy[10:]])) == pytest.approx(target_entropies(healthy))
    per_sample, batch_mean = target_entropies(uniform)
    assert per_sample == pytest.approx(math.log(prototypes)) and batch_mean == pytest.approx(math.log(prototypes))


def test_effective_rank_and_drift():
    basis = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(1)))[0]
    rank_three = torch.randn(200, 3, generator=torch.Generator().manual_seed(2)) @ basis[:3]
    assert 2.0 < effective_rank(rank_three) <= 3.0 + 1e-9
    equal = torch.cat([torch.eye(4), -torch.eye(4)]) * 3  # centred, four equal singular values
    assert effective_rank(equal) == pytest.approx(4.0)
    assert effective_rank(torch.zeros(5, 4)) == 0.0
    start = [torch.ones(3), torch.full((2,), 2.0)]
    assert relative_drift(start, start) == 0.0
    assert relative_drift([torch.zeros(3), torch.zeros(2)], start) == pytest.approx(1.0)


def test_training_logs_and_cards_carry_the_diagnostics(tmp_path):
    recipe = tiny_recipe(tmp_path, {**SILC_SMALL, "distill": {**SILC_SMALL["distill"], "start_step": 2,
                                                                 "ema_horizon_images": 32}}, steps=4)
    card = train(recipe, tmp_path / "out", evaluate=False, progress=False)
    history = card["diagnostics"]["history"]
    assert [entry["step"] for entry in history] == [1, 2, 3, 4]
    assert all("contrastive" in e and "distill" in e and "embedding_effective_rank" in e for e in history)
    # Logged after each step's update: steps 1-2 ran before the start (index 2), steps 3-4 after it.
    assert all("teacher_entropy" not in e and e["distill"] == 0.0 for e in history[:2])
    assert all(0 < e["teacher_entropy"] <= math.log(64) + 1e-6 and e["distill"] > 0 for e in history[2:])
    assert 0.0 < history[2]["teacher_drift"]  # the teacher restarted from the student, then one EMA update
    assert card["training"]["ema_momentum"] == pytest.approx(1 - 8 / 32)
    assert card["training"]["distill_start_step"] == 2
    kinds = [w["kind"] for w in card["diagnostics"]["warnings"]]
    assert len(kinds) == len(set(kinds)) and set(kinds) <= {"uniform targets", "collapsed targets"}
