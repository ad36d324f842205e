"""Export a LaSER model as a standalone Hugging Face checkpoint (LoRA merged).

  python -m laser_jax.export_hf --model=WORKDIR_OR_CHECKPOINT_OR_HFDIR --out=HF_DIR \
      [--dtype=bfloat16] [--num_thinking_steps=K] [--overwrite]

The model is loaded through `laser_jax.inference.load.load_for_inference(path, "float32")`
(a training workdir's latest checkpoint, one checkpoint step, or an HF directory); LoRA
adapters, when present, are folded into the base weights; then HF_DIR gets:

  config.json, model*.safetensors   loadable by transformers.AutoModelForCausalLM
  tokenizer files                   the model's tokenizer
  laser.json                        num_thinking_steps K, query_template, chat_template
                                    (and soft_token "pause" for a model trained with it)
  laser_pause.safetensors           the learned pause vector of such a model (pause_file)
  laser_st.py, modules.json,        a sentence-transformers module running the latent loop
  config_sentence_transformers.json  (`SentenceTransformer(HF_DIR, trust_remote_code=True)`;
                                    without trust_remote_code it refuses to load)
  README.md                         a model card: how to encode with K latent steps, with
                                    laser_jax and with plain PyTorch (laser_jax.inference.torch_encoder)

Everything is written into a temporary sibling of HF_DIR (`.HF_DIR.partial-<pid>`) that is
renamed into place at the end (with --overwrite, its files replace those of HF_DIR); on any
failure it is removed, so no partial model directory is left behind (one left by a killed
export is removed by the next). `manifest.json` (laser_jax.storage) is written last: the
loaders check HF_DIR against it and name a damaged file. While it writes, the export holds
HF_DIR's lock (`.HF_DIR.lock`, laser_jax.workdir_lock): a second export there is refused. A full disk is one
"error: disk full: ..." line and exit status 4 (docs/faults.md).

In process: `export_loaded(loaded_model, out_dir, dtype=...)` or `export_hf(path, out_dir)`.
"""
from __future__ import annotations

import errno
import inspect
import json
import os
import re
import shutil
import sys
from typing import Optional, Sequence

from absl import flags, logging

from laser_jax import storage, workdir_lock
from laser_jax.cli import run_cli
from laser_jax.inference import load, pause_file, torch_encoder
from laser_jax.inference.encoder import check_num_thinking_steps_flag
from laser_jax.method.views import check_soft_token_variables, resolve_num_thinking_steps
from laser_jax.model import hf_io
from laser_jax.model.decoder import LATENT
from laser_jax.storage import is_disk_full

__all__ = ["export_loaded", "export_hf", "model_card", "main"]

DTYPES = ("bfloat16", "float16", "float32")
MODEL_DIR_PLACEHOLDER = "path/to/this/model"
EXIT_DISK_FULL = 4  # docs/faults.md
ST_MODULE_FILE = "laser_st.py"  # laser_jax/inference/laser_st.py, copied into every export
ST_MODULE_CLASS = "laser_st.LaserLatentEncoder"
DEFAULT_QUERY_INSTRUCTION = "Given a query, retrieve relevant passages that answer the query."
_WEIGHT_FILE = re.compile(r"model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?")


class DiskFullError(OSError):
    """The export ran out of disk space (nothing was left behind)."""


def _partial_dir(out_dir: str) -> str:
    path = os.path.abspath(out_dir)
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.partial-{os.getpid()}")


def _move_into_place(partial: str, out_dir: str) -> None:
    """The finished export in `partial` becomes `out_dir`: renamed when out_dir is absent
    or empty, else its files replace out_dir's (old weight shards removed first)."""
    if os.path.isdir(out_dir) and not os.listdir(out_dir):
        os.rmdir(out_dir)
    if not os.path.exists(out_dir):
        os.replace(partial, out_dir)
        return
    for stale in os.listdir(out_dir):
        if _WEIGHT_FILE.fullmatch(stale) or stale == pause_file.PAUSE_FILE:
            os.remove(os.path.join(out_dir, stale))
    for name in os.listdir(partial):
        target = os.path.join(out_dir, name)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        os.replace(os.path.join(partial, name), target)
    os.rmdir(partial)


def _check_out_dir(out_dir: str, overwrite: bool, source: Optional[str] = None) -> None:
    if source is not None and os.path.exists(source) and os.path.exists(out_dir) \
            and os.path.samefile(source, out_dir):
        raise ValueError(f"--out={out_dir} is the model directory itself; export elsewhere")
    if os.path.isfile(out_dir):
        raise ValueError(f"--out={out_dir} is a file, not a directory")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise ValueError(f"--out={out_dir} exists and is not empty; pass --overwrite to replace "
                         "the model files in it")


def export_loaded(loaded, out_dir: str, *, dtype: str = "bfloat16",
                  num_thinking_steps: Optional[int] = None, overwrite: bool = False,
                  source: Optional[str] = None) -> str:
    """Write a loaded model as an HF checkpoint + tokenizer + laser.json + README.md.

    Args:
      loaded: a `laser_jax.inference.load.LoadedModel` (cfg, variables {"params", optionally
        "lora"}, tokenizer, text_format, num_thinking_steps). LoRA is merged with the
        config's lora_alpha / lora_rank.
      out_dir: output directory (created).
      dtype: dtype of the written tensors: "bfloat16", "float16" or "float32".
      num_thinking_steps: K recorded in laser.json (default: the model's own).
      overwrite: allow a non-empty out_dir.
      source: where the model came from (for the model card and the same-directory check).

    Returns:
      out_dir.
    """
    if dtype not in DTYPES:
        raise ValueError(f"--dtype={dtype!r} must be one of {DTYPES}")
    steps = resolve_num_thinking_steps(num_thinking_steps, loaded.num_thinking_steps)
    _check_out_dir(out_dir, overwrite, source)
    lora = loaded.variables.get("lora")
    if lora and not loaded.cfg.lora_rank:
        raise ValueError("the variables carry LoRA adapters but the config has lora_rank=0, so "
                         "their scale (lora_alpha / lora_rank) is unknown")
    check_soft_token_variables(loaded.cfg, loaded.variables)
    partial = _partial_dir(out_dir)
    try:
        with workdir_lock.held(out_dir, "--out", inside=False):  # issue 24: one writer per output
            _check_out_dir(out_dir, overwrite, source)  # again, now that no other export writes there
            for left in storage.remove_leftovers(os.path.dirname(partial), f".{os.path.basename(out_dir)}.partial-",
                                                 any_owner=True):
                logging.warning("removed %s, left by an interrupted export", left)
            _write(loaded, partial, dtype, steps, lora, source)
            storage.write_manifest(partial)  # issue 27: what the export wrote, last
            _move_into_place(partial, out_dir)
    except BaseException as e:
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(e, Exception) and is_disk_full(e):
            raise DiskFullError(errno.ENOSPC, f"disk full: could not write the Hugging Face export to "
                                f"{out_dir} (no space left on device); nothing was left behind. Free space "
                                "(or choose --out on a larger disk) and rerun the same command.") from e
        raise
    logging.info("exported %s (%s, K=%d) to %s", source or "model", dtype, steps, out_dir)
    return out_dir


def write_sentence_transformers_files(out_dir: str,
                                      query_instruction: str = DEFAULT_QUERY_INSTRUCTION) -> None:
    """laser_st.py (the self-contained module), modules.json naming it, and
    config_sentence_transformers.json: prompts "query" (an instruction, filled into the
    query template by the module) and "document" (none), cosine similarity."""
    shutil.copyfile(os.path.join(os.path.dirname(os.path.abspath(__file__)), ST_MODULE_FILE),
                    os.path.join(out_dir, ST_MODULE_FILE))
    with open(os.path.join(out_dir, "modules.json"), "w", encoding="utf-8") as f:
        json.dump([{"idx": 0, "name": "0", "path": "", "type": ST_MODULE_CLASS}], f, indent=2)
    with open(os.path.join(out_dir, "config_sentence_transformers.json"), "w", encoding="utf-8") as f:
        json.dump({"model_type": "SentenceTransformer",
                   "prompts": {"query": query_instruction, "document": ""},
                   "default_prompt_name": None, "similarity_fn_name": "cosine"}, f, indent=2)


def _write(loaded, out_dir: str, dtype: str, steps: int, lora, source: Optional[str]) -> None:
    hf_io.save_pretrained(out_dir, loaded.variables["params"], loaded.cfg, tokenizer=loaded.tokenizer,
                          lora=lora, dtype=dtype)
    load.write_laser_meta(out_dir, loaded.text_format, steps, loaded.cfg.soft_token)
    if loaded.cfg.soft_token == "pause":
        pause_file.write_pause(out_dir, loaded.variables[LATENT], dtype)
    write_sentence_transformers_files(out_dir)
    with open(os.path.join(out_dir, "README.md"), "w", encoding="utf-8") as f:
        f.write(model_card(loaded.cfg, loaded.text_format, steps, dtype=dtype, source=source,
                           merged_lora=bool(lora)))


def export_hf(model_path: str, out_dir: str, *, dtype: str = "bfloat16",
              num_thinking_steps: Optional[int] = None, overwrite: bool = False) -> str:
    """Load `model_path` (workdir, checkpoint step or HF dir) in float32 and export it.

    Returns:
      out_dir.
    """
    if dtype not in DTYPES:
        raise ValueError(f"--dtype={dtype!r} must be one of {DTYPES}")
    if num_thinking_steps is not None:  # an invalid K fails before the (slow) load
        resolve_num_thinking_steps(num_thinking_steps, num_thinking_steps)
    _check_out_dir(out_dir, overwrite, model_path)  # fail before the (slow) load
    with workdir_lock.held(out_dir, "--out", inside=False):  # issue 24: before loading (export_loaded holds it on)
        loaded = load.load_for_inference(model_path, "float32")
        return export_loaded(loaded, out_dir, dtype=dtype, num_thinking_steps=num_thinking_steps,
                             overwrite=overwrite, source=model_path)


def _torch_snippet(steps: int, pause: bool = False) -> str:
    used = (torch_encoder.format_texts, torch_encoder.latent_embed) + ((torch_encoder.load_pause_embedding,)
                                                                      if pause else ())
    functions = "\n\n".join(inspect.getsource(fn) for fn in used)
    # a pause model (soft_token "pause") feeds its learned vector at every soft step
    kw = ", pause_embedding=pause" if pause else ""
    load_pause = "pause = load_pause_embedding(model_dir, meta)  # the learned vector of every soft step\n" \
        if pause else ""
    return f'''import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


{functions}

model_dir = "{MODEL_DIR_PLACEHOLDER}"
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
tokenizer = AutoTokenizer.from_pretrained(model_dir)
with open(f"{{model_dir}}/laser.json") as f:
    meta = json.load(f)  # num_thinking_steps ({steps}), query_template, chat_template
{load_pause}
instruction = "Given a question, retrieve passages that answer it."
queries = format_texts(tokenizer, ["What is 3 plus 4?"], meta, instruction=instruction)
documents = format_texts(tokenizer, ["The number 7 is the sum of two smaller numbers."], meta)
q = latent_embed(model, tokenizer, queries, num_thinking_steps=meta["num_thinking_steps"]{kw})
d = latent_embed(model, tokenizer, documents, num_thinking_steps=meta["num_thinking_steps"]{kw})
scores = q @ d.T  # cosine similarities
'''


def model_card(cfg, text_format, num_thinking_steps: int, *, dtype: str = "bfloat16",
               source: Optional[str] = None, merged_lora: bool = False) -> str:
    """README.md text of an exported model (markdown with two runnable python blocks)."""
    origin = f" from `{source}`" if source else ""
    lora = " LoRA adapters were merged into the weights." if merged_lora else ""
    pause = cfg.soft_token == "pause"
    fed = ("the learned pause vector (`laser_pause.safetensors`; the model was trained with soft_token "
           "\"pause\", the control whose soft steps carry no token distribution of their own)" if pause
           else "the soft token softmax(lm_head(h)) @ E")
    pause_row = "| soft steps fed | the learned pause vector (laser_pause.safetensors) |\n" if pause else ""
    return f'''# LaSER latent-view retriever ({cfg.family})

Exported by `laser_jax.export_hf`{origin}; weights in {dtype}.{lora}

A LaSER dense retriever (Jin et al., SIGIR 2026) "thinks" K soft tokens before pooling:
one pass over the text keeps the KV cache, h_1 is the last token's final hidden state; then
K-1 times {fed} is appended as one new position; the
embedding is the L2-normalised mean of h_1..h_K. Score with the dot product (cosine).

| setting | value |
|---|---|
| num_thinking_steps (K) | {num_thinking_steps} |
| query template | `{text_format.query_template!r}` |
| chat template wrapping | {text_format.chat_template} |
| hidden size | {cfg.hidden_size} |
{pause_row}
These settings are also in `laser.json`. Queries fill the template with a task
instruction; documents are used as they are (both chat-wrapped when the flag is on).
Texts are left padded; position ids are `cumsum(mask) - 1`.

## With laser_jax (JAX)

```python
from laser_jax import LaserEncoder

enc = LaserEncoder.from_pretrained("{MODEL_DIR_PLACEHOLDER}")  # reads laser.json (K = {num_thinking_steps})
q = enc.encode_queries(["What is 3 plus 4?"],
                       instruction="Given a question, retrieve passages that answer it.")
d = enc.encode_documents(["The number 7 is the sum of two smaller numbers."])
scores = q @ d.T
```

Corpora: `python -m laser_jax.export --model={MODEL_DIR_PLACEHOLDER} --input=docs.jsonl --output=docs.npy`.

## With sentence-transformers

`laser_st.py` (beside the weights) runs the same latent loop in PyTorch; loading it needs
`trust_remote_code=True` (without it sentence-transformers refuses to load the model rather
than pool it another way). A prompt is the query *instruction*: `encode_query(texts,
prompt=...)` fills the query template with it (the saved "query" prompt is a generic
instruction); `encode_document` and plain `encode` use the texts as they are.

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("{MODEL_DIR_PLACEHOLDER}", trust_remote_code=True)
q = model.encode_query(["What is 3 plus 4?"],
                       prompt="Given a question, retrieve passages that answer it.")
d = model.encode_document(["The number 7 is the sum of two smaller numbers."])
scores = model.similarity(q, d)
```

## With PyTorch and transformers only

The same latent loop (`laser_jax/torch_encoder.py`):

```python
{_torch_snippet(num_thinking_steps, pause)}```
'''


# ----------------------------------------------------------------------------------- CLI
FLAGS = flags.FlagValues()
flags.DEFINE_string("model", None, "Training workdir, checkpoint step directory or HF directory.",
                    flag_values=FLAGS)
flags.DEFINE_string("out", None, "Output Hugging Face directory.", flag_values=FLAGS)
flags.DEFINE_enum("dtype", "bfloat16", DTYPES, "dtype of the written weights.", flag_values=FLAGS)
flags.DEFINE_integer("num_thinking_steps", None, "K written to laser.json (default: the "
                     "model's own).", flag_values=FLAGS)
flags.DEFINE_boolean("overwrite", False, "Allow a non-empty --out directory.", flag_values=FLAGS)
flags.DEFINE_boolean("help", False, "Show this help.", flag_values=FLAGS, short_name="h")


def _run(f: flags.FlagValues):
    if not f.model or not f.out:
        raise ValueError("--model and --out are required")
    check_num_thinking_steps_flag(f.num_thinking_steps)
    try:
        return export_hf(f.model, f.out, dtype=f.dtype, num_thinking_steps=f.num_thinking_steps,
                         overwrite=f.overwrite)
    except DiskFullError as e:
        print(f"error: {e.strerror}", file=sys.stderr)
        return EXIT_DISK_FULL


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry; argv[0] is the program name. Returns the exit status."""
    return run_cli(FLAGS, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
