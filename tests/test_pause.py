"""soft_token "pause" (issue 23): the soft steps are fed one learned vector instead of the
expected embedding softmax(W_lm h) @ E; it trains (under LoRA too) and travels through
checkpoints, resume, export_hf, the PyTorch encoder, sentence-transformers and LaserEncoder."""
import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from laser_jax import LaserEncoder
from laser_jax.data.errors import ConfigError
from laser_jax.inference import export_hf, pause_file, torch_encoder
from laser_jax.storage import MANIFEST, DamagedFileError
from laser_jax.inference import load as model_io
from laser_jax.method.views import latent_view, soft_step_input, soft_token
from laser_jax.model.config import preset
from laser_jax.model.decoder import LATENT, PAUSE, Decoder, init_variables, positions_from_mask
from laser_jax.train.config import base_config, validate
from laser_jax.train.final_eval import encoder_from_trainer
from laser_jax.train.step import init_state, make_optimizer
from test_train import small_config, task, train  # noqa: F401  (task is a fixture)

IDS = jnp.array([[0, 0, 5, 9, 17, 3], [4, 8, 15, 16, 23, 42]], jnp.int32)
MASK = jnp.array([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], jnp.int32)
TEXTS = ["What is 3 plus 4?", "The number 14 is even.", "7 plus 2 is 9\n\n9 doubled is 18"]
ENC = dict(batch_size=4, max_length=16)  # one compiled shape per encoder


def tiny_cfg(tie: bool, soft: str = "pause"):
    return preset("tiny_llama" if not tie else "tiny_qwen3", vocab_size=64, hidden_size=32, intermediate_size=64,
                  num_hidden_layers=1, head_dim=8, tie_word_embeddings=tie, soft_token=soft)


def tiny(tie: bool, soft: str = "pause", seed: int = 0):
    """A 1-layer, 32-wide float32 model with weights x3 (sharp LM-head distributions)."""
    cfg = tiny_cfg(tie, soft)
    variables = jax.tree_util.tree_map(lambda x: 3.0 * x, init_variables(cfg, jax.random.key(seed)))
    return cfg, variables


view = jax.jit(latent_view, static_argnames=("model", "num_steps"))


@jax.jit
def _full_pass_states(variables, x, mask):
    return Decoder(tiny_cfg(tie=False)).apply(variables, x_BTD=x, positions_BT=positions_from_mask(mask),
                                             kv_mask_BS=mask).hidden


def _cos(a, b):
    return np.sum(a * b, -1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def _views_differ(model, a, b, k=3):
    """Max |difference| of the K-step embeddings of two variable sets; 0.0 exactly when equal."""
    return float(np.abs(np.asarray(view(model, a, IDS, MASK, k)[0]) - np.asarray(view(model, b, IDS, MASK, k)[0])).max())


# ------------------------------------------------------------------ the latent view
def test_pause_steps_ignore_the_previous_states_lm_head_distribution():
    """An untied model, so that the LM head can be perturbed without touching the prefill
    (which never reads it): the paper's soft steps change, the pause steps stay bit for bit.
    The LM head's distribution is then multiplied into E: perturbing the rows of E that the
    input tokens do not use (the prefill reads only those; with tied embeddings this is the
    only perturbation of the LM head that leaves the prefill alone) again changes the paper's
    steps and leaves the pause steps as they were."""
    cfg, variables = tiny(tie=False)
    assert "lm_head" in variables["params"] and LATENT in variables
    head = variables["params"]["lm_head"]["kernel"]
    table = variables["params"]["embed_tokens"]["embedding"]
    unused = np.ones(cfg.vocab_size, bool)
    unused[np.asarray(IDS)[np.asarray(MASK) == 1]] = False
    pause, paper = Decoder(cfg), Decoder(cfg.replace(soft_token="expected_embedding"))
    for (module, leaf), noise in ((("lm_head", "kernel"), 5.0 * jax.random.normal(jax.random.key(1), head.shape)),
                                  (("embed_tokens", "embedding"),
                                   5.0 * jax.random.normal(jax.random.key(2), table.shape) * unused[:, None])):
        noisy = jax.tree_util.tree_map(lambda x: x, variables)
        noisy["params"][module][leaf] = variables["params"][module][leaf] + noise
        e0, s0 = view(pause, variables, IDS, MASK, 3)
        e1, s1 = view(pause, noisy, IDS, MASK, 3)
        np.testing.assert_array_equal(np.asarray(s0), np.asarray(s1))
        np.testing.assert_array_equal(np.asarray(e0), np.asarray(e1))
        assert _views_differ(paper, {"params": variables["params"]}, {"params": noisy["params"]}) > 1e-2, module


def test_pause_rollout_equals_one_full_pass_over_the_text_and_the_pause_vectors():
    cfg, variables = tiny(tie=False)
    model = Decoder(cfg)
    emb, states = view(model, variables, IDS, MASK, 3)
    pause = variables[LATENT][PAUSE]
    x = jnp.concatenate([model.apply(variables, IDS, method=Decoder.embed),
                         jnp.broadcast_to(pause, (2, 2, cfg.hidden_size))], axis=1)
    mask = jnp.concatenate([MASK, jnp.ones((2, 2), MASK.dtype)], axis=1)
    hidden = _full_pass_states(variables, x, mask)
    np.testing.assert_allclose(np.asarray(states), np.asarray(hidden[:, -3:]), atol=1e-5)
    ref = jnp.mean(hidden[:, -3:], axis=1)
    np.testing.assert_allclose(np.asarray(emb), np.asarray(ref / jnp.linalg.norm(ref, axis=-1, keepdims=True)),
                               atol=1e-5)
    # K = 1 never reads the vector; K = 3 does
    moved = {**variables, LATENT: {PAUSE: pause + 1.0}}
    np.testing.assert_array_equal(np.asarray(view(model, variables, IDS, MASK, 1)[0]),
                                  np.asarray(view(model, moved, IDS, MASK, 1)[0]))
    assert np.abs(np.asarray(view(model, moved, IDS, MASK, 3)[0]) - np.asarray(emb)).max() > 1e-3


def test_the_default_is_the_papers_soft_token_and_adds_no_variables():
    cfg, variables = tiny(tie=True, soft="expected_embedding")
    assert cfg.soft_token == preset("tiny_qwen3").soft_token == "expected_embedding"
    assert set(variables) == {"params"}
    h = jax.random.normal(jax.random.key(2), (2, cfg.hidden_size))
    model = Decoder(cfg)
    np.testing.assert_array_equal(np.asarray(soft_step_input(model, variables, h)),
                                  np.asarray(soft_token(model, variables, h)))


def test_the_pause_vector_starts_as_the_mean_embedding_and_trains_under_lora():
    cfg, variables = tiny(tie=True)
    table = variables["params"]["embed_tokens"]["embedding"]
    np.testing.assert_allclose(np.asarray(variables[LATENT][PAUSE]), np.asarray(table.mean(0)), atol=1e-7)
    lora_cfg = cfg.replace(lora_rank=2)
    tx = make_optimizer(base_config().train, 10)
    base = jax.tree_util.tree_map(lambda x: x + 1.0, variables["params"])  # e.g. init_from's weights
    state = init_state(lora_cfg, tx, jax.random.key(3), base_params=base)
    np.testing.assert_allclose(np.asarray(state.trainable[LATENT][PAUSE]), np.asarray(table.mean(0) + 1.0),
                               atol=1e-6)
    assert set(state.trainable) == {"lora", LATENT} and set(state.frozen) == {"params"}
    assert set(state.opt_state[1][0].mu) == {"lora", LATENT}  # AdamW holds moments for it


def test_a_pause_model_without_its_vector_is_refused_with_a_clear_error(tokenizer):
    cfg, variables = tiny(tie=True)
    with pytest.raises(ValueError, match="latent/pause_embedding"):
        LaserEncoder(cfg, {"params": variables["params"]}, tokenizer)


# ------------------------------------------------------------------ one trained pause model
@pytest.fixture(scope="module")
def pause_run(task, tmp_path_factory):  # noqa: F811
    """2 LoRA steps with soft_token "pause" (lr high enough to move every trained leaf); one
    layer, and queries and documents of one width (one latent pass): a short trace."""
    workdir = tmp_path_factory.mktemp("pause_run")
    config = small_config(task, **{"lora.rank": 4, "lora.alpha": 8.0, "train.num_steps": 2,
                                   "train.learning_rate": 5e-2, "laser.soft_token": "pause",
                                   "model.num_hidden_layers": 1, "data.doc_max_len": 64})
    trainer, _ = train(config, workdir)
    out = str(tmp_path_factory.mktemp("pause_export") / "hf")
    export_hf.export_hf(str(workdir), out, dtype="float32")
    reference = encoder_from_trainer(trainer).encode(TEXTS, **ENC)
    return trainer, config, str(workdir), out, reference


def test_training_moves_the_pause_vector_and_the_checkpoint_carries_it(pause_run):
    trainer, _, workdir, _, reference = pause_run
    state = trainer.state
    assert set(state.trainable) == {"lora", LATENT} and set(state.frozen) == {"params"}
    start = jnp.mean(state.frozen["params"]["embed_tokens"]["embedding"], axis=0)  # LoRA: the table is frozen
    assert float(jnp.abs(state.trainable[LATENT][PAUSE] - start).max()) > 1e-3
    loaded = model_io.load_for_inference(workdir, "float32")
    assert loaded.cfg.soft_token == "pause"
    np.testing.assert_array_equal(np.asarray(loaded.variables[LATENT][PAUSE]),
                                  np.asarray(state.trainable[LATENT][PAUSE]))
    from_disk = LaserEncoder.from_pretrained(workdir, dtype="float32").encode(TEXTS, **ENC)
    assert _cos(from_disk, reference).min() >= 0.9999


def test_resume_restores_the_pause_vector_and_its_optimizer_moments(pause_run):
    from laser_jax.train.trainer import set_up

    trainer, config, workdir, _, reference = pause_run
    run = set_up(config, workdir)
    restored, step = run.checkpointer().restore(run.abstract_state)
    assert step == 2
    for a, b in ((restored.trainable[LATENT], trainer.state.trainable[LATENT]),
                 (restored.opt_state[1][0].mu[LATENT], trainer.state.opt_state[1][0].mu[LATENT])):
        np.testing.assert_array_equal(np.asarray(a[PAUSE]), np.asarray(b[PAUSE]))
    enc = LaserEncoder(run.model_cfg, jax.device_get(restored.variables()), run.tokenizer, run.text_format, 3)
    assert _cos(enc.encode(TEXTS, **ENC), reference).min() >= 0.9999


def test_export_hf_pytorch_sentence_transformers_and_laser_encoder_agree(pause_run):
    from sentence_transformers import SentenceTransformer

    trainer, _, _, out, reference = pause_run
    assert model_io.read_laser_meta(out)["soft_token"] == "pause"
    loaded = model_io.load_hf_dir(out, "float32")
    np.testing.assert_array_equal(np.asarray(loaded.variables[LATENT][PAUSE]),
                                  np.asarray(trainer.state.trainable[LATENT][PAUSE]))
    assert _cos(LaserEncoder.from_pretrained(out, dtype="float32").encode(TEXTS, **ENC), reference).min() >= 0.9999
    model, tok, meta = torch_encoder.load(out)
    pause = torch_encoder.load_pause_embedding(out, meta)
    torch_emb = torch_encoder.latent_embed(model, tok, TEXTS, 3, max_length=16, pause_embedding=pause)
    assert _cos(torch_emb, reference).min() >= 0.9999
    st = SentenceTransformer(out, trust_remote_code=True, device="cpu")
    assert _cos(st.encode(TEXTS, batch_size=4), reference).min() >= 0.9999
    # the vector matters: the paper's soft tokens on the same weights give other embeddings
    paper = torch_encoder.latent_embed(model, tok, TEXTS, 3, max_length=16)
    assert _cos(paper, reference).min() < 0.999
    # sentence-transformers' save keeps the vector
    st.save(os.path.join(os.path.dirname(out), "st_saved"))
    saved = os.path.join(os.path.dirname(out), "st_saved")
    assert os.path.isfile(os.path.join(saved, pause_file.PAUSE_FILE))


def test_the_model_card_snippet_feeds_the_pause_vector(pause_run):
    _, _, _, out, reference = pause_run
    card = open(os.path.join(out, "README.md")).read()
    assert "learned pause vector" in card and "| soft steps fed |" in card
    snippet = re.findall(r"```python\n(.*?)```", card, re.S)[2]
    assert "load_pause_embedding(model_dir, meta)" in snippet
    scope = {}
    exec(snippet.replace(export_hf.MODEL_DIR_PLACEHOLDER, out), scope)  # noqa: S102
    model, tok, meta = torch_encoder.load(out)
    want = torch_encoder.latent_embed(model, tok, scope["documents"], 3,
                                      pause_embedding=torch_encoder.load_pause_embedding(out, meta))
    np.testing.assert_allclose(scope["d"], want, atol=1e-6)


def test_damaged_or_inconsistent_pause_exports_are_named(pause_run, tmp_path):
    _, _, _, out, _ = pause_run
    broken = str(tmp_path / "broken")
    shutil.copytree(out, broken)
    os.remove(os.path.join(broken, pause_file.PAUSE_FILE))
    with pytest.raises(DamagedFileError, match="laser_pause.safetensors"):  # export_hf's manifest names it
        model_io.load_hf_dir(broken, "float32")
    os.remove(os.path.join(broken, MANIFEST))  # a hand-assembled directory: the reader itself names it
    with pytest.raises(FileNotFoundError, match="laser_pause.safetensors"):
        model_io.load_hf_dir(broken, "float32")
    meta = json.load(open(os.path.join(broken, "laser.json")))
    with pytest.raises(FileNotFoundError, match="laser_pause.safetensors"):
        torch_encoder.load_pause_embedding(broken, meta)
    json.dump({**meta, "soft_token": "pauses"}, open(os.path.join(broken, "laser.json"), "w"))
    with pytest.raises(ValueError, match="laser.json: soft_token 'pauses'"):
        model_io.load_hf_dir(broken, "float32")


def test_thoughts_say_pause_steps_carry_no_token_distribution(pause_run, capsys):
    from laser_jax.experiments import thoughts

    _, _, _, out, _ = pause_run
    assert thoughts.main(["thoughts", f"--model={out}", "--query=What is 5 plus 1?", "--top_k=3"]) == 0
    text = capsys.readouterr().out
    assert text.count(thoughts.PAUSE_STEP) == 2 and "| soft step | input |" in text  # K = 3: two soft steps
    assert "input-independent" in text and "nearest to that vector" in text
    near = thoughts.pause_neighbours(model_io.load_hf_dir(out, "float32"), 3)
    assert len(near) == 3 and near[0][2] >= near[1][2] >= near[2][2]


def test_config_refuses_a_bad_switch_resuming_across_it_and_a_teacher_of_the_other_kind(task, pause_run):  # noqa: F811
    import types

    from conftest import small_run_config
    from laser_jax.train.setup import model_config
    from laser_jax.train.trainer import check_resume, load_teacher

    _, _, workdir, _, _ = pause_run
    with pytest.raises(ConfigError, match="laser.soft_token: 'pauses' is not one of"):
        validate(small_run_config(task, **{"laser.soft_token": "pauses"}))
    paper = small_config(task, **{"lora.rank": 4, "lora.alpha": 8.0, "model.num_hidden_layers": 1})
    with pytest.raises(ConfigError, match="laser.soft_token: 'expected_embedding' here, 'pause' in the checkpoint"):
        check_resume(paper, workdir)
    student = types.SimpleNamespace(model_cfg=model_config(paper, None))
    with pytest.raises(ConfigError, match="laser.teacher_from: .* soft_token='pause'"):
        load_teacher(workdir, student)


def test_the_ablation_runs_both_pause_variants_and_the_lm_stage_has_no_pause_vector(task):  # noqa: F811
    from laser_jax.data import synthetic
    from laser_jax.experiments import ablate
    from laser_jax.train.stages import stage_config

    jobs = ablate.plan_jobs(["pause", "pause_latent_only"], [1], "configs/tiny.py", "/r",
                            synthetic.paths(os.path.dirname(task["meta"]), ["steps2"]), "eval", {}, 64, 8)
    pause, latent_only = (j.argv for j in jobs)
    assert "--config.laser.soft_token=pause" in pause and "--config.laser.lambda_explicit=0.0" not in pause
    assert "--config.laser.soft_token=pause" in latent_only and "--config.laser.lambda_explicit=0.0" in latent_only
    assert "pause" in ablate.DEFAULT_VARIANTS and "pause_latent_only" in ablate.LABELS
    assert stage_config(small_config(task, **{"laser.soft_token": "pause"}), task).laser.soft_token == \
        "expected_embedding"


def test_pause_steps_run_no_lm_head_in_the_flop_count():
    from laser_jax.train.flops import encode_flops

    cfg = tiny_cfg(tie=True)
    paper = encode_flops(cfg.replace(soft_token="expected_embedding"), 4, 32, 3).executed
    assert paper - encode_flops(cfg, 4, 32, 3).executed == 4 * 2 * 4.0 * cfg.vocab_size * cfg.hidden_size


def test_a_bfloat16_export_keeps_the_vector_and_overwriting_with_a_paper_model_drops_it(tokenizer, tmp_path):
    cfg = preset("tiny_qwen3", vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                 head_dim=8, soft_token="pause")
    variables = init_variables(cfg, jax.random.key(0))
    variables[LATENT][PAUSE] = variables[LATENT][PAUSE] + jnp.linspace(-1.0, 1.0, cfg.hidden_size)
    pause_model = model_io.LoadedModel(cfg, variables, tokenizer, model_io.TextFormat(), 3)
    out = export_hf.export_loaded(pause_model, str(tmp_path / "m"), dtype="bfloat16")
    back = model_io.load_hf_dir(out, "float32")
    assert back.cfg.soft_token == "pause"
    np.testing.assert_allclose(np.asarray(back.variables[LATENT][PAUSE]), np.asarray(variables[LATENT][PAUSE]),
                               rtol=1e-2, atol=1e-3)
    paper = model_io.LoadedModel(cfg.replace(soft_token="expected_embedding"), {"params": variables["params"]},
                                 tokenizer, model_io.TextFormat(), 3)
    export_hf.export_loaded(paper, out, dtype="float32", overwrite=True)
    assert not os.path.exists(os.path.join(out, pause_file.PAUSE_FILE))
    assert "soft_token" not in model_io.read_laser_meta(out) and LATENT not in model_io.load_hf_dir(out, "float32").variables
