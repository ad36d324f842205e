"""LaserMtebEncoder inside mteb itself (skipped without mteb; mteb's mock tasks, no downloads)."""
import numpy as np
import pytest

mteb = pytest.importorskip("mteb")

from laser_jax.inference.encoder import LaserEncoder  # noqa: E402
from laser_jax.inference.mteb import LaserMtebEncoder  # noqa: E402
from laser_jax.retrieval.bright import INSTRUCTIONS  # noqa: E402

OPTS = dict(max_length=32, batch_size=8)


@pytest.fixture(scope="module")
def model(release_dir):
    """The wrapper on a look-alike of the authors' released checkpoints (no laser.json): it
    encodes in their format (tests/test_released_checkpoints.py checks the embeddings)."""
    return LaserMtebEncoder(release_dir, dtype="float32", **OPTS)


def test_is_an_mteb_encoder_with_model_meta(model):
    from mteb.models.model_meta import ScoringFunction
    from mteb.models.models_protocols import EncoderProtocol

    assert isinstance(model, EncoderProtocol)
    meta = model.mteb_model_meta
    assert meta.embed_dim == model.encoder.cfg.hidden_size and meta.similarity_fn_name is ScoringFunction.COSINE
    assert meta.name.startswith("laser_jax/") and meta.use_instructions


def test_real_bright_metadata_and_dataloader(model):
    from datasets import Dataset
    from mteb.types import PromptType
    from torch.utils.data import DataLoader

    texts = ["How do cells divide?", "What is 3 plus 4?", "Why is the sky blue?"]
    batches = DataLoader(Dataset.from_dict({"text": texts}), batch_size=2)
    for name, subset in (("BrightRetrieval", "biology"), ("BrightBiologyRetrieval", "default")):
        got = model.encode(batches, task_metadata=mteb.get_task(name).metadata, hf_split="standard",
                           hf_subset=subset, prompt_type=PromptType.query)
        want = model.encoder.encode_queries(texts, INSTRUCTIONS["biology"], **OPTS)
        np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("mock", ["retrieval.MockRetrievalTask",  # BRIGHT's and BrowseComp-Plus's shape
                                  "reranking.MockInstructionReranking"])  # FollowIR's (instructions, top-ranked)
def test_mteb_evaluate_runs_a_mock_task(model, mock):
    import importlib

    module, name = mock.split(".")
    task = getattr(importlib.import_module(f"mteb.mocks.mock_tasks.{module}"), name)()
    assert model.encoder.text_format.chat_template and model.num_thinking_steps == 3  # the authors' format
    results = mteb.evaluate(model, [task], cache=None, show_progress_bar=False, raise_error=True)
    (result,) = results.task_results
    assert 0.0 <= result.get_score() <= 1.0
