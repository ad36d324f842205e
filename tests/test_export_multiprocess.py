"""laser_jax.export across two real JAX processes (launch/local.py): each encodes its range,
process 0 assembles after a barrier; the result equals a single-process export."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from hf_models import build_hf_model
from laser_jax.inference import export
from laser_jax.inference.encoder import LaserEncoder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCAL = os.path.join(REPO, "launch", "local.py")
ARGS = ["--kind=document", "--max_length=32", "--batch_size=8", "--chunk_size=16", "--noprogress"]


@pytest.fixture(scope="module")
def model_dir(tokenizer, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("model"))
    build_hf_model("qwen3", path, vocab_size=len(tokenizer))
    tokenizer.save_pretrained(path)
    return path


def test_two_jax_processes_export_equals_single_process(model_dir, tmp_path):
    rng = np.random.RandomState(0)
    words = "the number is sum of two smaller numbers cats weather town".split()
    corpus = tmp_path / "corpus.jsonl"
    with open(corpus, "w") as f:
        for i in range(70):
            f.write(json.dumps({"id": f"d{i}", "text": " ".join(rng.choice(words, 20))}) + "\n")
    out = str(tmp_path / "mp" / "emb.npy")
    os.makedirs(os.path.dirname(out))
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, LOCAL, "-n", "2", "--devices_per_process=1", "--timeout=150", "--", "-m",
           "laser_jax.export", f"--model={model_dir}", f"--input={corpus}", f"--output={out}", *ARGS]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"[p0] {out}" in proc.stdout and f"[p1] {out}" in proc.stdout
    assert sorted(os.listdir(os.path.dirname(out))) == ["emb.export.json", "emb.ids.txt", "emb.npy"]
    assert json.load(open(out[:-4] + ".export.json"))["num_shards"] == 2

    encoder = LaserEncoder.from_pretrained(model_dir, dtype="float32")
    ref = str(tmp_path / "ref.npy")
    export.export_embeddings(encoder, str(corpus), ref, kind="document", max_length=32, batch_size=8,
                             chunk_size=16, progress=False)
    np.testing.assert_allclose(np.load(out), np.load(ref), atol=1e-6)
    assert open(out[:-4] + ".ids.txt").read() == open(ref[:-4] + ".ids.txt").read()
