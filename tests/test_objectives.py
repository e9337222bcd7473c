"""The objectives' mechanics: who sees which views, the EMA teacher, the centre, masking, the heads."""

import copy

import pytest
import torch
import torch.nn.functional as F

from silc_eval.core.errors import UserError
from silc_eval.train.distill import ViewDistillationLoss
from silc_eval.train.ema import EmaTeacher
from silc_eval.train.factory import build_objective
from silc_eval.train.model_config import create_model, open_clip_config
from silc_eval.train.objectives import StudentModule
from silc_eval.train.pairs import Batch
from silc_eval.train.sfclip import feature_loss, random_mask

MODEL = {"embed_dim": 16, "vision": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
         "text": {"context_length": 12, "width": 16, "heads": 2, "layers": 1}}
SILC = {"name": "silc", "views": {"n_local": 3, "local_size": 16},
        "distill": {"out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8, "ema_momentum": 0.9}}


def make_student(objective):
    torch.manual_seed(0)
    clip = create_model(open_clip_config(MODEL, 40, (0.5,) * 3, (0.5,) * 3))
    student = StudentModule(clip, objective.extras(clip))
    objective.attach(student)
    return student


def make_batch(objective, size=4):
    views = [torch.randn(size, 3, objective.views.global_size, objective.views.global_size)
             for _ in range(objective.views.n_global)]
    views += [torch.randn(size, 3, objective.views.local_size, objective.views.local_size)
              for _ in range(objective.views.n_local)]
    tokens = torch.randint(3, 39, (size, 12))
    tokens[:, 0], tokens[:, -1] = 2, 39
    return Batch(views, tokens, ["a"] * size, torch.arange(size))


def test_distillation_pairs_skip_the_same_view_and_use_every_other():
    loss = ViewDistillationLoss(5, teacher_temp=0.5, teacher_temp_start=0.5, student_temp=1.0)
    teacher = [torch.randn(3, 5) for _ in range(2)]
    student = [torch.randn(3, 5) for _ in range(4)]
    expected = []
    for i, t in enumerate(teacher):
        for v, s in enumerate(student):
            if v != i:
                expected.append(-(F.softmax(t / 0.5, -1) * F.log_softmax(s, -1)).sum(-1).mean())
    assert loss(student, teacher, step=0).item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-6)
    assert len(expected) == 2 * 4 - 2


def test_teacher_temperature_warms_up_linearly():
    loss = ViewDistillationLoss(4, teacher_temp=0.07, teacher_temp_start=0.04, teacher_temp_warmup_steps=10)
    assert loss.teacher_temperature(0) == pytest.approx(0.04)
    assert loss.teacher_temperature(5) == pytest.approx(0.055)
    assert loss.teacher_temperature(10) == pytest.approx(0.07)


def test_centre_is_a_momentum_average_of_teacher_outputs():
    loss = ViewDistillationLoss(3, center_momentum=0.9)
    outputs = [torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[3.0, 2.0, 1.0]])]
    loss.update_center(outputs)
    assert torch.allclose(loss.center, 0.1 * torch.tensor([[2.0, 2.0, 2.0]]))


def test_ema_teacher_moves_with_fixed_momentum_and_stays_frozen():
    student = torch.nn.Linear(3, 2)
    teacher = EmaTeacher({"m": student}, momentum=0.75)
    before = teacher.copies["m"].weight.clone()
    with torch.no_grad():
        student.weight.add_(1.0)
    teacher.update({"m": student})
    assert torch.allclose(teacher.copies["m"].weight, 0.75 * before + 0.25 * student.weight)
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.copies.training


def test_silc_teacher_sees_only_global_views_and_student_all(monkeypatch):
    objective = build_objective(SILC, image_size=32)
    student = make_student(objective)
    batch = make_batch(objective)
    seen = []
    import silc_eval.train.objectives as objectives

    original = objectives.forward_any_size

    def spy(visual, images, *args):
        seen.append(("teacher" if visual is objective.teacher.copies["visual"] else "student", images.shape[-1]))
        return original(visual, images, *args)

    monkeypatch.setattr(objectives, "forward_any_size", spy)
    outputs = student(objective.student_forward, batch)
    losses = objective.losses(outputs, batch, step=0)
    assert sorted(seen) == sorted([("student", 32)] * 2 + [("student", 16)] * 3 + [("teacher", 32)] * 2)
    assert set(losses) == {"loss", "contrastive", "distill"}
    assert len(outputs["distill_scores"]) == 5 and outputs["distill_scores"][0].shape == (4, 32)
    losses["loss"].backward()
    assert student.extras["distill_head"].prototypes.grad is not None
    assert objective.teacher.copies["head"].prototypes.grad is None


def test_silc_image_text_loss_covers_every_global_view_and_no_local_view():
    objective = build_objective(SILC, image_size=32)
    student = make_student(objective)
    outputs = student(objective.student_forward, make_batch(objective))
    per_view = []
    for embedding in outputs["image_embeddings"][:2]:
        per_view.append(objective.loss(F.normalize(embedding, dim=-1), outputs["text_features"], outputs["logit_scale"]))
    assert objective.contrastive_term(outputs).item() == pytest.approx(torch.stack(per_view).mean().item(), rel=1e-6)


def test_views_only_puts_every_view_through_the_image_text_loss_and_has_no_teacher():
    objective = build_objective({"name": "views-only", "views": {"n_local": 3, "local_size": 16}}, image_size=32)
    student = make_student(objective)
    assert objective.contrastive_view_count() == 5
    losses = objective.losses(student(objective.student_forward, make_batch(objective)), None, 0)
    assert set(losses) == {"loss", "contrastive"}
    assert not student.extras


def test_silc_after_step_moves_the_teacher_toward_the_student():
    objective = build_objective(SILC, image_size=32)
    student = make_student(objective)
    teacher_before = copy.deepcopy(objective.teacher.copies["visual"].conv1.weight)
    with torch.no_grad():
        student.clip.visual.conv1.weight.add_(1.0)
    objective.after_step(student)
    expected = 0.9 * teacher_before + 0.1 * student.clip.visual.conv1.weight
    assert torch.allclose(objective.teacher.copies["visual"].conv1.weight, expected, atol=1e-6)


def test_random_mask_has_exactly_the_ratio_and_is_seeded():
    a = random_mask(16, 0.5, torch.Generator().manual_seed(1))
    b = random_mask(16, 0.5, torch.Generator().manual_seed(1))
    c = random_mask(16, 0.5, torch.Generator().manual_seed(2))
    assert a.sum() == 8 and torch.equal(a, b) and not torch.equal(a, c)
    assert random_mask(5, 0.01, torch.Generator().manual_seed(0)).sum() == 1


def test_feature_losses_are_zero_on_matching_normalised_targets():
    target = torch.randn(6, 10)
    normed = F.layer_norm(target, (10,))
    for kind in ("cosine", "smooth_l1", "mse"):
        assert feature_loss(kind, normed, target).item() == pytest.approx(0.0, abs=1e-5)
        assert feature_loss(kind, -normed, target).item() > 0.5
    with pytest.raises(UserError):
        feature_loss("l3", normed, target)


def test_unknown_objective_and_parameters_are_user_errors():
    with pytest.raises(UserError, match="unknown objective"):
        build_objective("magic", 32)
    with pytest.raises(UserError, match="unknown distill parameter 'K'"):
        build_objective({"name": "silc", "distill": {"K": 3}}, 32)
    with pytest.raises(UserError, match="unknown views parameter"):
        build_objective({"name": "silc", "views": {"n_crops": 3}}, 32)


def test_self_distillation_needs_two_views():
    with pytest.raises(UserError, match="needs at least one global view and two views"):
        build_objective({"name": "silc", "views": {"n_global": 1, "n_local": 0}}, 32)
