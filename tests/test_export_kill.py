"""laser_jax.export survives SIGKILL: the CLI killed mid-run, then restarted, gives the same file."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from hf_models import build_hf_model
from laser_jax.inference import export
from laser_jax.inference.encoder import LaserEncoder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N, CHUNK = 160, 16
ARGS = ["--kind=document", "--max_length=32", "--batch_size=8", f"--chunk_size={CHUNK}", "--noprogress"]
# The CLI, with each batch slowed down so that the kill lands in the middle of the run.
SLOW_CLI = textwrap.dedent("""
    import sys, time
    from laser_jax.inference.encoder import LaserEncoder
    from laser_jax.inference import export
    fast = LaserEncoder.iter_batches
    def slow(self, *args, **kwargs):
        for item in fast(self, *args, **kwargs):
            time.sleep(0.15)
            yield item
    LaserEncoder.iter_batches = slow
    sys.exit(export.main(["export"] + sys.argv[1:]))
""")


@pytest.fixture(scope="module")
def model_dir(tokenizer, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("model"))
    build_hf_model("qwen3", path, vocab_size=len(tokenizer))
    tokenizer.save_pretrained(path)
    return path


def test_sigkilled_export_resumes_and_matches_an_uninterrupted_run(model_dir, tmp_path):
    rng = np.random.RandomState(0)
    words = "the number is sum of two smaller numbers cats weather town".split()
    corpus = tmp_path / "corpus.jsonl"
    with open(corpus, "w") as f:
        for i in range(N):
            f.write(json.dumps({"id": f"d{i}", "text": " ".join(rng.choice(words, 20))}) + "\n")
    out = str(tmp_path / "out" / "emb.npy")
    os.makedirs(os.path.dirname(out))
    progress = export.part_paths(out, 0, 1)["progress"]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CLI, f"--model={model_dir}", f"--input={corpus}",
                             f"--output={out}", *ARGS], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    done = 0
    try:
        deadline = time.time() + 120
        while done < 3 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
            try:
                done = json.load(open(progress))["chunks_done"]
            except (OSError, ValueError):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
    assert 3 <= done < N // CHUNK, err.decode()[-2000:]
    assert not os.path.exists(out)

    encoder = LaserEncoder.from_pretrained(model_dir, dtype="float32")
    kw = dict(kind="document", max_length=32, batch_size=8, chunk_size=CHUNK, progress=False)
    resumed = []
    result = export.export_embeddings(encoder, str(corpus), out, on_chunk=resumed.append, **kw)
    # Every chunk recorded before the kill is kept; at most the one in flight is redone.
    assert result.skipped >= done and resumed == list(range(result.skipped, N // CHUNK))
    ref = str(tmp_path / "ref.npy")
    export.export_embeddings(encoder, str(corpus), ref, **kw)
    np.testing.assert_allclose(np.load(out), np.load(ref), atol=1e-6)
    assert open(out[:-4] + ".ids.txt").read() == open(ref[:-4] + ".ids.txt").read()
    assert sorted(os.listdir(os.path.dirname(out))) == ["emb.export.json", "emb.ids.txt", "emb.npy"]
