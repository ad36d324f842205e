"""Shared test set-up: 8 simulated CPU devices, no network, tiny local tokenizer."""
import os

# Must be set before jax is imported anywhere in the test process.
# LLVM optimisation level 0: programs compile about 2x faster and run about 2x slower,
# the right trade for tests of tiny models.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

# A persistent compilation cache shared by the test processes: runs that compile the same
# program (e.g. a run and its resumption) compile it once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.environ.get("TMPDIR", "/tmp"), f"laser_jax_test_xla_cache_{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

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
