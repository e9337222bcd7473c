"""Training pairs: webdataset and CSV sources, unreadable samples skipped and counted, rank slicing."""

import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from silc_eval.core.errors import UserError
from silc_eval.train.augment import MultiViewTransform, ViewSpec
from silc_eval.train.pairs import PairSource, ReadStats, csv_source, iterate_batches, list_shards


def png_bytes(seed):
    pixels = np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shard(path, samples):
    with tarfile.open(path, "w") as tar:
        for key, image, caption in samples:
            if image is not None:
                add(tar, f"{key}.png", image)
            if caption is not None:
                add(tar, f"{key}.txt", caption.encode())


def tokenizer(captions):
    return torch.tensor([[len(c)] for c in captions])


TRANSFORM = MultiViewTransform(ViewSpec(n_global=1, global_size=8, global_scale=(0.5, 1.0), n_local=1, local_size=4),
                               (0.5,) * 3, (0.5,) * 3)


def test_unreadable_samples_are_skipped_and_counted(tmp_path):
    samples = [(f"{i:04d}", png_bytes(i), f"caption {i}") for i in range(10)]
    samples[2] = ("0002", b"not a png at all", "broken image")
    samples[5] = ("0005", png_bytes(5), None)
    samples[7] = ("0007", None, "no image")
    write_shard(tmp_path / "a.tar", samples)
    stats = ReadStats()
    batches = list(iterate_batches(PairSource("webdataset", shards=list_shards(tmp_path)), TRANSFORM, tokenizer,
                                   global_batch=3, seed=0, epoch=0, shuffle_buffer=1, stats=stats))
    assert stats.skipped == 3 and stats.read == 7
    assert any("undecodable" in e for e in stats.examples) and any("no caption" in e for e in stats.examples)
    assert len(batches) == 2  # 7 readable samples, batches of 3, the last incomplete one dropped
    assert [v.shape for v in batches[0].views] == [(3, 3, 8, 8), (3, 3, 4, 4)]
    assert "broken image" not in batches[0].captions + batches[1].captions


def test_rank_slices_reassemble_the_single_process_batch(tmp_path):
    write_shard(tmp_path / "a.tar", [(f"{i:04d}", png_bytes(i), f"caption {i}") for i in range(12)])
    source = PairSource("webdataset", shards=list_shards(tmp_path))
    kwargs = dict(global_batch=4, seed=3, epoch=1, shuffle_buffer=8)
    single = list(iterate_batches(source, TRANSFORM, tokenizer, **kwargs))
    rank0 = list(iterate_batches(source, TRANSFORM, tokenizer, rank=0, world_size=2, **kwargs))
    rank1 = list(iterate_batches(source, TRANSFORM, tokenizer, rank=1, world_size=2, **kwargs))
    assert len(single) == len(rank0) == len(rank1) == 3
    for whole, a, b in zip(single, rank0, rank1):
        assert whole.captions == a.captions + b.captions
        for v in range(2):
            assert torch.equal(whole.views[v], torch.cat([a.views[v], b.views[v]]))
    resumed = list(iterate_batches(source, TRANSFORM, tokenizer, start_batch=2, **kwargs))
    assert resumed[0].captions == single[2].captions and torch.equal(resumed[0].views[0], single[2].views[0])
    other_epoch = list(iterate_batches(source, TRANSFORM, tokenizer, global_batch=4, seed=3, epoch=2, shuffle_buffer=8))
    assert [b.captions for b in other_epoch] != [b.captions for b in single]


def test_csv_source_reads_relative_paths_and_skips_missing_files(tmp_path):
    (tmp_path / "img").mkdir()
    rows = ["filepath,caption"]
    for i in range(5):
        (tmp_path / "img" / f"{i}.png").write_bytes(png_bytes(i))
        rows.append(f"img/{i}.png,a picture {i}")
    rows.append("img/missing.png,gone")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    source = csv_source(tmp_path / "pairs.csv")
    assert source.size == 6
    stats = ReadStats()
    batches = list(iterate_batches(source, TRANSFORM, tokenizer, global_batch=5, seed=0, epoch=0, stats=stats))
    assert stats.skipped == 1 and len(batches) == 1
    assert sorted(batches[0].captions) == [f"a picture {i}" for i in range(5)]


def test_csv_errors_name_the_file_and_column(tmp_path):
    with pytest.raises(UserError, match="caption CSV not found"):
        csv_source(tmp_path / "nope.csv")
    (tmp_path / "bad.csv").write_text("path,text\nx,y\n")
    with pytest.raises(UserError, match="no column 'filepath'"):
        csv_source(tmp_path / "bad.csv")


def test_unreadable_files_are_counted_once_however_many_epochs_meet_them(tmp_path):
    samples = [(f"{i:04d}", png_bytes(i), f"caption {i}") for i in range(6)]
    samples[1] = ("0001", b"broken", "broken image")
    samples[4] = ("0004", png_bytes(4), None)
    write_shard(tmp_path / "a.tar", samples)
    write_shard(tmp_path / "b.tar", [("0001", b"also broken", "same key, another shard")])
    source = PairSource("webdataset", shards=list_shards(tmp_path))
    stats = ReadStats()
    for epoch in range(3):
        list(iterate_batches(source, TRANSFORM, tokenizer, global_batch=2, seed=0, epoch=epoch, shuffle_buffer=1,
                             stats=stats))
    assert stats.skipped == 3  # a.tar/0001, a.tar/0004, b.tar/0001: distinct files, not 9 failed reads
    assert stats.read == 3 * 4
    assert sorted(stats.keys) == ["a.tar/0001", "a.tar/0004", "b.tar/0001"] and len(stats.examples) == 3


def test_a_csv_none_of_whose_images_exists_says_so(tmp_path):
    (tmp_path / "pairs.csv").write_text("filepath,caption\n" + "".join(f"img/{i}.png,c {i}\n" for i in range(4)))
    with pytest.raises(UserError, match=r"none of the 4 images of .*pairs\.csv exists \(e\.g\. .*img/0\.png\)"):
        csv_source(tmp_path / "pairs.csv")
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "3.png").write_bytes(png_bytes(3))  # one that exists is enough: the rest is skipped later
    assert csv_source(tmp_path / "pairs.csv").size == 4


@pytest.mark.parametrize("text, expected", [
    ("", "is empty"),
    ("filepath,caption\n", "has no rows"),
    ('filepath,caption\n"img/0.png,a\n', "is not a readable CSV"),
])
def test_a_malformed_csv_is_one_line_naming_it(tmp_path, text, expected):
    (tmp_path / "pairs.csv").write_text(text)
    with pytest.raises(UserError, match=expected) as caught:
        csv_source(tmp_path / "pairs.csv")
    assert "pairs.csv" in str(caught.value) and "\n" not in str(caught.value)


def test_batch_size_must_divide_among_ranks(tmp_path):
    write_shard(tmp_path / "a.tar", [("0", png_bytes(0), "c")])
    with pytest.raises(UserError, match="not divisible"):
        next(iterate_batches(PairSource("webdataset", shards=list_shards(tmp_path)), TRANSFORM, tokenizer,
                             global_batch=3, seed=0, epoch=0, world_size=2))
