"""`silc-eval run` sharded over torchrun ranks (gloo, CPU) gives the one-process results.

Unit level: the shard blocks of uneven sizes tile the dataset in batch-aligned pieces, and the
gathers put rows and chunks back in order across 3 real gloo processes (one of them with an
empty shard). End to end: a 2-process torchrun run of the tiny model on classification,
retrieval, zero-shot segmentation, a few-shot probe and linear segmentation, from an empty
cache (it generates SynthScenes and computes every feature), writes one set of files whose
metrics equal those of a one-process run; a second sharded run is served by the feature cache
and still agrees.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml

from silc_eval.core import distributed as ed
from silc_eval.core.paths import benchmarks_dir

BENCHMARKS = ["synthscenes-zeroshot", "synthscenes-retrieval", "synthscenes-zeroshot-seg-sclip",
              "synthscenes-fewshot-ridge", "synthscenes-linear-seg"]
# Metrics that are ratios of counts: one flipped decision would move them by >= 1 / N. The batches
# are the one-process run's batches, so even the trained head's predictions come out the same.
EXACT = {"synthscenes-zeroshot", "synthscenes-retrieval", "synthscenes-zeroshot-seg-sclip", "synthscenes-linear-seg"}
HEAD_STEPS = 10  # L-BFGS iterations of the linear segmentation probe, cut short to keep the test quick


# ----------------------------------------------------------------------------- shard arithmetic

@pytest.mark.parametrize("n", [0, 1, 7, 10, 31])
@pytest.mark.parametrize("batch_size", [1, 3, 4])
@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_shard_blocks_tile_the_dataset_in_whole_batches(n, batch_size, world):
    blocks = [ed.shard_indices(n, batch_size, r, world) for r in range(world)]
    assert [i for block in blocks for i in block] == list(range(n))
    for block in blocks:
        assert block.start % batch_size == 0  # a rank's batches are the one-process run's batches
        assert block.stop % batch_size == 0 or block.stop == n
    sizes = [len(range(0, len(block), batch_size)) for block in blocks]
    assert max(sizes) - min(sizes) <= 1


def test_shard_indices_uneven_example_and_bad_rank():
    # 10 items in batches of 3 = 4 batches over 3 ranks: 1, 1 and 2 batches.
    assert [ed.shard_indices(10, 3, r, 3) for r in range(3)] == [range(0, 3), range(3, 6), range(6, 10)]
    # 4 items in batches of 3 = 2 batches over 3 ranks: rank 0 gets none.
    assert [len(ed.shard_indices(4, 3, r, 3)) for r in range(3)] == [0, 3, 1]
    with pytest.raises(ValueError):
        ed.shard_indices(4, 3, 3, 3)


def test_helpers_are_no_ops_without_torchrun():
    assert not ed.active() and ed.is_main() and ed.world_size() == 1
    rows = torch.arange(6.0).reshape(3, 2)
    assert ed.gather_in_order(rows, 3) is rows
    assert ed.gather_chunks([rows], 1) == [rows]
    assert all(ed.owns(i) for i in range(5))
    dataset = list(range(7))
    assert ed.shard_dataset(dataset, 2) is dataset


# ----------------------------------------------------------------------------- collectives on 3 gloo ranks

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _collective_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    with ed.session("cpu") as device:
        assert device == "cpu" and ed.active() and ed.rank() == rank and ed.is_main() == (rank == 0)
        ed.GATHER_BYTES = 20  # several gather rounds, one row each
        results = {}
        for name, n, batch, dtype in [("float16", 10, 3, torch.float16), ("int64", 4, 3, torch.int64),
                                      ("float32", 11, 2, torch.float32)]:
            reference = (torch.arange(n * 6) * 7 % 23).to(dtype).reshape(n, 2, 3)
            block = ed.shard_indices(n, batch)
            local = reference[block.start:block.stop] if len(block) else torch.empty(0)
            gathered = ed.gather_in_order(local, n)
            results[name] = [len(block), gathered.dtype == dtype, torch.equal(gathered, reference)]
        chunks = [torch.full((i % 3 + 1, 4), float(i)) for i in range(7)]
        owned = [chunk for i, chunk in enumerate(chunks) if ed.owns(i)]
        back = ed.gather_chunks(owned, len(chunks))
        results["chunks"] = [len(owned), len(back) == 7 and all(torch.equal(a, b) for a, b in zip(back, chunks))]
        sent = ed.broadcast_tensor(torch.arange(12.0).reshape(4, 3) if rank == 0 else None)
        results["broadcast"] = sent.tolist()
        results["object"] = ed.broadcast_object({"rank": rank})
        Path(out, f"{rank}.json").write_text(json.dumps(results))
    assert not ed.active()


def test_gathers_restore_order_across_three_gloo_ranks(tmp_path):
    world = 3
    mp.spawn(_collective_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True)
    results = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(world)]
    # Uneven shards (10 rows in batches of 3: 3, 3, 4; 4 rows: 0, 3, 1) come back whole and in order.
    assert [r["float16"] for r in results] == [[3, True, True], [3, True, True], [4, True, True]]
    assert [r["int64"] for r in results] == [[0, True, True], [3, True, True], [1, True, True]]
    assert [r["float32"][0] for r in results] == [4, 4, 3] and all(r["float32"][1:] == [True, True] for r in results)
    assert [r["chunks"] for r in results] == [[3, True], [2, True], [2, True]]
    assert all(r["broadcast"] == torch.arange(12.0).reshape(4, 3).tolist() for r in results)
    assert all(r["object"] == {"rank": 0} for r in results)


# ----------------------------------------------------------------------------- torchrun end to end

@pytest.fixture(scope="module")
def quick_benchmarks(tmp_path_factory) -> Path:
    """A copy of benchmarks/ whose linear segmentation solves its probe in at most HEAD_STEPS L-BFGS iterations."""
    root = tmp_path_factory.mktemp("benchmarks") / "benchmarks"
    shutil.copytree(benchmarks_dir(), root, ignore=shutil.ignore_patterns("perf"))
    path = root / "definitions" / "synthscenes-linear-seg.yaml"
    definition = yaml.safe_load(path.read_text())
    definition["params"]["max_iterations"] = HEAD_STEPS
    path.write_text(yaml.safe_dump(definition, sort_keys=False))
    return root


def run_suite(model_dir: Path, output: Path, cache: Path, processes: int, benchmarks_root: Path,
              synthscenes_root: Path | None = None, benchmarks=BENCHMARKS) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SILC_EVAL_CACHE": str(cache),
           "SILC_EVAL_BENCHMARKS": str(benchmarks_root)}
    if processes == 1:
        command = [sys.executable, "-m", "silc_eval"]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                   "-m", "silc_eval"]
    command += ["run", "--model", f"local-dir:{model_dir}", "--output", str(output), "--no-progress",
                "--device", "cpu"]
    for name in benchmarks:
        command += ["--benchmark", name]
    if synthscenes_root is not None:
        command += ["--synthscenes-root", str(synthscenes_root)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def metrics_of(output: Path) -> dict[str, dict]:
    records = sorted((output / "records").glob("*/*.json"))
    return {json.loads(p.read_text())["benchmark"]["name"]: json.loads(p.read_text())["metrics"] for p in records}


def all_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_two_process_run_equals_one_process_run(tmp_path, tiny_model_dir, quick_benchmarks):
    sharded_cache, single_cache = tmp_path / "cache-sharded", tmp_path / "cache-single"
    sharded = run_suite(tiny_model_dir, tmp_path / "two", sharded_cache, 2, quick_benchmarks)
    assert "sharding the run over 2 processes (gloo" in sharded.stderr
    # SynthScenes was generated once, by rank 0, into the sharded run's empty cache.
    roots = [p for p in sharded_cache.iterdir() if p.name.startswith("synthscenes-")]
    assert len(roots) == 1 and sorted(p.name for p in (roots[0] / "synthscenes").iterdir() if p.is_dir()) == [
        "classification", "retrieval", "segmentation"]
    single = run_suite(tiny_model_dir, tmp_path / "one", single_cache, 1, quick_benchmarks, synthscenes_root=roots[0])
    assert "sharding" not in single.stderr

    one, two = metrics_of(tmp_path / "one"), metrics_of(tmp_path / "two")
    assert sorted(one) == sorted(two) == sorted(BENCHMARKS)
    for benchmark in BENCHMARKS:
        assert one[benchmark].keys() == two[benchmark].keys(), benchmark
        for metric, value in one[benchmark].items():
            if value is None or value != value:  # absent class / NaN
                assert two[benchmark][metric] is None or two[benchmark][metric] != two[benchmark][metric]
            elif benchmark in EXACT:
                assert two[benchmark][metric] == value, (benchmark, metric)
            else:
                assert two[benchmark][metric] == pytest.approx(value, abs=1e-6), (benchmark, metric)
    # The metrics are informative (not all 0 or 1), so equality is not trivial.
    assert 0 < one["synthscenes-zeroshot-seg-sclip"]["mIoU"] < 1 and 0 < one["synthscenes-linear-seg"]["mIoU"] < 1
    assert 0 < one["synthscenes-retrieval"]["image_retrieval_recall@5"] < 1
    head_record, = (tmp_path / "two" / "records").glob("*/synthscenes-linear-seg.json")
    assert json.loads(head_record.read_text())["protocol"]["max_iterations"] == HEAD_STEPS

    # One set of files: exactly what the one-process run writes, the leaderboard printed once.
    assert all_files(tmp_path / "two") == all_files(tmp_path / "one")
    assert not any(".tmp" in name for name in all_files(tmp_path / "two"))
    assert sharded.stdout.count("wrote ") == 1 and single.stdout.count("wrote ") == 1
    # Every cached entry is complete, none half-written: rank 0 alone wrote each image-feature array
    # (.npy); each rank wrote the evaluation-window features of its own images (.npz, one per rank).
    entries = all_files(sharded_cache / "features")
    assert entries and sorted(n for n in entries if n.endswith(".json")) == sorted(
        n.rsplit(".", 1)[0] + ".json" for n in entries if n.endswith((".npy", ".npz")))
    assert all(n.endswith((".npy", ".npz", ".json")) for n in entries)
    shards = [json.loads((sharded_cache / "features" / n).read_text())["key_parts"]["shard"]
              for n in entries if n.endswith(".json") and n.replace(".json", ".npz") in entries]
    ranks = [rank for rank, world in shards if world == 2]
    assert ranks and len(ranks) == len(shards) and ranks.count(0) == ranks.count(1)

    # A second sharded run finds every image feature in the cache (rank 0 reads, sends to rank 1):
    # nothing is stored again (a miss would rewrite the entry, a new file through a rename).
    stamps = {n: (sharded_cache / "features" / n).stat().st_ino for n in entries}
    again = run_suite(tiny_model_dir, tmp_path / "again", sharded_cache, 2, quick_benchmarks,
                      benchmarks=["synthscenes-fewshot-ridge"])
    assert "sharding the run over 2 processes" in again.stderr
    assert {n: (sharded_cache / "features" / n).stat().st_ino for n in all_files(sharded_cache / "features")} == stamps
    assert metrics_of(tmp_path / "again")["synthscenes-fewshot-ridge"] == two["synthscenes-fewshot-ridge"]
