"""Dense variants, sliding-window inference and the zero-shot segmentation post-processing."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from silc_eval.core.errors import UserError
from silc_eval.machinery.dense_segmentation import class_probabilities, predict_classes
from silc_eval.machinery.windows import short_side_size, slide_boxes, slide_logits, window_boxes, window_chunks
from silc_eval.models.dense import VARIANTS, check_variant, dense_features, neighbourhood_bias, patch_tokens
from silc_eval.models.vit import forward_any_size


@pytest.fixture(scope="module")
def visual(tiny_model):
    return tiny_model.model.visual


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 48, 80, generator=torch.Generator().manual_seed(0))


def _before_last_block(visual, images):
    """Tokens entering the last block, computed with open_clip's own blocks."""
    from silc_eval.models.vit import embed_patches

    x, grid = embed_patches(visual, images, sclip_scale=True)  # as dense inference embeds them
    for block in visual.transformer.resblocks[:-1]:
        x = block(x)
    return x, grid


def _attention_copy(attn, source: str, target: str):
    """Copy of an nn.MultiheadAttention whose `target` projection (q/k) uses the `source` projection's weights."""
    clone = copy.deepcopy(attn)
    dim = attn.embed_dim
    rows = {"q": slice(0, dim), "k": slice(dim, 2 * dim)}
    with torch.no_grad():
        clone.in_proj_weight[rows[target]] = attn.in_proj_weight[rows[source]]
        clone.in_proj_bias[rows[target]] = attn.in_proj_bias[rows[source]]
    return clone


def _project(visual, x):
    return visual.ln_post(x[:, 1:]) @ visual.proj


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_gives_one_joint_space_vector_per_patch(visual, images, variant):
    features, grid = dense_features(visual, images, variant)
    patch = visual.conv1.kernel_size[0]
    assert grid == (48 // patch, 80 // patch)
    assert features.shape == (2, *grid, visual.output_dim)
    assert torch.isfinite(features).all()
    if variant != "vanilla":
        assert not torch.allclose(features, dense_features(visual, images, "vanilla")[0])


def test_vanilla_equals_the_plain_patch_token_path(visual, images):
    features, grid = dense_features(visual, images, "vanilla")
    _, tokens, _ = forward_any_size(visual, images, sclip_scale=True)
    assert torch.allclose(features.reshape(2, -1, features.shape[-1]), tokens @ visual.proj, atol=1e-6)
    tokens_unprojected, _ = patch_tokens(visual, images)
    assert torch.allclose(tokens_unprojected.reshape(2, -1, tokens.shape[-1]), tokens, atol=1e-6)


def test_variants_match_torch_multihead_attention_with_swapped_projections(visual, images):
    x, grid = _before_last_block(visual, images)
    block = visual.transformer.resblocks[-1]
    y = block.ln_1(x)
    qq = _attention_copy(block.attn, "q", "k")(y, y, y, need_weights=False)[0]
    kk = _attention_copy(block.attn, "k", "q")(y, y, y, need_weights=False)[0]
    shape = (2, *grid, -1)
    clear = _project(visual, qq).reshape(shape)
    assert torch.allclose(dense_features(visual, images, "clearclip")[0], clear, atol=1e-5)

    bias = neighbourhood_bias(grid)
    kk_biased = _attention_copy(block.attn, "k", "q")(y, y, y, need_weights=False, attn_mask=bias)[0]
    assert torch.allclose(dense_features(visual, images, "naclip")[0], _project(visual, kk_biased).reshape(shape),
                          atol=1e-5)

    summed = x + qq + kk - block.attn.out_proj.bias
    summed = summed + block.mlp(block.ln_2(summed))
    assert torch.allclose(dense_features(visual, images, "sclip")[0], _project(visual, summed).reshape(shape),
                          atol=1e-5)

    values = F.linear(y, block.attn.in_proj_weight[2 * block.attn.embed_dim:],
                      block.attn.in_proj_bias[2 * block.attn.embed_dim:])
    maskclip = _project(visual, block.attn.out_proj(values)).reshape(shape)
    assert torch.allclose(dense_features(visual, images, "maskclip")[0], maskclip, atol=1e-5)


def test_neighbourhood_bias_is_a_gaussian_of_grid_distance_with_a_free_class_token():
    bias = neighbourhood_bias((3, 4), std=5.0)
    assert bias.shape == (13, 13)
    assert torch.all(bias[0] == 0) and torch.all(bias[:, 0] == 0)
    assert bias[1, 1] == pytest.approx(1.0)
    # patch (0,0) -> patch (2,3): squared distance 4 + 9
    assert bias[1, 1 + 2 * 4 + 3] == pytest.approx(torch.exp(torch.tensor(-13 / 50)).item(), rel=1e-6)


def test_unknown_variant_is_a_user_error():
    with pytest.raises(UserError, match="expected one of vanilla"):
        check_variant("dinoclip")


def test_window_boxes_follow_mmseg_slide_rule():
    boxes = window_boxes(96, 128, 64, 32)
    assert len(boxes) == 2 * 3
    assert boxes[0] == (0, 64, 0, 64) and boxes[-1] == (32, 96, 64, 128)
    assert window_boxes(50, 70, 64, 32) == [(0, 50, 0, 64), (0, 50, 6, 70)]
    assert window_boxes(30, 40, 64, 32) == [(0, 30, 0, 40)]
    # an uneven remainder: the last window is shifted back inside the image
    assert window_boxes(64, 100, 64, 48)[-1] == (0, 64, 36, 100)


def test_short_side_resize_keeps_ratio_and_caps_the_long_side():
    assert short_side_size(375, 500, 336) == (336, 448)
    assert short_side_size(1024, 2048, 560) == (560, 1120)
    assert short_side_size(100, 5000, 336) == (41, 2048)


def test_overlapping_windows_are_averaged():
    image = torch.arange(6.0).repeat(3, 4, 1)  # channel value = column index, shape (3, 4, 6)

    def first_column(windows):  # one logit per window: its left column
        return windows[:, :1, :1, :1]

    (logits,) = slide_logits([image], first_column, window=4, stride=2, batch_size=8)
    assert torch.equal(logits[0], torch.tensor([[0, 0, 1, 1, 2, 2]] * 4, dtype=torch.float32))


def test_one_window_over_the_whole_image_equals_whole_image_inference(visual):
    image = torch.randn(3, 40, 56, generator=torch.Generator().manual_seed(1))

    def window_fn(windows):
        return dense_features(visual, windows, "sclip")[0].permute(0, 3, 1, 2)

    (slid,) = slide_logits([image], window_fn, window=64, stride=32, batch_size=4, output_sizes=[(80, 112)])
    direct = F.interpolate(window_fn(image[None]), size=(40, 56), mode="bilinear", align_corners=False)
    direct = F.interpolate(direct, size=(80, 112), mode="bilinear", align_corners=False)[0]
    assert torch.allclose(slid, direct, atol=1e-5)


def test_batched_windows_equal_one_window_at_a_time(visual):
    generator = torch.Generator().manual_seed(2)
    images = [torch.randn(3, 48, 72, generator=generator), torch.randn(3, 40, 40, generator=generator)]

    def window_fn(windows):
        return dense_features(visual, windows, "naclip")[0].permute(0, 3, 1, 2)

    batched = slide_logits(images, window_fn, window=32, stride=16, batch_size=64)
    single = slide_logits(images, window_fn, window=32, stride=16, batch_size=1)
    for a, b in zip(batched, single):
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-5)


def test_each_class_takes_the_max_over_its_synonyms():
    logits = torch.tensor([0.2, 0.5, 0.1]).view(3, 1, 1)  # queries: class 0, class 1 (two names)
    probs = class_probabilities(logits, torch.tensor([0, 1, 1]), num_classes=2, logit_scale=10.0)
    softmax = (logits.flatten() * 10).softmax(0)
    assert probs.shape == (2, 1, 1)
    assert probs[0, 0, 0] == pytest.approx(softmax[0].item())
    assert probs[1, 0, 0] == pytest.approx(softmax[1].item())


def test_low_probability_pixels_become_background():
    probs = torch.tensor([[0.1, 0.3], [0.5, 0.4], [0.4, 0.3]]).view(3, 1, 2)
    assert predict_classes(probs).tolist() == [[1, 1]]
    assert predict_classes(probs, prob_thd=0.45).tolist() == [[1, 0]]


def test_area_threshold_zeroes_small_foreground_classes():
    probs = torch.zeros(3, 1, 10)
    probs[1, 0, :9] = 0.6   # class 1 wins 9 pixels
    probs[2, 0, 9] = 0.7    # class 2 wins 1 pixel: 10% of the foreground
    probs[0] = 0.3
    assert predict_classes(probs, area_thd=0.05)[0, 9] == 2
    assert predict_classes(probs, area_thd=0.2)[0, 9] == 0
    assert predict_classes(probs, area_thd=0.2)[0, :9].eq(1).all()


def loop_over_windows(sizes, logits_fn, window, stride, batch_size, output_sizes):
    """Reference: every window added to its image's sum one at a time, in window_chunks order."""
    sums, counts = [None] * len(sizes), [torch.zeros(size) for size in sizes]
    for shape, chunk in window_chunks(sizes, window, stride, batch_size):
        logits = F.interpolate(logits_fn(chunk), size=shape, mode="bilinear", align_corners=False)
        for (i, (t, b, l, r)), window_logits in zip(chunk, logits):
            if sums[i] is None:
                sums[i] = window_logits.new_zeros((window_logits.shape[0], *sizes[i]))
            sums[i][:, t:b, l:r] += window_logits
            counts[i][t:b, l:r] += 1
    return [F.interpolate((total / count)[None], size=out, mode="bilinear", align_corners=False)[0]
            if tuple(out) != tuple(size) else total / count
            for total, count, size, out in zip(sums, counts, sizes, output_sizes)]


@pytest.mark.parametrize("batch_size", [1, 5, 64])
def test_summing_images_of_one_size_together_equals_a_loop_over_windows(batch_size):
    sizes = [(48, 72), (40, 40), (48, 72), (33, 70), (48, 72), (40, 40)]
    outputs = [(96, 144), (40, 40), (50, 70), (33, 70), (96, 144), (80, 80)]
    patches = {}

    def logits_fn(chunk):  # the same random logits for a window whatever chunk it comes in
        return torch.stack([patches.setdefault(item, torch.randn(7, 4, 4)) for item in chunk])

    fast = slide_boxes(sizes, logits_fn, window=32, stride=16, batch_size=batch_size, output_sizes=outputs)
    slow = loop_over_windows(sizes, logits_fn, 32, 16, batch_size, outputs)
    for a, b, out in zip(fast, slow, outputs):
        assert a.shape == (7, *out) and torch.equal(a, b)
