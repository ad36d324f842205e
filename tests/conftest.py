"""Shared test set-up: 8 simulated CPU devices, no network, tiny local tokenizer."""
import contextlib
import os
import shutil
import subprocess
import tempfile


def _xla_knows(flag: str) -> bool:
    """Whether the installed jaxlib has XLA flag `flag` (XLA aborts on an unknown flag in
    XLA_FLAGS, so a flag that a later jaxlib drops must not be passed): its name is a string
    in jaxlib's largest shared library."""
    import glob
    import importlib.util
    import mmap

    spec = importlib.util.find_spec("jaxlib")
    libs = sorted(glob.glob(os.path.join(os.path.dirname(spec.origin), "*.so")), key=os.path.getsize) if spec else []
    if not libs:
        return False
    with open(libs[-1], "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as lib:
        return lib.find(flag.encode()) >= 0


def _test_xla_flags() -> str:
    """8 simulated CPU devices, and programs compiled for tiny models: LLVM optimisation level 0
    (compiles about 2x faster, runs about 2x slower) and XLA's classic CPU fusion emitters
    instead of the MLIR ones (the training step compiles 3-4x faster, runs as fast; measured
    with jax 0.10.2 on the tests' small run config)."""
    flags = "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
    if _xla_knows("xla_cpu_use_fusion_emitters"):
        flags += " --xla_cpu_use_fusion_emitters=false"
    return flags


# Must be set before jax is imported anywhere in the test process; subprocesses (trainer
# runs, xdist workers) inherit them.
if "XLA_FLAGS" not in os.environ:
    os.environ["XLA_FLAGS"] = _test_xla_flags()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

# A compilation cache for one test session, shared by all its processes (the xdist workers and
# the trainer subprocesses inherit the variable): runs that compile the same program (a run and
# its resumption, two tests on the same shapes) compile it once. Keys hash the program and the
# compile options, so a hit is the same executable. A directory set by the caller is used as is
# (and kept); the session's own is removed at its end.
_OWN_CACHE_DIR = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_CACHE_DIR = tempfile.mkdtemp(prefix="laser_jax_test_xla_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE_DIR
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def pytest_unconfigure(config):
    if _OWN_CACHE_DIR:
        shutil.rmtree(_OWN_CACHE_DIR, ignore_errors=True)


# A small corpus with the shapes LaSER cares about: instructions, queries, multi-paragraph
# reasoning ("\n\n" between steps, often after punctuation) and documents.
TOKENIZER_CORPUS = [
    "Instruct: Given a question, retrieve passages that answer it.\nQuery: What is {a} plus {b}?"
    .format(a=a, b=b) for a in range(12) for b in range(7)
] + [
    "First, take {a}.\n\nThen add {b} to it\n\nSo the result is {c}.\n\nDone".format(a=a, b=b, c=a + b)
    for a in range(15) for b in range(9)
] + [
    "The number {a} is the sum of two smaller numbers. Many documents describe numbers; "
    "some describe cats, others describe the weather in a town.".format(a=a) for a in range(40)
] + ["<think>\n\n</think>\n\n"] * 20


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """Directory of a Qwen-style tokenizer trained on TOKENIZER_CORPUS (HF format)."""
    from laser_jax.data.bpe import save_tokenizer

    return save_tokenizer(TOKENIZER_CORPUS, str(tmp_path_factory.mktemp("tokenizer")), vocab_size=400)


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="session")
def release_dir(tokenizer, tmp_path_factory):
    """A look-alike of the LaSER authors' released checkpoints (Alibaba-NLP/LaSER-Qwen3-*):
    a tiny random Qwen3ForCausalLM saved with safetensors, the Qwen-style tokenizer with its
    ChatML chat template and <think> tokens, and no laser_jax metadata (no laser.json).
    Read-only: tests that change it work on a copy."""
    from hf_models import build_hf_model

    path = str(tmp_path_factory.mktemp("laser_release"))
    build_hf_model("qwen3", path, vocab_size=len(tokenizer))
    tokenizer.save_pretrained(path)
    return path


def small_run_config(task, **overrides):
    """The training tests' run config: a 2-layer, 32-wide Qwen3-style model (float32, one
    device, unrolled layers, full fine-tuning) on a generated task (`task`: paths from
    laser_jax.data.synthetic), 3 steps of 8 queries in file order, no checkpoint before the
    end. `overrides` set "section.field" values; the result is not validated (tests of bad
    configs use it too). The shapes are shared by every training test, so compiled programs
    are shared through the persistent compilation cache."""
    from laser_jax.train.config import base_config

    c = base_config()
    c.model.preset = "tiny_qwen3"
    for k, v in dict(vocab_size=768, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=8).items():
        setattr(c.model, k, v)
    c.model.tokenizer = task["tokenizer"]
    c.model.compute_dtype = "float32"
    c.model.scan_layers = False
    c.lora.rank = 0
    c.lora.dropout = 0.0
    c.data.train_files = task["train"]
    c.data.chat_template = False
    c.data.query_max_len, c.data.doc_max_len, c.data.explicit_max_len = 64, 48, 128
    c.data.bucket_fractions = (1.0,)
    c.data.shuffle = False
    c.train.batch_size = 8
    c.train.num_steps = 3
    c.train.log_every = 1
    c.train.learning_rate = 1e-3
    c.train.warmup_ratio = 0.0
    c.checkpoint.every_steps = 100
    c.checkpoint.async_save = False
    c.mesh.num_devices = 1
    c.mesh.shape = (1, 1, 1)
    for key, value in overrides.items():
        section, field = key.split(".")
        setattr(getattr(c, section), field, value)
    return c


def nan_at_steps(run, steps):
    """Fault injection: `run` (laser_jax.train.trainer.Run) whose train steps numbered
    `steps` (1-based) run with NaN temperatures, so their loss and every gradient are NaN
    exactly as a real numerical fault would make them (the step itself then keeps the state)."""
    import dataclasses

    import jax

    from laser_jax.train.step import jit_train_step

    p = run.program
    nan = float("nan")
    poisoned = dataclasses.replace(p.step_cfg, loss=dataclasses.replace(p.step_cfg.loss, tau=nan, tau_kd=nan,
                                                                        tau_mid=nan))
    nan_step = jit_train_step(p.model, p.tx, poisoned, p.state_shardings, p.batch_sharding, p.teacher_sharding)

    def step(state, *args):
        number = int(jax.device_get(state.step)) + 1
        return (nan_step if number in steps else p.step)(state, *args)

    step.lower = p.step.lower  # the loop compiles the (normal) step ahead of its first call
    return dataclasses.replace(run, program=dataclasses.replace(p, step=step))


@contextlib.contextmanager
def mounted_tmpfs(mount_point, options: str):
    """A tmpfs mounted at `mount_point` (created) with mount `options` (e.g. "size=192k",
    "ro,size=64k") for the block; needs mount rights, the test is skipped elsewhere."""
    mount_point.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
